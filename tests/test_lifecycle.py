from __future__ import annotations

import contextlib
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway import lifecycle
from gateway.app import Gateway, build, run, watch
from gateway.clock import ClockSync, SystemClock
from gateway.configfile import ConfigFileError
from gateway.events import Lane
from gateway.lifecycle import (
    Periodic,
    StartupError,
    Supervisor,
    name_native_threads,
    sd_notify,
    watchdog_interval_s,
)
from gateway.store import Store
from gateway.sync.publisher import Publisher
from tests.support.gateway import config


class Part:
    """A service that records what happened to it."""

    def __init__(self, name: str, log: list[str], fail: bool = False, essential: bool = True):
        self.name = name
        self.essential = essential
        self._log = log
        self._fail = fail

    def start(self) -> None:
        if self._fail:
            raise StartupError(f"{self.name} cannot start")
        self._log.append(f"start {self.name}")

    def stop(self) -> None:
        self._log.append(f"stop {self.name}")

    def health(self) -> dict[str, Any]:
        return {"ok": True}

    def healthy(self) -> bool:
        return True


def test_services_stop_in_reverse_order() -> None:
    log: list[str] = []
    sup = Supervisor([Part("store", log), Part("sync", log), Part("ports", log)])
    sup.start_all()
    sup.stop_all()
    assert log == [
        "start store",
        "start sync",
        "start ports",
        "stop ports",
        "stop sync",
        "stop store",
    ]


def test_an_essential_service_that_cannot_start_stops_the_rest() -> None:
    log: list[str] = []
    sup = Supervisor([Part("store", log), Part("sync", log, fail=True), Part("ports", log)])
    with pytest.raises(StartupError):
        sup.start_all()
    assert log == ["start store", "stop store"]


