"""kill -9 of the gateway while it records and publishes: nothing acknowledged is ever lost."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from tests.support.broker import Mosquitto
from tests.support.subscriber import Subscriber

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 20


def write_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
id = "gw-crash"
site = "site-test"
data_dir = "{tmp_path / "var"}"
[clock]
sync_source = "never"
[store]
synchronous = "normal"
[mqtt]
brokers = ["mqtt://127.0.0.1:{port}"]
reconnect_min_s = 0.05
reconnect_max_s = 0.3
session_expiry_s = 0
inflight_window = 16
batch_max_events = 20
"""
    )
    return path


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


def recorded_lines(output: str) -> dict[str, int]:
    """Events whose record() returned before the kill (a torn last line is ignored)."""
    out: dict[str, int] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "R" and len(parts[1]) == 36:
            out[parts[1]] = int(parts[2])
    return out


def test_kill_9_at_random_moments_loses_nothing_that_was_recorded(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    rng = random.Random(20261122)
    config = write_config(tmp_path, mosquitto.port)
    sub = Subscriber(mosquitto.port)
    acknowledged: dict[str, int] = {}
    try:
        for trial in range(TRIALS):
            proc = start(config, events=3000, seed=trial)
            time.sleep(rng.uniform(0.05, 0.6))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
            acknowledged.update(recorded_lines(out))
        final = start(config, events=0, seed=TRIALS)
        out, _ = final.communicate(timeout=120)
        assert "DRAINED" in out and final.returncode == 0

        assert len(acknowledged) > 500, "the trials recorded too little to mean anything"
        received: dict[str, list[tuple[int, object]]] = defaultdict(list)
        for env in sub.events():
            received[env["event_id"]].append((env["seq"], env["data"]))
        missing = set(acknowledged) - received.keys()
        assert not missing, f"{len(missing)} recorded events were never delivered"
        for event_id, seq in acknowledged.items():
            assert received[event_id][0][0] == seq
        for copies in received.values():  # a repeat is always the same event again
            assert len(set(map(str, copies))) == 1
        seqs = [copies[0][0] for copies in received.values()]
        assert len(seqs) == len(set(seqs)), "a seq was used twice"
        with sqlite3.connect(tmp_path / "var" / "gateway.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            sessions = conn.execute("SELECT value FROM meta WHERE key = 'session'").fetchone()[0]
        assert sessions == TRIALS + 1
    finally:
        sub.close()
