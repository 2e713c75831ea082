"""Offline decoding of a capture, for ``gateway decode``: what the gateway would make of it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from gateway.devices.decoders import dc09 as dc09_msgs
from gateway.devices.decoders.contact_id import decode_dc09
from gateway.devices.decoders.espa import decode_block
from gateway.devices.decoders.sia import decode_dcs
from gateway.devices.definitions import DefinitionFile
from gateway.devices.events import to_event
from gateway.devices.framers.espa import Control, EspaFramer
from gateway.devices.framers.lines import LineFramer
from gateway.devices.link import SerialSettings, SoftwareParity
from gateway.devices.model import Decoded, Frame, Reject
from gateway.devices.pipeline import framer_and_decoder

# pyserial's spy:// hex dump: "000003.102 RX   0000  48 45 4C 4C 4F  ...   HELLO", one row of
# up to 16 bytes (a space after the eighth), padded to 49 characters before the ASCII column;
# control lines ("000002.469 RTS  inactive") between them.
_SPY_ROW = re.compile(r"^\d+\.\d{3} (?P<label>\S+)\s+(?:[0-9A-F]{4}  (?P<row>.*)|.*)$")
_SPY_HEX = 49
_SPY_BYTE = re.compile(r"(?<![0-9A-F])[0-9A-F]{2}(?![0-9A-F])")


def spy_received(data: bytes) -> bytes | None:
    """The bytes the device sent (RX rows, in order), when ``data`` is a ``spy://`` dump;
    None when it is not one (a raw capture). TX rows are the gateway's own replies."""
    text = data.decode("ascii", errors="replace").splitlines()
    rows = [m for line in text if line.strip() and (m := _SPY_ROW.match(line)) is not None]
    if not rows or len(rows) < sum(1 for line in text if line.strip()):
        return None
    out = bytearray()
    for m in rows:
        if m["label"] == "RX" and m["row"] is not None:  # a row cut short keeps its whole bytes
            out += bytes.fromhex(" ".join(_SPY_BYTE.findall(m["row"][:_SPY_HEX])))
    return bytes(out)


def _rejected(item: Reject) -> dict[str, Any]:
    out: dict[str, Any] = {"rejected": item.reason, "hex": item.data.hex().upper()}
    if item.detail:
        out["detail"] = item.detail
    return out


def _decoded(
    decoded: Decoded, definition: DefinitionFile, station: str | None = None
) -> Iterator[dict[str, Any]]:
    """``station``: the one a BLE gateway last announced, as the live port names it."""
    for reject in decoded.rejects:
        yield _rejected(reject)
    for ev in decoded.events:
        event = to_event(
            ev, port="capture", station=station or "capture", definition=definition.name
        )
        yield {"type": event.type.name, "lane": event.type.lane.name, "data": dict(event.data)}


def _dc09(definition: DefinitionFile, content: bytes) -> Decoded:
    try:
        msg = dc09_msgs.parse(content.decode("latin-1"), {})
    except dc09_msgs.Dc09Error as exc:
        return Decoded(rejects=(Reject(exc.reason, content, str(exc)),))
    ids = {"dc09_id": msg.id}
    if msg.id == "ADM-CID":
        return decode_dc09(msg.data, definition.codes, content, msg.seq, ids)
    if msg.id == "SIA-DCS":
        return decode_dcs(msg.data, definition.sia_codes, content, msg.seq, ids)
    return Decoded()


def as_read(settings: SerialSettings, data: bytes) -> bytes:
    """``data`` as the port's link hands it on. A 7-bit port (ESPA's 7E1) is read as 8 bits
    and its parity checked in software, so a capture of it (``spy://`` logs the bytes as read)
    carries the parity bits: they are checked and stripped here the same way. Bytes that all
    lack bit 7 are 7-bit data already (hex typed from a spec or a manual) and stay as given."""
    if settings.software_parity and any(b & 0x80 for b in data):
        return SoftwareParity(settings).decode(data)
    return data


def decode_capture(definition: DefinitionFile, data: bytes) -> Iterator[dict[str, Any]]:
    """Every event and every refusal in ``data``, in order, as JSON-ready dicts."""
    settings = SerialSettings(definition.serial.baudrate, definition.serial.format)
    data = as_read(settings, data)
    if definition.espa is not None:
        espa = EspaFramer(parity_checked=settings.software_parity)
        for item in [*espa.feed(data), *espa.flush()]:
            if isinstance(item, Control):
                yield {"control": item.kind, "address": item.address}
            elif isinstance(item, Reject):
                yield _rejected(item)
            else:
                yield from _decoded(decode_block(item.data, definition.espa), definition)
        return
    if definition.dc09 is not None:
        lines = LineFramer(2048)
        for line in [*lines.feed(data), *lines.flush()]:
            if isinstance(line, Reject):
                yield _rejected(line)
            else:
                yield from _decoded(_dc09(definition, line.data), definition)
        return
    framer, decode = framer_and_decoder(definition)
    station = None
    for part in [*framer.feed(data), *framer.flush()]:
        if isinstance(part, Reject):
            yield _rejected(part)
        elif isinstance(part, Frame):
            decoded = decode(part.data)
            station = decoded.station or station
            yield from _decoded(decoded, definition, station)
