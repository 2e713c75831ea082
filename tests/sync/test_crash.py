"""kill -9 of the gateway while it records and publishes: nothing acknowledged is ever lost."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
from collections import defaultdict
from pathlib import Path

from tests.support import requestee
from tests.support.broker import Mosquitto
from tests.support.crashee import kill_trials
from tests.support.subscriber import Subscriber

TRIALS = 20
BASE = "eldercare/site-test/gw-test"


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


def test_kill_9_at_random_moments_loses_nothing_that_was_recorded(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    rng = random.Random(20261122)
    config = write_config(tmp_path, mosquitto.port)
    sub = Subscriber(mosquitto.port)
    try:
        acknowledged, out = kill_trials(config, TRIALS, rng)
        assert out.rstrip().endswith("DRAINED")

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


def test_requests_the_gateway_was_killed_holding_are_handed_over_again_and_answered(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The broker was sent each request's PUBACK as it arrived, so the three a gateway was
    killed holding (one being applied, two waiting: a burst handed over at a reconnect) were
    never answered nor applied. A request is acknowledged once it is answered: the broker
    hands over again what the gateway died holding, and the next start answers each once."""
    sub = Subscriber(mosquitto.port)
    data_dir = tmp_path / "var"
    try:
        proc = requestee.start(data_dir, mosquitto.port, 30.0)
        for n in (1, 2, 3):
            sub.publish(f"{BASE}/request/ping", json.dumps({"transaction": f"t-{n}"}))
        assert proc.stdout is not None and proc.stdout.readline().split() == ["APPLYING", "t-1"]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert sub.of_topic("/response/ping") == []
        proc = requestee.start(data_dir, mosquitto.port, 0.0)
        try:
            sub.wait_for(lambda _m: len(sub.of_topic("/response/ping")) >= 3)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        answers = [m.json() for m in sub.of_topic("/response/ping")]
        assert sorted(a["transaction"] for a in answers) == ["t-1", "t-2", "t-3"]
        assert {a["status"] for a in answers} == {"ok"}
    finally:
        sub.close()
