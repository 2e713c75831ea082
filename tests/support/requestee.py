"""A gateway process (the sync stage) for crash tests of requests: each ``ping`` takes DELAY
seconds, and says ``APPLYING <transaction>`` on stdout as it begins, so the test can kill the
process while it holds requests.

Usage: python -m tests.support.requestee DATA_DIR BROKER_PORT DELAY
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.events import iso_utc
from gateway.store import Store
from gateway.sync.downlink import Operation, Reply
from tests.support.gateway import config, sync_alone

ROOT = Path(__file__).resolve().parents[2]


def start(data_dir: Path, port: int, delay_s: float) -> subprocess.Popen[str]:
    """Started and connected to the broker."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.requestee", str(data_dir), str(port), str(delay_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert proc.stdout is not None
    while (line := proc.stdout.readline()).startswith("APPLYING"):
        continue  # requests the broker kept for it come as it connects
    assert line.strip() == "READY"
    return proc


def main(data_dir: str, port: str, delay_s: str) -> None:
    stores: list[Store] = []

    started = threading.Event()

    def ping(request: Mapping[str, Any]) -> Reply:
        started.wait()  # handed over as it connects, before the store is named here
        print("APPLYING", request["transaction"], flush=True)
        time.sleep(float(delay_s))
        ts = iso_utc(time.time_ns() // 1_000_000)
        return Reply({"pong": True, "session": stores[0].session, "ts": ts, "clock_synced": False})

    cfg = config(Path(data_dir), int(port), mqtt={"session_expiry_s": 3600})
    with sync_alone(cfg, operations=[Operation("ping", ping)]) as (store, sync):
        stores.append(store)
        started.set()
        while not sync.link.connected:
            time.sleep(0.02)
        print("READY", flush=True)
        time.sleep(3600)


if __name__ == "__main__":
    main(*sys.argv[1:4])
