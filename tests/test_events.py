from __future__ import annotations

import json
import re
import uuid

from gateway.events import Lane, StoredEvent, _Uuid7, iso_utc

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_uuid7_is_valid_and_sorts_within_one_millisecond() -> None:
    make = _Uuid7(lambda: 1_790_000_000_123)
    ids = [make() for _ in range(5000)]
    assert all(UUID7.match(i) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert uuid.UUID(ids[0]).version == 7


def test_uuid7_survives_the_clock_stepping_back() -> None:
    now = [2_000_000_000_000]
    make = _Uuid7(lambda: now[0])
    first = make()
    now[0] -= 60_000
    second = make()
    assert second > first


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1_795_000_000_007) == "2026-11-18T11:06:40.007Z"


def test_envelope_text_is_the_json_of_its_fields() -> None:
    ev = StoredEvent(
        seq=9,
        event_id="01a20589-1afd-70af-88b3-4f52542d7b97",
        type="alarm.sos",
        schema=1,
        lane=Lane.P0,
        session=3,
        ts_ms=1_795_000_000_007,
        clock_synced=True,
        steady_ms=5,
        data_json='{"band":"A1B2C3D4E5F6","名":"老"}',
    )
    assert json.loads(ev.envelope_json(replay=True)) == {
        "event_id": ev.event_id,
        "seq": 9,
        "session": 3,
        "type": "alarm.sos",
        "schema": 1,
        "ts": "2026-11-18T11:06:40.007Z",
        "clock_synced": True,
        "replay": True,
        "data": {"band": "A1B2C3D4E5F6", "名": "老"},
    }
