"""SIA DC-03 payloads inside DC-09 ``SIA-DCS`` messages: ``#acct|Nri1/MA015^text^``."""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.devices.definitions import EventMap, as_code_map
from gateway.devices.model import Decoded, DeviceEvent, Kind, Reject, Scalar, rejected

_EVENT = re.compile(r"^([A-Z]{2})([0-9A-Za-z]{0,8})(?:\^([^\^]*)\^)?$")
_PREFIXES = {"ri": "area", "id": "user", "ti": "time", "pi": "peripheral"}


def decode_dcs(
    data: str, codes: Mapping[str, EventMap], raw: bytes, seq: int, ids: Mapping[str, Scalar]
) -> Decoded:
    account, sep, body = data.lstrip("#").partition("|")
    if not sep or not body.startswith("N"):
        return rejected("bad_format", raw, "SIA-DCS payload")
    context: dict[str, Scalar] = {"account": account, **ids}
    events: list[DeviceEvent] = []
    rejects: list[Reject] = []
    for part in body[1:].split("/"):
        if part[:2] in _PREFIXES:
            context[_PREFIXES[part[:2]]] = part[2:].split("^")[0]
            continue
        m = _EVENT.match(part)
        if m is None:
            # the part may hold a display text (a resident's name): its size only
            rejects.append(
                Reject("bad_format", raw, f"SIA event not understood ({len(part)} chars)")
            )
            continue
        code, zone, text = m.groups()
        mapped = codes.get(code)
        if mapped is None:
            rejects.append(Reject("unknown_code", raw, f"SIA code {code}"))
            continue
        cmap = as_code_map(mapped)
        if cmap.kind is Kind.IGNORE:
            continue
        events.append(
            DeviceEvent(
                cmap.kind,
                f"{account}-{zone or '0'}",
                code=code,
                seq=seq,
                text=text or None,
                name=cmap.name or None,
                restores=cmap.restores,
                ids={**context, "zone": zone},
                raw=raw,
            )
        )
    return Decoded(events=tuple(events), rejects=tuple(rejects))
