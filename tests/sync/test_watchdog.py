"""The alarm PUBACK timeout: short on a healthy link, patient on a slow one."""

from __future__ import annotations

from gateway.sync.watchdog import AlarmAckWatch


def test_each_drop_doubles_the_timeout_up_to_the_keepalive_horizon() -> None:
    watch = AlarmAckWatch(base_ms=5_000, cap_ms=45_000)
    seen = []
    for _ in range(5):
        seen.append(watch.timeout_ms)
        watch.expired()
    assert seen == [5_000, 10_000, 20_000, 40_000, 45_000]
    assert watch.timeout_ms == 45_000


def test_quick_acknowledgements_bring_it_back_down_step_by_step() -> None:
    watch = AlarmAckWatch(base_ms=5_000, cap_ms=45_000)
    for _ in range(4):
        watch.expired()
    steps = []
    for _ in range(4):
        watch.acked(30)
        steps.append(watch.timeout_ms)
    assert steps == [22_500, 11_250, 5_625, 5_000]


def test_never_below_four_times_the_latency_just_seen() -> None:
    watch = AlarmAckWatch(base_ms=5_000, cap_ms=45_000)
    watch.acked(3_000)
    assert watch.timeout_ms == 12_000
    assert not watch.overdue(11_999) and watch.overdue(12_000)
    watch.acked(20_000)
    assert watch.timeout_ms == 45_000
