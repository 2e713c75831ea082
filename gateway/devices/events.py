"""The event types this stage records, and how a device event becomes one.

Raw device facts only: turning them into wander/absence alarms with acknowledgement and
escalation is the alerts stage's job, which needs exactly what is kept here (device, station,
the protocol's own ids and sequence, RSSI, battery, and the raw frame for audit).
"""

from __future__ import annotations

from typing import Any

from gateway.devices.model import DeviceEvent, Kind
from gateway.events import Event, EventType, Lane

ALARM_SOS = EventType("alarm.sos", Lane.P0, description="SOS/call button, nurse call, panic.")
ALARM_FALL = EventType("alarm.fall", Lane.P0, description="A device reported a fall.")
ALARM_RESTORE = EventType(
    "alarm.restore", Lane.P1, description="A device restored or cancelled an earlier alarm."
)
BAND_REMOVED = EventType("band.removed", Lane.P1, description="A wristband was taken off.")
BAND_WORN = EventType("band.worn", Lane.P1, description="A wristband is worn again.")
BATTERY_LOW = EventType("battery.low", Lane.P1, description="A device reported low battery.")
DEVICE_ALARM = EventType(
    "device.alarm",
    Lane.P1,
    description=(
        "Other configured device codes: tamper, supervision; and Contact ID or SIA codes "
        "the definition does not map (name: unmapped code NNN)."
    ),
)
WRISTBAND_SEEN = EventType(
    "wristband.seen", Lane.P2, description="A band was heard by a station (RSSI, battery)."
)
DEVICE_STATUS = EventType(
    "device.status",
    Lane.P2,
    description="Link up/down/silent with the gap; link tests; an alarm panel's "
    "'still present' reports (Contact ID qualifier 6) of an alarm already raised.",
)

DEVICE_EVENT_TYPES: tuple[EventType, ...] = (
    ALARM_SOS,
    ALARM_FALL,
    ALARM_RESTORE,
    BAND_REMOVED,
    BAND_WORN,
    BATTERY_LOW,
    DEVICE_ALARM,
    WRISTBAND_SEEN,
    DEVICE_STATUS,
)

TYPE_OF_KIND = {
    Kind.SOS: ALARM_SOS,
    Kind.FALL: ALARM_FALL,
    Kind.RESTORE: ALARM_RESTORE,
    Kind.BAND_REMOVED: BAND_REMOVED,
    Kind.BAND_WORN: BAND_WORN,
    Kind.BATTERY_LOW: BATTERY_LOW,
    Kind.DEVICE_ALARM: DEVICE_ALARM,
    Kind.SEEN: WRISTBAND_SEEN,
    Kind.STATUS: DEVICE_STATUS,
}

# The data fields each type carries beyond the common ones (the JSON Schemas say the same).
_EXTRA: dict[str, tuple[str, ...]] = {
    "alarm.sos": ("name", "rssi", "battery", "text"),
    "alarm.fall": ("name", "rssi", "battery", "text"),
    "alarm.restore": ("name", "restores", "text"),
    "band.removed": ("name", "rssi"),
    "band.worn": ("name", "rssi"),
    "battery.low": ("name", "rssi", "battery"),
    "device.alarm": ("name", "text"),
    "wristband.seen": ("name", "rssi", "battery"),
    "device.status": ("name", "text"),
}


# The contract's ranges. A device value outside them ("no RSSI" as -128, a battery byte of
# 200, a sequence byte read as signed) is published as null with the device's own value in
# ids, never as a number the platform's validator refuses, which could cost an alarm or a
# whole batch of sightings.
RANGES = {"rssi": (-127, 20), "battery": (0, 100), "seq": (0, None)}
# A frame whose device id is empty (a text id of NULs) still carries an alarm: it goes out
# under this id, flagged in ids, rather than with the empty id the contract refuses.
NO_DEVICE = "unknown"


def to_event(ev: DeviceEvent, *, port: str, station: str, definition: str) -> Event:
    etype = TYPE_OF_KIND[ev.kind]
    ids = dict(ev.ids)
    measured = {"rssi": ev.rssi, "battery": ev.battery, "seq": ev.seq}
    for key, value in measured.items():
        low, high = RANGES[key]
        if value is not None and (value < low or (high is not None and value > high)):
            ids[f"{key}_raw"] = value
            measured[key] = None
    device = ev.device
    if not device:
        device = NO_DEVICE
        ids["device_missing"] = True
    data: dict[str, Any] = {
        "device": device,
        "station": station,
        "port": port,
        "definition": definition,
        "code": ev.code,
        "seq": measured.pop("seq"),
        "ids": ids,
        "raw": ev.raw.hex().upper(),
    }
    values: dict[str, Any] = {
        **measured,
        "text": ev.text,
        "name": ev.name,
        "restores": ev.restores.value if ev.restores else None,
    }
    for key in _EXTRA[etype.name]:
        data[key] = values[key]
    return Event(etype, data)


def link_status(
    state: str, *, port: str, station: str, definition: str, gap_s: float | None, reason: str
) -> Event:
    """A link (serial port, receiver connection) went up, down or silent."""
    ids: dict[str, Any] = {"state": state}
    if gap_s is not None:
        ids["gap_s"] = round(gap_s, 3)
    ev = DeviceEvent(Kind.STATUS, station, code=state, name=state, text=reason or None, ids=ids)
    return to_event(ev, port=port, station=station, definition=definition)
