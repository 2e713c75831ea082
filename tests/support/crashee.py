"""A gateway process for crash tests: records events from several threads and reports each one
on stdout only after ``record()`` returned. The test kills it with SIGKILL at random moments.

Usage: python -m tests.support.crashee CONFIG EVENTS THREADS SEED
(``kill_trials`` drives it from a test or the benchmark.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from gateway.app import build
from gateway.config import load_config, read_password
from gateway.events import Event, Lane
from tests.support.events import BY_LANE
from tests.support.subscriber import Received, Subscriber

ROOT = Path(__file__).resolve().parents[2]


def start(config: Path, events: int, seed: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.crashee", str(config), str(events), "3", str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


def killed_with_will(config: Path, sub: Subscriber) -> Received:
    """Run the gateway (gw-crash) until its birth is on the broker, SIGKILL it, and return
    the last will the broker published for it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.crashee", str(config), "1000000", "1", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    topic = "gw-crash/status"
    try:
        sub.wait_for(lambda _m: bool(sub.of_topic(topic)))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    sub.wait_for(lambda _m: sub.of_topic(topic)[-1].json()["state"] == "offline")
    return sub.of_topic(topic)[-1]


def recorded_lines(output: str) -> dict[str, int]:
    """Events whose record() returned before the kill (a torn last line is ignored)."""
    out: dict[str, int] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "R" and len(parts[1]) == 36:
            out[parts[1]] = int(parts[2])
    return out


def kill_trials(config: Path, trials: int, rng: random.Random) -> tuple[dict[str, int], str]:
    """SIGKILL the gateway at random moments, ``trials`` times, then let a last run drain.

    Returns event_id -> seq of every event whose record() returned, and the last run's output.
    """
    acknowledged: dict[str, int] = {}
    for trial in range(trials):
        proc = start(config, events=3000, seed=trial)
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged.update(recorded_lines(out))
    final = start(config, events=0, seed=trials)
    out, _ = final.communicate(timeout=300)
    return acknowledged, out if final.returncode == 0 else f"exit {final.returncode}: {out}"


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
