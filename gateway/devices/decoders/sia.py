"""SIA DC-03 payloads inside DC-09 ``SIA-DCS`` messages: ``#acct|Nri1/MA015^text^|Atext``.

A data block (``N``) holds fields separated by ``/``. A field is any number of modifiers (two
lowercase letters and a value: ``ri`` area, ``id`` user, ``ti`` time, ``pi`` peripheral, ``da``
date; optionally a ``^name^``), then a two-letter event code with its address and an optional
``^text^``. Modifiers may stand alone (``Nri1/MA015``) or run straight into the code
(``Nri1MA015``, as dc09-spt sends them), and hold for the rest of the block. An ``A`` block
after it is text for its events (``NMA6|Ahelp``). A ``/`` or ``|`` inside a ``^text^`` (``Room
3/4``) is text, not a separator. A field that cannot be read is refused, and so is a block
without any event code: a message is never taken as stored when nothing was. A field that
cannot be read beside events that can is recorded as a ``device_alarm`` ("unreadable SIA
field", the message's raw bytes with it): the message is ACKed for its events, and what it
also said, perhaps an alarm, must not go unseen. An event code the definition's
``[sia_codes]`` does not list (``FA``, a fire) is recorded all the same (see
``definitions.unmapped``): DUHed, the panel would drop it, and beside a mapped code in one
message it would be ACKed without being recorded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.devices.definitions import EventMap, as_code_map, unmapped
from gateway.devices.model import Decoded, DeviceEvent, Kind, Reject, Scalar, rejected

_MODIFIER = r"[a-z]{2}[0-9:-]+(?:\^[^\^]*\^)?"
_FIELD = re.compile(
    rf"^(?P<mods>(?:{_MODIFIER})*)(?:(?P<code>[A-Z]{{2}})(?P<zone>[0-9A-Za-z]{{0,8}})"
    r"(?:\^(?P<text>[^\^]*)\^)?)?$"
)
_MODIFIERS = re.compile(r"([a-z]{2})([0-9:-]+)(?:\^[^\^]*\^)?")
_NAMES = {"ri": "area", "id": "user", "ti": "time", "pi": "peripheral", "da": "date"}
UNREADABLE = "unreadable SIA field"


def decode_dcs(
    data: str, codes: Mapping[str, EventMap], raw: bytes, seq: int, ids: Mapping[str, Scalar]
) -> Decoded:
    account, sep, rest = data.lstrip("#").partition("|")
    block, *others = _split(rest, "|")
    if not sep or not block.startswith("N"):
        return rejected("bad_format", raw, "SIA-DCS payload")
    rejects: list[Reject] = []
    texts = [b[1:] for b in others if b.startswith("A")]
    if len(texts) != len(others):
        rejects.append(Reject("bad_format", raw, "SIA block other than N or A"))
    context: dict[str, Scalar] = {"account": account, **ids}
    fields: list[tuple[str, str, str | None, dict[str, Scalar]]] = []
    unreadable = False
    for part in _split(block[1:], "/"):
        m = _FIELD.match(part)
        if m is None:
            # the part may hold a display text (a resident's name): its size only
            rejects.append(
                Reject("bad_format", raw, f"SIA event not understood ({len(part)} chars)")
            )
            unreadable = True
            continue
        # a modifier's ^label^ (a user's name, perhaps a resident's) is not kept: ids only
        for tag, value in _MODIFIERS.findall(m["mods"]):
            context[_NAMES.get(tag, tag)] = value
        if m["code"] is not None:
            fields.append((m["code"], m["zone"], m["text"], dict(context)))
    if not fields and not rejects:
        rejects.append(Reject("bad_format", raw, "SIA block without an event code"))
    events: list[DeviceEvent] = []
    for code, zone, text, where in fields:
        mapped = codes.get(code)
        if mapped is None:
            rejects.append(Reject("unknown_code", raw, f"SIA code {code}"))
            mapped = unmapped(code)
        cmap = as_code_map(mapped)
        if cmap.kind is Kind.IGNORE:
            continue
        events.append(
            DeviceEvent(
                cmap.kind,
                f"{account}-{zone or '0'}",
                code=code,
                seq=seq,
                text=text or " ".join(texts) or None,
                name=cmap.name or None,
                restores=cmap.restores,
                ids={**where, "zone": zone},
                raw=raw,
            )
        )
    if events and unreadable:
        where = {"account": account, **ids}
        events.append(
            DeviceEvent(
                Kind.DEVICE_ALARM, f"{account}-0", seq=seq, name=UNREADABLE, ids=where, raw=raw
            )
        )
    return Decoded(events=tuple(events), rejects=tuple(rejects))


def _split(text: str, sep: str) -> list[str]:
    """``text`` cut at each ``sep`` outside a ``^...^`` text."""
    parts = [""]
    inside = False
    for ch in text:
        if ch == "^":
            inside = not inside
        if ch == sep and not inside:
            parts.append("")
        else:
            parts[-1] += ch
    return parts
