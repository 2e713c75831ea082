"""Event types, priority lanes and the envelope every uplink event carries.

The envelope is split in two on purpose: the store fixes ``event_id``, ``seq``, ``session``,
``ts`` and ``clock_synced`` when the event is recorded; ``replay`` is only known when the event
is finally sent, so the publisher adds it then.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NamedTuple


class Lane(IntEnum):
    """Lower value goes first. P0/P1 are never evicted; P2 may be (oldest first, counted)."""

    P0 = 0  # alarms: SOS, fall, wander
    P1 = 1  # meal records, alarm lifecycle
    P2 = 2  # telemetry: sightings, device status

    @property
    def label(self) -> str:
        return self.name.lower()


LANES = tuple(Lane)  # by value; on the per-message paths, faster than Lane(n) or iterating Lane


TYPE_NAME = re.compile(r"[a-z]+(\.[a-z_]+)+")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class EventType:
    name: str
    lane: Lane
    schema: int = 1
    description: str = ""
    # fields this schema version gained after rows of it had been recorded, with what an old
    # row means by leaving them out: filled in as it is sent, so that an upgraded gateway's
    # backlog still meets the contract
    added: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not TYPE_NAME.fullmatch(self.name):
            raise ValueError(f"event type name {self.name!r} is not like 'alarm.sos'")


GATEWAY_STARTED = EventType(
    "gateway.started",
    Lane.P2,
    description="The gateway process started; says whether the previous run stopped cleanly.",
)

BACKBONE_EVENT_TYPES: tuple[EventType, ...] = (GATEWAY_STARTED,)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def compact_json(value: Any) -> str:
    """JSON as sent: compact, UTF-8 text, no NaN. One shared encoder: json.dumps() with
    options builds a new encoder per call, which is most of its cost for small events."""
    return _ENCODER.encode(value)


class _Uuid7:
    """RFC 9562 UUIDv7 with a counter in rand_a, so ids made in one millisecond still sort."""

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self._now_ms = now_ms
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def __call__(self) -> str:
        with self._lock:
            ms = self._now_ms()
            if ms <= self._last_ms:
                ms = self._last_ms
                self._counter += 1
                if self._counter > 0xFFF:
                    ms += 1
                    self._counter = 0
            else:
                self._counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
            self._last_ms = ms
            counter = self._counter
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
        h = f"{value:032x}"  # formatting by hand: uuid.UUID() costs more than the rest together
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


uuid7 = _Uuid7(lambda: time.time_ns() // 1_000_000)


@dataclass(frozen=True)
class Event:
    """What a producer hands to the store: a type, its data, and an id chosen up front.

    The id is chosen by the producer so it can be written into a domain row in the same
    transaction and quoted back to the device or screen once ``record()`` returns.
    """

    type: EventType
    data: Mapping[str, Any]
    event_id: str = field(default_factory=uuid7)

    def __post_init__(self) -> None:
        if not UUID.fullmatch(self.event_id):
            raise ValueError(f"event_id {self.event_id!r} is not a lower-case UUID")


@functools.lru_cache(maxsize=256)
def _iso_seconds(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def iso_utc(unix_ms: int) -> str:
    """UTC ISO-8601 with milliseconds, e.g. 2026-11-22T08:30:00.125Z. (Events of a backlog
    share their seconds, so the formatted seconds are cached: this runs once per event sent.)"""
    return f"{_iso_seconds(unix_ms // 1000)}{unix_ms % 1000:03d}Z"


def with_added_fields(event: StoredEvent, added: tuple[tuple[str, Any], ...]) -> StoredEvent:
    """The event with the fields its type gained since it was recorded (see EventType)."""
    if all(f'"{name}":' in event.data_json for name, _ in added):
        return event  # recorded with them: nothing to parse
    data = json.loads(event.data_json)
    if not isinstance(data, dict):
        return event
    for name, value in added:
        data.setdefault(name, value)
    return event._replace(data_json=compact_json(data))


class StoredEvent(NamedTuple):
    """An event as committed: everything but ``replay``. ``data_json`` is kept as text so the
    publisher can frame it without parsing it again. (A NamedTuple: the store and the outbox
    reader make one per event on their hot paths.)"""

    seq: int
    event_id: str
    type: str
    schema: int
    lane: Lane
    session: int
    ts_ms: int
    clock_synced: bool
    steady_ms: int
    data_json: str

    def envelope_json(self, replay: bool) -> str:
        # Formatted directly: every field is a number, a boolean, or a string that needs no
        # escaping (a UUID, a type name matching [a-z._], a timestamp). A test pins this to
        # json.dumps of the same fields.
        return (
            f'{{"event_id":"{self.event_id}","seq":{self.seq},"session":{self.session},'
            f'"type":"{self.type}","schema":{self.schema},"ts":"{iso_utc(self.ts_ms)}",'
            f'"clock_synced":{"true" if self.clock_synced else "false"},'
            f'"replay":{"true" if replay else "false"},"data":{self.data_json}}}'
        )

    def envelope(self, replay: bool) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.envelope_json(replay))
        return parsed
