"""Composition root: build the services from config, start them in order, stop in reverse."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType

from gateway import __version__
from gateway.clock import ClockSync, SystemClock
from gateway.config import LoadedConfig, read_password
from gateway.events import GATEWAY_STARTED, Event
from gateway.lifecycle import Service, Supervisor, sd_notify, watchdog_interval_s
from gateway.logs import setup_logging
from gateway.store import Store, StoreError
from gateway.vision.build import build_services as build_vision_services
from gateway.vision.errors import VisionError

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    loaded: LoadedConfig
    store: Store
    services: list[Service] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)

    @property
    def supervisor(self) -> Supervisor:
        return self._supervisor

    def __post_init__(self) -> None:
        self._supervisor = Supervisor([self.store, *self.services])

    def start(self) -> None:
        self._supervisor.start_all()
        self.store.record(
            Event(
                GATEWAY_STARTED,
                {
                    "session": self.store.session,
                    "software": __version__,
                    "config": self.loaded.version,
                    "previous_stop_clean": self.store.previous_stop_clean,
                },
            )
        )

    def stop(self) -> None:
        self._supervisor.stop_all()


def build(loaded: LoadedConfig) -> Gateway:
    cfg = loaded.config
    clock = SystemClock()
    sync = ClockSync(cfg.clock.sync_source, cfg.clock.check_interval_s)
    store = Store(cfg.store, cfg.db_path, clock, sync)
    services: list[Service] = []
    services += build_vision_services(cfg.vision, cfg.gateway.data_dir, store)
    return Gateway(loaded=loaded, store=store, services=services)


def run(loaded: LoadedConfig) -> int:
    cfg = loaded.config
    password = read_password(cfg.mqtt)
    setup_logging(cfg.logging.level, [password] if password else [])
    gw = build(loaded)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        gw.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        gw.start()
    except (StoreError, VisionError) as exc:
        log.error("%s", exc)
        return 1
    sd_notify("READY=1")
    log.info("gateway %s running (config %s)", __version__, loaded.source)
    interval = watchdog_interval_s() or 5.0
    try:
        while not gw.stop_event.wait(interval):
            bad = gw.supervisor.unhealthy()
            if bad:
                log.error("unhealthy: %s; not pinging the watchdog", ", ".join(bad))
                sd_notify(f"STATUS=unhealthy: {', '.join(bad)}")
            else:
                sd_notify("WATCHDOG=1")
    finally:
        sd_notify("STOPPING=1")
        gw.stop()
    return 0
