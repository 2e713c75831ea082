"""A gateway process for crash tests: records events from several threads and reports each one
on stdout only after ``record()`` returned. The test kills it with SIGKILL at random moments.

Usage: python -m tests.support.crashee CONFIG EVENTS THREADS SEED
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

from gateway.app import build
from gateway.config import load_config, read_password
from gateway.events import Event, Lane
from tests.support.events import BY_LANE


def main() -> int:
    config, events, threads, seed = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    loaded = load_config(config)
    gw = build(loaded, password=read_password(loaded.config.mqtt), rng=random.Random(seed))
    gw.start()
    out = threading.Lock()
    print("READY", flush=True)

    def produce(worker: int) -> None:
        rng = random.Random(seed * 100 + worker)
        for i in range(events // threads):
            lane = rng.choices([Lane.P0, Lane.P1, Lane.P2], weights=[1, 3, 6])[0]
            stored = gw.store.record(Event(BY_LANE[lane], {"w": worker, "i": i}))
            with out:
                sys.stdout.write(f"R {stored.event_id} {stored.seq}\n")
                sys.stdout.flush()

    workers = [threading.Thread(target=produce, args=(w,)) for w in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    while any(u.count for u in gw.store.usage.values()):
        time.sleep(0.02)
    print("DRAINED", flush=True)
    gw.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
