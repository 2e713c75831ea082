from __future__ import annotations

from gateway.events import Lane
from gateway.store.limits import admit, pressured_lanes, quota_excess


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
