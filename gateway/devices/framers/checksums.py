"""Checksums used by base-station protocols. Table-driven CRCs: decoding runs per frame."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

ChecksumKind = Literal["crc16_modbus", "crc16_arc", "sum8", "xor8", "none"]


def _table(poly: int) -> tuple[int, ...]:
    out = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        out.append(crc)
    return tuple(out)


_A001 = _table(0xA001)


def _crc16_reflected(data: bytes, init: int) -> int:
    crc = init
    table = _A001
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS: reflected 0xA001, init 0xFFFF. Check value of b"123456789" is 0x4B37."""
    return _crc16_reflected(data, 0xFFFF)


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC (SIA DC-09): reflected 0xA001, init 0. Check value 0xBB3D."""
    return _crc16_reflected(data, 0)


def sum8(data: bytes) -> int:
    return sum(data) & 0xFF


def xor8(data: bytes) -> int:
    out = 0
    for b in data:
        out ^= b
    return out


def _none(_data: bytes) -> int:
    return 0


CHECKSUMS: dict[ChecksumKind, tuple[Callable[[bytes], int], int]] = {
    "crc16_modbus": (crc16_modbus, 2),
    "crc16_arc": (crc16_arc, 2),
    "sum8": (sum8, 1),
    "xor8": (xor8, 1),
    "none": (_none, 0),
}
