from __future__ import annotations

from gateway.events import Lane
from gateway.store.limits import admit, event_bytes, pressured_lanes, quota_excess


def test_above_the_floor_everything_is_admitted() -> None:
    got = admit([Lane.P2, Lane.P0], [100, 100], free_bytes=10, floor_bytes=5, p2_pending_bytes=0)
    assert got.admitted == (True, True) and got.evict_p2_bytes == 0


def test_below_the_floor_alarms_claim_the_evictable_room_first() -> None:
    got = admit(
        [Lane.P2, Lane.P1, Lane.P0],
        [100, 100, 100],
        free_bytes=0,
        floor_bytes=5,
        p2_pending_bytes=250,
    )
    assert got.admitted == (False, True, True)
    assert got.evict_p2_bytes == 200


def test_below_the_floor_with_nothing_to_evict_everything_is_refused() -> None:
    got = admit([Lane.P0], [100], free_bytes=0, floor_bytes=5, p2_pending_bytes=0)
    assert got.admitted == (False,) and got.evict_p2_bytes == 0


def test_below_the_floor_the_reserve_takes_alarms_and_records_but_not_telemetry() -> None:
    got = admit(
        [Lane.P2, Lane.P1, Lane.P0],
        [100, 100, 100],
        free_bytes=0,
        floor_bytes=5,
        p2_pending_bytes=100,
        reserve=True,
    )
    assert got.admitted == (False, True, True)
    assert got.evict_p2_bytes == 100  # telemetry still makes way first


def test_quota_and_pressure() -> None:
    assert quota_excess(120, 100) == 20 and quota_excess(80, 100) == 0
    quotas = {Lane.P0: 10, Lane.P1: 10, Lane.P2: 10}
    assert pressured_lanes({Lane.P0: 11, Lane.P1: 10, Lane.P2: 99}, quotas) == [Lane.P0]


def test_at_the_floor_exactly_everything_is_admitted() -> None:
    """Only below the floor is anything refused: a disk with just the floor free still
    takes telemetry, and evicts nothing for it."""
    got = admit([Lane.P2, Lane.P0], [100, 100], free_bytes=5, floor_bytes=5, p2_pending_bytes=0)
    assert got.admitted == (True, True) and got.evict_p2_bytes == 0


def test_records_over_their_quota_raise_pressure_too() -> None:
    """P1 (meals, restores) is never evicted either, so over its quota staff must hear of it."""
    quotas = {Lane.P0: 10, Lane.P1: 10, Lane.P2: 10}
    assert pressured_lanes({Lane.P0: 0, Lane.P1: 11, Lane.P2: 0}, quotas) == [Lane.P1]


def test_an_event_counts_its_utf8_bytes_not_its_characters() -> None:
    """A name in a non-Latin script takes two or three bytes a character on the disk."""
    assert event_bytes('{"name": "Ünal"}') == event_bytes('{"name": "Unal"}') + 1
