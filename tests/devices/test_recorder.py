"""Per-port counters kept by the recorder."""

from __future__ import annotations

import sys
import threading

from gateway.devices.model import Reject
from gateway.devices.recorder import PortStats

THREADS, EACH, ROUNDS = 4, 20_000, 5


def _refused_at_once() -> int:
    """How many refusals one reason counts after THREADS threads made EACH at the same time."""
    stats = PortStats()
    refused = Reject("too_long", b"")
    start = threading.Barrier(THREADS)

    def refuse() -> None:
        start.wait()
        for _ in range(EACH):
            stats.reject("hubs", refused)

    workers = [threading.Thread(target=refuse) for _ in range(THREADS)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return stats.rejected["too_long"]


def test_refusals_counted_from_several_threads_at_once_are_all_kept() -> None:
    """A DC-09 receiver refuses lines on each TCP connection's thread (too long to be a
    message) and messages under its handler's lock on another: one reason's count is read,
    raised and written back by several threads at once, and none may be lost. Threads switch
    as often as the interpreter allows, over several rounds: a round's switches can fall
    into step with the loop and miss the read-to-write window, not all of them."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        counted = [_refused_at_once() for _ in range(ROUNDS)]
    finally:
        sys.setswitchinterval(switch)
    assert counted == [THREADS * EACH] * ROUNDS
