"""Event types for backbone tests: one per lane.

The backbone is indifferent to what an event means; these types exercise it without borrowing a
domain's schema. The contract checker validates their envelopes, not their data.
"""

from __future__ import annotations

from gateway.events import EventType, Lane

ALARM = EventType("test.alarm", Lane.P0)
RECORD = EventType("test.record", Lane.P1)
TELEMETRY = EventType("test.telemetry", Lane.P2)
BY_LANE = {Lane.P0: ALARM, Lane.P1: RECORD, Lane.P2: TELEMETRY}
