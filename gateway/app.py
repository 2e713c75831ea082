"""Composition root: build the services from config, start them in order, stop in reverse."""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from gateway import __version__
from gateway.clock import Clock, ClockSync, SystemClock
from gateway.config import ConfigFileError, LoadedConfig
from gateway.configfile import Issue
from gateway.devices.service import build_services as build_device_services
from gateway.devices.service import load_definitions
from gateway.events import GATEWAY_STARTED, Event
from gateway.lifecycle import (
    Periodic,
    Service,
    StartupError,
    Supervisor,
    name_native_threads,
    sd_notify,
    watchdog_interval_s,
)
from gateway.logs import setup_logging
from gateway.store import Store, StoreError, hold_exclusively
from gateway.sync import Sync
from gateway.sync.mqtt import check_secret_files
from gateway.vision.build import build as build_vision

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """The running gateway: the store first, then sync, then the producers.

    Stopping goes in reverse: producers stop first (nothing new arrives), sync says goodbye,
    and the store closes last, after every pending write has been committed.
    """

    loaded: LoadedConfig
    clock: Clock
    clock_sync: ClockSync
    store: Store
    sync: Sync | None = None
    services: list[Service] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    supervisor: Supervisor = field(init=False)
    model_versions: Callable[[], dict[str, str]] = dict
    started_event_failures: int = 0

    def __post_init__(self) -> None:
        self.supervisor = Supervisor([])

    def start(self) -> None:
        self.supervisor = Supervisor([self.store, *self.services])
        self.supervisor.start_all()
        self._record_started()
        self._announce_models()

    def retry(self) -> None:
        """Services that could not start, tried again (see ``Supervisor.retry_failed``)."""
        if self.supervisor.retry_failed():
            self._announce_models()

    def _announce_models(self) -> None:
        if self.sync is not None and self.model_versions():
            self.sync.announce()  # the birth may have gone out before the models were loaded

    def _record_started(self) -> None:
        """Record gateway.started; if it cannot be (telemetry refused below the free-disk floor),
        say so and run on: alarms are still taken, and a gateway that is not running takes none."""
        try:
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
        except Exception as exc:
            self.started_event_failures += 1
            log.error("gateway.started not recorded, running on: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        self.supervisor.stop_all()

    def services_health(self) -> dict[str, Any]:
        return self.supervisor.health()


def build(
    loaded: LoadedConfig, *, password: str | None, rng: random.Random | None = None
) -> Gateway:
    cfg = loaded.config
    clock = SystemClock()
    clock_sync = ClockSync(cfg.clock.sync_source, cfg.clock.check_interval_s)
    store = Store(cfg.store, cfg.db_path, clock, clock_sync)
    gw = Gateway(loaded=loaded, clock=clock, clock_sync=clock_sync, store=store)
    vision_services, vision_operations = build_vision(cfg.vision, cfg.gateway.data_dir, store)

    def model_versions() -> dict[str, str]:
        """Of a face stage that started: the birth message says what the counter runs."""
        versions: dict[str, str] = {}
        for service in vision_services:
            running = getattr(service, "model_versions", None)
            if running is not None:
                versions.update(running())
        return versions

    sync = Sync(
        loaded,
        store,
        clock,
        clock_sync,
        password=password,
        services_health=gw.services_health,
        model_versions=model_versions,
        operations=vision_operations,
        rng=rng,
    )
    gw.sync = sync
    gw.model_versions = model_versions
    gw.services = [
        sync,
        *build_device_services(cfg.devices, store, lambda: clock_sync.synced),
        *vision_services,
    ]
    return gw


def named_files(loaded: LoadedConfig) -> tuple[str | None, list[Issue]]:
    """The MQTT password, and what is wrong with the files the config names (device
    definitions, the password and TLS files): every problem, so that one run lists all there
    is to fix, for ``run`` as for ``validate-config``."""
    password, issues = None, []
    try:
        load_definitions(loaded.config.devices)
    except ConfigFileError as exc:
        issues.extend(loaded.at_its_key(exc).issues)
    try:
        password = check_secret_files(loaded.config.mqtt)
    except ConfigFileError as exc:
        issues.extend(loaded.at_its_key(exc).issues)
    return password, issues


def run(loaded: LoadedConfig) -> int:
    cfg = loaded.config
    password, issues = named_files(loaded)
    if issues:
        print(f"configuration error:\n{ConfigFileError(issues)}", file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level, [password] if password else [])
    for issue in loaded.retired:
        log.warning("configuration: %s", issue)
    try:
        lock = hold_exclusively(cfg.db_path)
    except StoreError as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        return _serve(loaded, password)
    finally:
        os.close(lock)


def _config_error(exc: ConfigFileError) -> None:
    """One log line per problem: a log line is never broken across lines."""
    for issue in exc.issues:
        log.error("configuration error: %s", issue)


def _serve(loaded: LoadedConfig, password: str | None) -> int:
    try:
        gw = build(loaded, password=password)
    except ConfigFileError as exc:
        _config_error(loaded.at_its_key(exc))
        return 2

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        gw.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)  # the terminal of `scripts/run CONFIG` went away
    try:
        gw.start()
    except ConfigFileError as exc:  # a file the config names, changed since it was checked
        _config_error(loaded.at_its_key(exc))
        return 2
    except (StoreError, StartupError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    except Exception as exc:
        # Non-daemon threads of what did start would keep the process alive, unready, for ever.
        log.critical("cannot start: unexpected %s: %s", type(exc).__name__, exc, exc_info=True)
        gw.stop()
        return 1
    sd_notify("READY=1")
    log.info("gateway %s running (config %s)", __version__, loaded.source)
    try:
        watch(gw, watchdog_interval_s() or 5.0)
    finally:
        sd_notify("STOPPING=1")
        gw.stop()
    return 0


def watch(gw: Gateway, interval: float) -> None:
    """Ping the systemd watchdog every ``interval`` while the started services are healthy,
    until ``gw.stop_event``. Services that did not start are tried again on a thread of their
    own: a start slower than the watchdog's timeout (models loading, a camera connecting)
    would otherwise hold up the ping, and systemd would kill a healthy gateway."""

    retrying = Periodic("retry", interval, gw.retry)  # a failing retry is logged, not the end
    retrying.start()
    name_native_threads()
    try:
        while not gw.stop_event.wait(interval):
            name_native_threads()  # threads a retried start began
            bad = gw.supervisor.unhealthy()
            if bad:
                log.error("unhealthy: %s; not pinging the watchdog", ", ".join(bad))
                sd_notify(f"STATUS=unhealthy: {', '.join(bad)}")
            else:
                sd_notify("WATCHDOG=1")
    finally:
        retrying.stop()  # a start under way is waited for, so that the stop stops it too
