"""The values that flow between framers, decoders and the service."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    """What a device said, independent of the protocol that said it."""

    SEEN = "seen"
    SOS = "sos"
    FALL = "fall"
    RESTORE = "restore"
    BAND_REMOVED = "band_removed"
    BAND_WORN = "band_worn"
    BATTERY_LOW = "battery_low"
    DEVICE_ALARM = "device_alarm"
    STATUS = "status"
    IGNORE = "ignore"


# what an alarm.restore may end (its schema's `restores`): a sighting, a band put back on or
# another restore is not a condition that ends
RESTORABLE = frozenset(
    {Kind.SOS, Kind.FALL, Kind.BAND_REMOVED, Kind.BATTERY_LOW, Kind.DEVICE_ALARM, Kind.STATUS}
)


@dataclass(frozen=True)
class Frame:
    data: bytes


@dataclass(frozen=True)
class Reject:
    """Bytes a framer or decoder refused, and why (the reason is a short counter name)."""

    reason: str
    data: bytes = b""
    detail: str = ""


Scalar = str | int | float | bool


@dataclass(frozen=True)
class DeviceEvent:
    """One thing one device said. ``ids`` keeps the protocol's own identifiers for audit."""

    kind: Kind
    device: str
    code: str | None = None
    seq: int | None = None
    rssi: int | None = None
    battery: int | None = None
    text: str | None = None
    name: str | None = None
    restores: Kind | None = None
    ids: dict[str, Scalar] = field(default_factory=dict)
    raw: bytes = b""


@dataclass(frozen=True)
class Decoded:
    """A decoder's answer for one frame: its events and what in it was refused.

    Both can be set: a nurse call whose display text is not valid GBK is still a call.
    ``station`` is set when the frame names the station that heard the devices. ``ignored``:
    the frame was understood, and the definition ignores what it says; its flaws (counted) do
    not make it a frame to refuse, any more than they do a call that is recorded.
    """

    events: tuple[DeviceEvent, ...] = ()
    rejects: tuple[Reject, ...] = ()
    station: str | None = None
    ignored: bool = False


def rejected(reason: str, raw: bytes, detail: str = "") -> Decoded:
    return Decoded(rejects=(Reject(reason, raw, detail),))


def decode_error(raw: bytes, exc: BaseException) -> Reject:
    """A frame our own code failed on (a bug, not bad input): counted like any refusal.

    The detail names the exception type and the innermost gateway line it came from. Neither
    the frame nor the exception's message is kept: either could quote a nurse call's display
    text, which may name a resident, and this ends up in the log.
    """
    where = ""
    for frame, line in traceback.walk_tb(exc.__traceback__):
        module = frame.f_globals.get("__name__", "")
        if module.startswith("gateway."):
            where = f" at {module}:{line}"
    return Reject("decode_error", detail=f"{type(exc).__name__}{where}, {len(raw)}-byte frame")
