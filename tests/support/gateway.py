"""Run a real gateway in-process against a real broker, for tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.app import Gateway, build
from gateway.clock import ClockSync, SystemClock
from gateway.config import GatewayConfig, LoadedConfig, read_password
from gateway.store import Store
from gateway.sync import Sync


def config(data_dir: Path, broker_port: int | None, **sections: dict[str, Any]) -> LoadedConfig:
    raw: dict[str, Any] = {
        "gateway": {"id": "gw-test", "site": "site-test", "data_dir": str(data_dir)},
        "clock": {"sync_source": "never"},
        "mqtt": {
            "brokers": [f"mqtt://127.0.0.1:{broker_port}"] if broker_port else [],
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5,
            "keepalive_s": 5,
            "connect_timeout_s": 3,
            "session_expiry_s": 0,
        },
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return LoadedConfig(config=GatewayConfig.model_validate(raw), source="test", version="test")


@contextmanager
def running(loaded: LoadedConfig, seed: int = 7) -> Iterator[Gateway]:
    gw = build(loaded, password=read_password(loaded.config.mqtt), rng=random.Random(seed))
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@contextmanager
def sync_alone(loaded: LoadedConfig, **options: Any) -> Iterator[tuple[Store, Sync]]:
    """The store and the sync stage without the rest of the gateway, both started; options go
    to Sync (operations, health callables)."""
    store = Store(loaded.config.store, loaded.config.db_path, SystemClock(), ClockSync("never", 60))
    sync = Sync(loaded, store, SystemClock(), ClockSync("never", 60), password=None, **options)
    store.start()
    sync.start()
    try:
        yield store, sync
    finally:
        sync.stop()
        store.stop()
