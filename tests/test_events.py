from __future__ import annotations

import json
import re
import uuid

import pytest

from gateway.events import Event, EventType, Lane, StoredEvent, _Uuid7, iso_utc

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


def test_envelope_text_equals_json_dumps_for_any_data() -> None:
    """The envelope is formatted by hand for speed; it must stay what json.dumps would make."""
    for synced in (True, False):
        for replay in (True, False):
            ev = StoredEvent(
                seq=2**40,
                event_id="01a20589-1afd-70af-88b3-4f52542d7b97",
                type="wristband.seen",
                schema=3,
                lane=Lane.P2,
                session=7,
                ts_ms=0,
                clock_synced=synced,
                steady_ms=0,
                data_json='{"text":"SOS \\"床 12\\"\\n","n":null}',
            )
            expected = {
                "event_id": ev.event_id,
                "seq": ev.seq,
                "session": 7,
                "type": "wristband.seen",
                "schema": 3,
                "ts": "1970-01-01T00:00:00.000Z",
                "clock_synced": synced,
                "replay": replay,
                "data": {"text": 'SOS "床 12"\n', "n": None},
            }
            assert json.loads(ev.envelope_json(replay)) == expected


def test_names_and_ids_that_would_need_escaping_are_refused() -> None:
    with pytest.raises(ValueError):
        EventType('alarm."sos', Lane.P0)
    with pytest.raises(ValueError):
        Event(EventType("alarm.sos", Lane.P0), {}, event_id='x","seq":1')
