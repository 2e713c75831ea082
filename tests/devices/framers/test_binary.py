"""The binary framer on hostile streams: headers inside payloads, long incomplete candidates."""

from __future__ import annotations

import pytest

from gateway.devices.definitions import BinaryFraming
from gateway.devices.framers import binary
from gateway.devices.framers.binary import BinaryFramer, encode_frame
from gateway.devices.framers.checksums import crc16_modbus
from gateway.devices.model import Frame, Reject
from tests.devices.conftest import definition


def test_a_damaged_frame_holding_a_header_is_one_reject() -> None:
    """A band id with AA 55 in it, and the frame's CRC damaged on the line: its bytes are
    one bad_checksum, not counted a second time as a truncated frame at that header."""
    spec = definition("aa55-reference").binary
    assert spec is not None
    good = encode_frame(spec.framing, bytes.fromhex("01 A1B2C3D4E5F6 02 C6 01"))
    bad = bytearray(encode_frame(spec.framing, bytes.fromhex("01 A1B2C3AA5530 02 C6 01")))
    bad[-1] ^= 0xFF
    framer = BinaryFramer(spec.framing)
    assert framer.feed(bytes(bad) + good) + framer.flush() == [
        Reject("bad_checksum", bytes(bad)),
        Frame(good),
    ]


def test_headers_behind_a_long_incomplete_candidate_are_checked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A candidate that claims max_length and a stream of short, damaged candidates behind
    it, read a byte at a time: checked again on every read, they cost CPU growing with the
    square of how many wait behind it."""
    checks: list[bytes] = []

    def counted(data: bytes) -> int:
        checks.append(data)
        return crc16_modbus(data)

    monkeypatch.setitem(binary.CHECKSUMS, "crc16_modbus", (counted, 2))
    framing = BinaryFraming.model_validate(
        {"header": "AA55", "length": {"offset": 2, "width": 2, "order": "big", "counts_from": 0,
         "includes_checksum": True}, "checksum": {"kind": "crc16_modbus", "start": 2},
         "command_offset": 4, "payload_offset": 5, "max_length": 4096}
    )  # fmt: skip
    damaged = bytes.fromhex("AA 55 00 08 00 00 00 00")  # 8 bytes, its CRC wrong
    stream = bytes.fromhex("AA 55 10 00") + damaged * 100
    framer = BinaryFramer(framing)
    assert [item for b in stream for item in framer.feed(bytes([b]))] == []
    assert len(checks) == 100
    assert framer.pending == len(stream)
