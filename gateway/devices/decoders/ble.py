"""BLE advertisement payloads: iBeacon, BTHome v2 and Eddystone (UID, URL, TLM).

Bands and buttons announce themselves in advertisements that BLE-to-serial gateways forward as
hex. Only what the gateway needs is decoded: identity, packet id, battery and button presses.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace

from gateway.devices.model import Scalar

AD_SERVICE_DATA_16 = 0x16
AD_MANUFACTURER = 0xFF
APPLE_IBEACON = b"\x4c\x00\x02\x15"
BTHOME_UUID = b"\xd2\xfc"
EDDYSTONE_UUID = b"\xaa\xfe"
EDDYSTONE_UID = 0x00
EDDYSTONE_URL = 0x10
EDDYSTONE_TLM = 0x20
_URL_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
_URL_EXPANSIONS = (
    ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/",
    ".com", ".org", ".edu", ".net", ".info", ".biz", ".gov",
)  # fmt: skip

# BTHome v2 object ids -> data length, for the objects a band may send (spec table).
_BTHOME_SIZES = {
    0x00: 1, 0x01: 1, 0x02: 2, 0x03: 2, 0x04: 3, 0x05: 3, 0x06: 2, 0x07: 2, 0x08: 2,
    0x09: 1, 0x0A: 3, 0x0B: 3, 0x0C: 2, 0x0D: 2, 0x0E: 2, 0x0F: 1, 0x10: 1, 0x11: 1,
    0x12: 2, 0x13: 2, 0x14: 2, 0x15: 1, 0x16: 1, 0x17: 1, 0x18: 1, 0x19: 1, 0x1A: 1,
    0x1B: 1, 0x1C: 1, 0x1D: 1, 0x1E: 1, 0x1F: 1, 0x20: 1, 0x21: 1, 0x22: 1, 0x23: 1,
    0x24: 1, 0x25: 1, 0x26: 1, 0x27: 1, 0x28: 1, 0x29: 1, 0x2A: 1, 0x2B: 1, 0x2C: 1,
    0x2D: 1, 0x2E: 1, 0x2F: 1, 0x3A: 1, 0x3C: 2, 0x3D: 2, 0x3E: 4, 0x3F: 2, 0x40: 2,
    0x41: 2, 0x42: 3, 0x43: 2, 0x44: 2, 0x45: 2, 0x46: 1, 0x47: 2, 0x48: 2, 0x49: 2,
    0x4A: 2, 0x4B: 3, 0x4C: 4, 0x4D: 4, 0x4E: 4, 0x4F: 4, 0x50: 4, 0x51: 2, 0x52: 2,
}  # fmt: skip


class AdvertError(ValueError):
    """Malformed advertisement data with nothing of ours before the malformed structure."""


@dataclass(frozen=True)
class Advert:
    format: str
    packet_id: int | None = None
    battery: int | None = None
    buttons: tuple[int, ...] = ()
    ids: dict[str, Scalar] = field(default_factory=dict)
    malformed: str = ""  # why the data after the structures read was ignored, if it was


def ad_structures(raw: bytes) -> tuple[list[tuple[int, bytes]], str]:
    """The complete AD structures, and what ended the data early ("" if nothing did).

    A structure running past the end ends the data (Core Spec Vol 3 Part C §11: what follows
    a malformed structure is ignored), and so does one of length 0; the complete structures
    before it are kept, as a button press among them is still a press.
    """
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(raw):
        length = raw[i]
        if length == 0:
            break
        if i + 1 + length > len(raw):
            return out, f"AD structure at {i} runs past the end"
        out.append((raw[i + 1], raw[i + 2 : i + 1 + length]))
        i += 1 + length
    return out, ""


def ibeacon(data: bytes) -> Advert | None:
    if len(data) != 25 or not data.startswith(APPLE_IBEACON):
        return None
    return Advert(
        "ibeacon",
        ids={
            "uuid": data[4:20].hex().upper(),
            "major": int.from_bytes(data[20:22], "big"),
            "minor": int.from_bytes(data[22:24], "big"),
            "tx_power": int.from_bytes(data[24:25], "big", signed=True),
        },
    )


def bthome(data: bytes) -> Advert | None:
    if len(data) < 3 or data[:2] != BTHOME_UUID:
        return None
    info = data[2]
    if info >> 5 != 2:
        return None
    if info & 0x01:
        return Advert("bthome", ids={"encrypted": True})
    packet_id = battery = None
    buttons: list[int] = []
    i = 3
    while i < len(data):
        obj = data[i]
        size = _BTHOME_SIZES.get(obj)
        if size is None or i + 1 + size > len(data):
            break  # unknown object: its length is unknown, so nothing after it can be read
        value = int.from_bytes(data[i + 1 : i + 1 + size], "little")
        if obj == 0x00:
            packet_id = value
        elif obj == 0x01:
            battery = value
        elif obj == 0x3A:
            buttons.append(value)
        i += 1 + size
    return Advert("bthome", packet_id=packet_id, battery=battery, buttons=tuple(buttons))


def eddystone_tlm(data: bytes) -> Advert | None:
    if len(data) != 16 or data[:2] != EDDYSTONE_UUID or data[2] != EDDYSTONE_TLM or data[3] != 0:
        return None
    return Advert(
        "eddystone_tlm",
        packet_id=int.from_bytes(data[8:12], "big"),
        ids={
            "battery_mv": int.from_bytes(data[4:6], "big"),
            "temperature_c": int.from_bytes(data[6:8], "big", signed=True) / 256,
            "uptime_s": int.from_bytes(data[12:16], "big") / 10,
        },
    )


def eddystone_uid(data: bytes) -> Advert | None:
    """A band that sends only its UID frame is still heard: namespace and instance are its
    identity (the two trailing reserved bytes are optional)."""
    if len(data) not in (20, 22) or data[:2] != EDDYSTONE_UUID or data[2] != EDDYSTONE_UID:
        return None
    return Advert(
        "eddystone_uid",
        ids={
            "namespace": data[4:14].hex().upper(),
            "instance": data[14:20].hex().upper(),
            "tx_power": int.from_bytes(data[3:4], "big", signed=True),
        },
    )


def eddystone_url(data: bytes) -> Advert | None:
    if not 5 <= len(data) <= 22 or data[:2] != EDDYSTONE_UUID or data[2] != EDDYSTONE_URL:
        return None
    if data[4] >= len(_URL_SCHEMES):
        return None
    url = _URL_SCHEMES[data[4]]
    for byte in data[5:]:
        if byte < len(_URL_EXPANSIONS):
            url += _URL_EXPANSIONS[byte]
        elif 0x21 <= byte <= 0x7E:
            url += chr(byte)
        else:
            return None  # not an Eddystone URL after all
    return Advert(
        "eddystone_url",
        ids={"url": url, "tx_power": int.from_bytes(data[3:4], "big", signed=True)},
    )


_EDDYSTONE = {
    "eddystone_tlm": eddystone_tlm,
    "eddystone_uid": eddystone_uid,
    "eddystone_url": eddystone_url,
}


def decode_advert(raw: bytes, formats: Collection[str]) -> Advert | None:
    """The first recognised payload in the advertisement, or None if it is not ours.

    Raises AdvertError if the data ends in a malformed structure and nothing before it is
    ours: that may be our payload cut short. A payload found before one says so in
    ``malformed``.
    """
    structures, malformed = ad_structures(raw)
    for ad_type, data in structures:
        found: Advert | None = None
        if ad_type == AD_MANUFACTURER and "ibeacon" in formats:
            found = ibeacon(data)
        elif ad_type == AD_SERVICE_DATA_16:
            if "bthome" in formats:
                found = bthome(data)
            for name, decode in _EDDYSTONE.items():
                if found is None and name in formats:
                    found = decode(data)
        if found is not None:
            return replace(found, malformed=malformed) if malformed else found
    if malformed:
        raise AdvertError(malformed)
    return None
