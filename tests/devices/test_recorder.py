"""Per-port counters kept by the recorder."""

from __future__ import annotations

from gateway.devices.model import Reject
from gateway.devices.recorder import PortStats
from tests.support.threads import at_once

THREADS, EACH, ROUNDS = 4, 20_000, 5


def _refused_at_once() -> int:
    stats = PortStats()
    refused = Reject("too_long", b"")
    at_once(lambda: stats.reject("hubs", refused), THREADS, EACH)
    return stats.rejected["too_long"]


def test_refusals_counted_from_several_threads_at_once_are_all_kept() -> None:
    """A DC-09 receiver refuses lines on each TCP connection's thread (too long to be a
    message) and messages under its handler's lock on another: one reason's count is read,
    raised and written back by several threads at once, and none may be lost. Several
    rounds: a round's thread switches can fall into step with the loop and miss the
    read-to-write window, not all of them."""
    assert [_refused_at_once() for _ in range(ROUNDS)] == [THREADS * EACH] * ROUNDS
