"""Event types for backbone tests: one per lane.

The backbone is indifferent to what an event means; these types exercise it without borrowing a
domain's schema. The contract checker validates their envelopes, not their data.
"""

from __future__ import annotations

from typing import Any

from gateway.events import EventType, Lane

ALARM = EventType("test.alarm", Lane.P0)
RECORD = EventType("test.record", Lane.P1)
TELEMETRY = EventType("test.telemetry", Lane.P2)
BY_LANE = {Lane.P0: ALARM, Lane.P1: RECORD, Lane.P2: TELEMETRY}


def sighting(i: int) -> dict[str, Any]:
    """About the size of a real wristband.seen event's data."""
    return {
        "device": f"A1B2C3{i % 300:06X}",
        "station": "station-1",
        "port": "ward-a",
        "definition": "aa55-reference",
        "code": "00",
        "seq": i % 256,
        "ids": {"cmd": 1},
        "raw": "AA550A01A1B2C3D4E5F600C601A525",
        "name": None,
        "rssi": -58,
        "battery": 87,
    }
