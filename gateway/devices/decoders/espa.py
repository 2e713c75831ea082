"""ESPA 4.4.4 blocks -> calls. Call types, priorities and statuses are mapped per site."""

from __future__ import annotations

from gateway.devices.decoders.fields import decode_text
from gateway.devices.definitions import EspaSpec, as_code_map
from gateway.devices.framers.espa import ETX, RS, SOH, STX, US
from gateway.devices.model import Decoded, DeviceEvent, Kind, Reject, Scalar, rejected

DATA_IDS = {
    "1": "call_address",
    "2": "message",
    "3": "beep",
    "4": "call_type",
    "5": "transmissions",
    "6": "priority",
    "7": "call_status",
    "8": "system_status",
}
CALL_HEADERS = {"1", "4"}


def parse_block(raw: bytes) -> tuple[str, list[tuple[str, bytes]]] | None:
    """``SOH h STX id US data [RS id US data]... ETX BCC`` -> (header, records)."""
    if len(raw) < 6 or raw[0] != SOH or raw[2] != STX or raw[-2] != ETX:
        return None
    header = chr(raw[1])
    records = []
    for record in raw[3:-2].split(bytes([RS])):
        ident, sep, data = record.partition(bytes([US]))
        if not sep or len(ident) != 1:
            return None
        records.append((chr(ident[0]), data))
    return header, records


def decode_block(raw: bytes, spec: EspaSpec) -> Decoded:
    parsed = parse_block(raw)
    if parsed is None:
        return rejected("bad_format", raw)
    header, records = parsed
    if header not in CALL_HEADERS:
        return Decoded()  # status information/requests: acknowledged, not events
    rejects: list[Reject] = []
    ids: dict[str, Scalar] = {"header": header}
    text = None
    for ident, data in records:
        name = DATA_IDS.get(ident)
        if name is None:
            rejects.append(Reject("unknown_field", raw, f"data id {ident!r}"))
            continue
        try:
            value = decode_text(data, spec.encoding)
        except UnicodeError:  # idna and punycode raise the base class
            value = _replaced(data, spec.encoding)
            rejects.append(Reject("bad_text", raw, f"data id {ident} not {spec.encoding}"))
        if name == "message":
            text = value
        else:
            ids[name] = value
    address = ids.pop("call_address", None)
    if not address:
        return rejected("bad_format", raw, "call without a call address")
    status = str(ids.get("call_status", ""))
    call_type = str(ids.get("call_type", ""))
    priority = str(ids.get("priority", ""))
    mapped = (
        spec.call_status.get(status)
        or spec.priorities.get(priority)
        or spec.call_types.get(call_type)
    )
    if mapped is None and spec.default_call_kind is not None:
        mapped = spec.default_call_kind
    if mapped is None:
        return rejected("unknown_code", raw, f"call type {call_type!r}")
    cmap = as_code_map(mapped)
    if cmap.kind is Kind.IGNORE:
        return Decoded(rejects=tuple(rejects), ignored=True)
    event = DeviceEvent(
        cmap.kind,
        str(address),
        code=call_type or None,
        text=text,
        name=cmap.name or None,
        restores=cmap.restores,
        ids=ids,
        raw=raw,
    )
    return Decoded(events=(event,), rejects=tuple(rejects))


def _replaced(data: bytes, encoding: str) -> str:
    """The call is kept with what can be read; a codec that cannot replace (idna) gives ASCII,
    and half a surrogate pair becomes '?'."""
    try:
        text = data.decode(encoding, errors="replace")
    except UnicodeError:
        text = data.decode("ascii", errors="replace")
    return text.encode("utf-8", errors="replace").decode("utf-8")
