"""Reading typed fields out of a payload, as a device definition's field map says."""

from __future__ import annotations

from gateway.devices.definitions import ByteOrder, FieldSpec
from gateway.devices.model import Scalar


class FieldError(ValueError):
    """A field that cannot be read (e.g. text that is not valid in its encoding)."""


def decode_text(data: bytes, encoding: str) -> str:
    """``data`` as text, or a UnicodeError. Some codecs (UTF-7, unicode_escape) decode to half
    a surrogate pair, which is no text: an event holding it could never be stored (its JSON is
    UTF-8), so a nurse call would be NAKed at every retry and a radio event lost."""
    text = data.decode(encoding)
    text.encode("utf-8")
    return text


def read_field(payload: bytes, spec: FieldSpec, default_order: ByteOrder) -> Scalar:
    chunk = payload[spec.offset : spec.offset + spec.width]
    order = spec.order or default_order
    if spec.type == "hex":
        return chunk.hex().upper()
    if spec.type == "bcd":
        digits = chunk.hex()
        if not digits.isdigit():
            raise FieldError(f"{spec.name}: not BCD")
        return digits
    if spec.type == "text":
        try:
            return decode_text(chunk.rstrip(b"\x00"), spec.encoding)
        except UnicodeError:  # idna and punycode raise the base class
            raise FieldError(f"{spec.name}: not valid {spec.encoding}") from None
    value = int.from_bytes(chunk, order, signed=spec.type == "int")
    if spec.scale is not None:
        return value * spec.scale
    return value


def write_field(
    payload: bytearray, spec: FieldSpec, value: Scalar, default_order: ByteOrder
) -> None:
    """The inverse of read_field, for the simulator: one definition drives both directions."""
    order = spec.order or default_order
    if spec.type in ("hex", "bcd"):
        chunk = bytes.fromhex(str(value))
    elif spec.type == "text":
        chunk = str(value).encode(spec.encoding)
    else:
        number = float(value) / spec.scale if spec.scale is not None else value
        chunk = int(number).to_bytes(spec.width, order, signed=spec.type == "int")
    chunk = chunk[: spec.width].ljust(spec.width, b"\x00")
    payload[spec.offset : spec.offset + spec.width] = chunk
