"""Contact ID (SIA DC-05): ``ACCT MT Q EEE GG CCC S`` lines, and the same event inside DC-09.

Event codes mean different things per site (there is no standard fall code), so the kind of
each code comes from the definition's ``[codes]`` table. A code it does not list is recorded
all the same (see ``definitions.unmapped``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.devices.definitions import EventMap, as_code_map, unmapped
from gateway.devices.model import RESTORABLE, Decoded, DeviceEvent, Kind, Reject, Scalar, rejected

QUALIFIERS = {"1": "new", "3": "restore", "6": "status"}
_LINE = re.compile(r"^[0-9A-F]{16}$")
_DC09_CID = re.compile(r"^([0-9A-F]{3,16})\|([136])([0-9]{3}) ([0-9A-F]{2}) ([0-9A-F]{3})$")


def digit_value(c: str) -> int:
    """Contact ID digit weight: 0 counts as 10, A-F as 10-15."""
    value = int(c, 16)
    return 10 if value == 0 else value


def checksum_ok(line: str) -> bool:
    return sum(digit_value(c) for c in line) % 15 == 0


def with_checksum(first15: str) -> str:
    """Append the checksum digit (0 is sent as F): used by simulators and tests."""
    rest = (15 - sum(digit_value(c) for c in first15) % 15) % 15
    return first15 + ("F" if rest == 0 else f"{rest:X}")


def cid_event(
    account: str,
    qualifier: str,
    code: str,
    group: str,
    zone: str,
    *,
    codes: Mapping[str, EventMap],
    raw: bytes,
    seq: int | None = None,
    extra_ids: Mapping[str, Scalar] | None = None,
) -> Decoded:
    mapped = codes.get(code)
    unknown: tuple[Reject, ...] = ()
    if mapped is None:
        unknown = (Reject("unknown_code", raw, f"event code {code}"),)
        mapped = unmapped(code)
    cmap = as_code_map(mapped)
    if cmap.kind is Kind.IGNORE:
        return Decoded()
    ids: dict[str, Scalar] = {
        "account": account,
        "qualifier": QUALIFIERS[qualifier],
        "group": group,
        "zone": zone,
        **(extra_ids or {}),
    }
    kind, restores, name = cmap.kind, cmap.restores, cmap.name or None
    if qualifier == "3" and kind is not Kind.RESTORE:
        # the restore of a code that raises nothing to end (a sighting): it ends nothing
        kind, restores = Kind.RESTORE, cmap.kind if cmap.kind in RESTORABLE else None
    elif qualifier == "6":  # "still present": a report on an alarm already raised, not a new one
        kind, name = Kind.STATUS, f"still present: {cmap.name or cmap.kind.value}"
    event = DeviceEvent(
        kind,
        f"{account}-{zone}",
        code=code,
        seq=seq,
        name=name,
        restores=restores,
        ids=ids,
        raw=raw,
    )
    return Decoded(events=(event,), rejects=unknown)


def decode_line(line: bytes, codes: Mapping[str, EventMap], encoding: str = "ascii") -> Decoded:
    """A raw Contact ID line from a serial receiver (spaces allowed between groups)."""
    try:
        text = line.decode(encoding).replace(" ", "").strip().upper()
    except UnicodeError:  # idna and punycode raise the base class
        return rejected("bad_text", line)
    if not _LINE.match(text):
        return rejected("bad_format", line)
    if not checksum_ok(text):
        return rejected("bad_checksum", line)
    if text[4:6] not in ("18", "98"):
        return rejected("bad_format", line, f"message type {text[4:6]}")
    if text[6] not in QUALIFIERS:
        return rejected("bad_qualifier", line)
    return cid_event(text[:4], text[6], text[7:10], text[10:12], text[12:15], codes=codes, raw=line)


def decode_dc09(
    data: str, codes: Mapping[str, EventMap], raw: bytes, seq: int, ids: Mapping[str, Scalar]
) -> Decoded:
    """The ADM-CID payload of a DC-09 message: ``#acct|QEEE GG CCC``."""
    m = _DC09_CID.match(data.lstrip("#"))
    if m is None:
        return rejected("bad_format", raw, "ADM-CID payload")
    account, q, code, group, zone = m.groups()
    return cid_event(account, q, code, group, zone, codes=codes, raw=raw, seq=seq, extra_ids=ids)