def test_a_non_essential_service_may_fail_and_the_rest_runs_on() -> None:
    log: list[str] = []
    sup = Supervisor(
        [Part("store", log), Part("vision", log, fail=True, essential=False), Part("ports", log)]
    )
    sup.start_all()
    assert log == ["start store", "start ports"]
    assert sup.healthy()
    assert sup.health()["vision"] == {
        "state": "not started",
        "error": "vision cannot start",
        "attempts": 1,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_service_that_did_not_start_is_tried_again_later_and_joins_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The installer fetches the missing models, or frees the full disk: the counter comes
    back without anyone restarting the gateway, and a failure said once is not said again."""
    log: list[str] = []
    clock = Clock()
    vision = Part("vision", log, fail=True, essential=False)
    sup = Supervisor([Part("store", log), vision], clock=clock)
    sup.start_all()
    assert sup.retry_failed() == []  # not before its delay
    caplog.clear()
    for attempt, wait in enumerate((30.0, 60.0, 120.0), start=2):
        clock.now += wait - 0.1
        assert sup.retry_failed() == []
        clock.now += 0.1
        assert sup.retry_failed() == []
        assert sup.health()["vision"] == {
            "state": "not started",
            "error": "vision cannot start",
            "attempts": attempt,
        }
    assert "vision" not in caplog.text  # the same error, not logged at every attempt
    vision._fail = False
    clock.now += 240.0
    assert sup.retry_failed() == ["vision"]
    assert sup.health()["vision"] == {"ok": True} and sup.healthy()
    sup.stop_all()
    assert log == ["start store", "start vision", "stop vision", "stop store"]


def test_a_service_with_a_shorter_longest_wait_is_tried_again_at_least_that_often() -> None:
    """A DC-09 receiver whose port was held: the panels' alarms must not wait 15 min."""
    log: list[str] = []
    clock = Clock()
    receiver = Part("dc09:panel", log, fail=True, essential=False)
    receiver.retry_max_s = 60.0
    sup = Supervisor([receiver], clock=clock)
    sup.start_all()
    for wait in (30.0, 60.0, 60.0, 60.0):
        clock.now += wait - 0.1
        sup.retry_failed()
        attempts = sup.health()["dc09:panel"]["attempts"]
        clock.now += 0.1
        sup.retry_failed()
        assert sup.health()["dc09:panel"]["attempts"] == attempts + 1


def test_a_retry_that_fails_unexpectedly_leaves_the_gateway_running() -> None:
    class Flaky(Part):
        def __init__(self, errors: list[Exception]) -> None:
            super().__init__("vision", [], essential=False)
            self.errors = errors

        def start(self) -> None:
            if self.errors:
                raise self.errors.pop(0)

    clock = Clock()
    sup = Supervisor([Flaky([StartupError("no models"), RuntimeError("surprise")])], clock=clock)
    sup.start_all()
    clock.now += 30.0
    assert sup.retry_failed() == []
    assert sup.health()["vision"]["error"] == "surprise"
    clock.now += 60.0
    assert sup.retry_failed() == ["vision"]


def test_sd_notify_speaks_to_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1")
        assert server.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")


def test_a_notify_socket_out_of_reach_is_logged_once_not_at_every_watchdog_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A line every 15 s, for ever, would bury the journal."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="gateway.lifecycle"):
        assert not any(sd_notify("WATCHDOG=1") for _ in range(4))
    assert [r.getMessage()[:16] for r in caplog.records] == ["sd_notify failed"]


def test_watchdog_interval_is_half_of_what_systemd_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval_s() is None


def running_threads() -> set[threading.Thread]:
    """Non-daemon threads: any left running keeps the process from exiting."""
    return {t for t in threading.enumerate() if not t.daemon}


def test_a_start_that_cannot_be_recorded_does_not_stop_the_gateway(tmp_path: Path) -> None:
    """Below the free-disk floor gateway.started (telemetry) is refused; the gateway runs on."""
    loaded = config(tmp_path / "var", None)
    cfg = loaded.config
    store = Store(
        cfg.store, cfg.db_path, SystemClock(), ClockSync("never", 60), free_disk=lambda _p: 0
    )
    gw = Gateway(loaded, SystemClock(), ClockSync("never", 60), store)
    try:
        gw.start()
        assert store.healthy() and gw.supervisor.unhealthy() == []
        assert gw.started_event_failures == 1 and store.counters["refused_p2"] == 1
        assert store.usage[Lane.P2].count == 0
    finally:
        gw.stop()


def test_run_exits_non_zero_when_start_up_fails_unexpectedly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(_self: Publisher) -> None:
        raise RuntimeError("publisher bug")

    monkeypatch.setattr(Publisher, "start", broken)
    before = running_threads()
    assert run(config(tmp_path / "var", None)) == 1
    assert running_threads() == before, "a started part was left running"
    assert "cannot start: unexpected RuntimeError: publisher bug" in capsys.readouterr().err


def test_a_sync_part_that_cannot_start_stops_the_parts_already_running(tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.pem"
    mqtt = {"brokers": ["mqtts://127.0.0.1:8883"], "tls": {"ca_file": str(missing)}}
    gw = build(config(tmp_path / "var", None, mqtt=mqtt), password=None)
    before = running_threads()
    try:
        with pytest.raises(ConfigFileError, match="cannot load CA"):
            gw.start()
        assert running_threads() == before, "the publisher or the downlink was left running"
    finally:
        assert gw.sync is not None
        gw.sync.stop()


def test_a_task_failing_every_tick_does_not_flood_the_journal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticks: list[int] = []
    done = threading.Event()

    def task() -> None:
        ticks.append(1)
        if len(ticks) <= 9:
            raise OSError(30, "Read-only file system")
        done.set()

    periodic = Periodic("housekeeping", 0.005, task)
    with caplog.at_level(logging.INFO, logger="gateway.lifecycle"):
        periodic.start()
        assert done.wait(10)
        periodic.stop()
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines == [
        ("ERROR", "housekeeping: periodic task failed", True),
        ("ERROR", "housekeeping: failed 2 times in a row: [Errno 30] Read-only file system", False),
        ("ERROR", "housekeeping: failed 4 times in a row: [Errno 30] Read-only file system", False),
        ("ERROR", "housekeeping: failed 8 times in a row: [Errno 30] Read-only file system", False),
        ("INFO", "housekeeping: works again after 9 failures", False),
    ]
    assert periodic.failures == 9


class SlowToStart(Part):
    """A face stage whose models were missing at first, then take long to load."""

    def __init__(self, log: list[str]) -> None:
        super().__init__("vision", log, fail=True, essential=False)
        self.starting = threading.Event()
        self.release = threading.Event()

    def start(self) -> None:
        if self._fail:
            self._fail = False
            raise StartupError("vision: models missing")
        self.starting.set()
        self.release.wait(30)
        super().start()


def test_the_watchdog_is_pinged_while_a_slow_start_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried start longer than WatchdogSec must not get a healthy gateway killed."""
    monkeypatch.setattr(lifecycle, "RETRY_MIN_S", 0.0)
    path = tmp_path / "notify"
    log: list[str] = []
    slow = SlowToStart(log)
    loaded = config(tmp_path / "var", None)
    cfg = loaded.config
    store = Store(cfg.store, cfg.db_path, SystemClock(), ClockSync("never", 60))
    gw = Gateway(loaded, SystemClock(), ClockSync("never", 60), store, services=[slow])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        gw.start()
        watching = threading.Thread(target=watch, args=(gw, 0.05))
        watching.start()
        try:
            assert slow.starting.wait(10)
            systemd.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    systemd.recv(64)  # pings from before the start began
            systemd.settimeout(5)
            assert [systemd.recv(64) for _ in range(5)] == [b"WATCHDOG=1"] * 5
            assert gw.services_health()["vision"]["state"] == "not started"
        finally:
            slow.release.set()
            gw.stop_event.set()
            watching.join()
            gw.stop()
    assert log == ["start vision", "stop vision"]  # the stop waited for the start, stopped it


def test_threads_carry_their_names_in_the_kernel_for_top_and_ps() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="uplink-publisher-2")
    thread.start()
    try:
        name_native_threads()
        comm = Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()
    finally:
        release.set()
        thread.join()
    assert comm == "uplink-publishe"  # the kernel keeps 15 bytes
