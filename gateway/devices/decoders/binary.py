"""Binary frames -> device events, through the field map of the device definition."""

from __future__ import annotations

from gateway.devices.decoders.fields import FieldError, read_field
from gateway.devices.definitions import BinarySpec, MessageSpec, as_code_map
from gateway.devices.framers.checksums import CHECKSUMS
from gateway.devices.model import Decoded, DeviceEvent, Kind, Scalar, rejected


class BinaryDecoder:
    def __init__(self, spec: BinarySpec) -> None:
        self.spec = spec
        self._messages = {m.command: m for m in spec.messages}
        self._csize = CHECKSUMS[spec.framing.checksum.kind][1]

    def command(self, frame: bytes) -> int:
        f = self.spec.framing
        return int.from_bytes(
            frame[f.command_offset : f.command_offset + f.command_width], self.spec.byte_order
        )

    def decode(self, frame: bytes) -> Decoded:
        cmd = self.command(frame)
        msg = self._messages.get(cmd)
        if msg is None:
            return rejected("unknown_command", frame, f"command 0x{cmd:02X}")
        payload = frame[self.spec.framing.payload_offset : len(frame) - self._csize]
        if len(payload) < msg.min_payload:
            return rejected("short_payload", frame, f"{len(payload)} < {msg.min_payload} bytes")
        try:
            values = {f.name: read_field(payload, f, self.spec.byte_order) for f in msg.fields}
        except FieldError as exc:
            return rejected("bad_field", frame, str(exc))
        return _event(msg, values, frame)


def _int(values: dict[str, Scalar], name: str | None) -> int | None:
    """A number field's value: read as uint or int (perhaps scaled), or as BCD digits."""
    if name is None:
        return None
    value = values[name]
    if isinstance(value, str):
        return int(value) if value.isdigit() else None
    return int(value)


def _event(msg: MessageSpec, values: dict[str, Scalar], frame: bytes) -> Decoded:
    code: str | None = None
    if msg.event is not None:
        selector = values[msg.event]
        number = _int(values, msg.event)
        mapped = msg.events.get(number) if number is not None else None
        code = f"{selector:02X}" if isinstance(selector, int) else str(selector)
        if mapped is None:
            return rejected("unknown_event", frame, f"{msg.name} event {code}")
        cmap = as_code_map(mapped)
    else:
        assert msg.kind is not None
        cmap = as_code_map(msg.kind)
    if cmap.kind is Kind.IGNORE:
        return Decoded()
    roles = {msg.device, msg.seq, msg.rssi, msg.battery, msg.event}
    ids = {k: v for k, v in values.items() if k not in roles}
    ids["message"] = msg.name
    return Decoded(
        events=(
            DeviceEvent(
                kind=cmap.kind,
                device=str(values[msg.device]),
                code=code,
                seq=_int(values, msg.seq),
                rssi=_int(values, msg.rssi),
                battery=_int(values, msg.battery),
                name=cmap.name or None,
                restores=cmap.restores,
                ids=ids,
                raw=frame,
            ),
        )
    )
