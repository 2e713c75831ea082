"""Retained status (birth, last will, clean goodbye) and the periodic health message."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.clock import SystemClock
from gateway.events import Event, iso_utc
from gateway.store import StorageFull, db
from tests.support.broker import Mosquitto
from tests.support.contract import check_message
from tests.support.crashee import killed_with_will
from tests.support.disk import fill
from tests.support.events import ALARM, TELEMETRY
from tests.support.gateway import config, running
from tests.support.subscriber import Subscriber
from tests.support.wait import eventually
from tests.sync.test_crash import write_config

BASE = "eldercare/site-test"


def test_birth_on_connect_and_goodbye_on_a_clean_stop(tmp_path: Path, mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port)
    try:
        with running(config(tmp_path / "var", mosquitto.port)) as gw:
            sub.wait_for(lambda _m: bool(sub.of_topic("gw-test/status")))
            birth = sub.of_topic("gw-test/status")[0].json()
            assert birth["state"] == "online" and birth["session"] == gw.store.session
            assert birth["software"] and birth["config"] == "test"
        sub.wait_for(lambda _m: sub.of_topic("gw-test/status")[-1].json()["state"] == "offline")
        assert sub.of_topic("gw-test/status")[-1].json()["reason"] == "shutdown"
    finally:
        sub.close()
    late = Subscriber(mosquitto.port, client_id="late-joiner")
    try:
        late.wait_for(lambda _m: bool(late.of_topic("gw-test/status")))
        (retained,) = late.of_topic("gw-test/status")
        assert retained.retain and retained.json()["state"] == "offline"
    finally:
        late.close()


def test_last_will_when_the_gateway_process_dies(tmp_path: Path, mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port)
    try:
        will = killed_with_will(write_config(tmp_path, mosquitto.port), sub).json()
        assert will["reason"] == "connection_lost" and will["gateway"] == "gw-crash"
    finally:
        sub.close()


def test_health_reports_the_backlog_per_lane(tmp_path: Path, mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port)
    try:
        with running(config(tmp_path / "var", None)) as gw:
            for i in range(50):
                gw.store.record(Event(TELEMETRY, {"n": i}))
        cfg = config(tmp_path / "var", mosquitto.port, mqtt={"health_interval_s": 1})

        def drained(_m: object) -> bool:  # deletions of delivered telemetry wait up to 1 s
            return any(m.json()["lanes"]["p2"]["pending"] == 0 for m in sub.of_topic("/health"))

        with running(cfg):
            sub.wait_for(drained, timeout=10)
        first = sub.of_topic("gw-test/health")[0].json()
        assert first["session"] == 2 and first["clock_synced"] is False
        assert first["lanes"]["p2"]["pending"] >= 1
        assert first["broker"]["state"] == "connected"
        last = sub.of_topic("gw-test/health")[-1].json()
        assert last["lanes"]["p2"]["pending"] == 0 and last["uplink"]["events_acked"] >= 51
    finally:
        sub.close()


def test_health_after_reconnecting_says_why_the_connection_ended(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Health is published only while connected: the reason a connection ended is still in it
    once the gateway is back. (Here another client took the gateway's client id.)"""
    sub = Subscriber(mosquitto.port)
    intruder = paho.Client(CallbackAPIVersion.VERSION2, "site-test-gw-test", protocol=paho.MQTTv5)
    connected = threading.Event()
    intruder.on_connect = lambda *_: connected.set()
    try:
        with running(config(tmp_path / "var", mosquitto.port)) as gw:
            sub.wait_for(lambda _m: bool(sub.of_topic("gw-test/health")))
            assert sub.of_topic("gw-test/health")[0].json()["broker"]["last_error"] is None
            taken_at = iso_utc(SystemClock().wall_ms())
            intruder.connect("127.0.0.1", mosquitto.port)
            intruder.loop_start()
            assert connected.wait(10)
            intruder.disconnect()
            intruder.loop_stop()

            def after_reconnecting(_m: object) -> bool:
                return any(m.json()["broker"]["connects"] == 2 for m in sub.of_topic("/health"))

            sub.wait_for(after_reconnecting)
            assert gw.sync is not None and gw.sync.link.connected
        health = next(
            h for h in (m.json() for m in sub.of_topic("/health")) if h["broker"]["connects"] == 2
        )
        broker = health["broker"]
        # the reason is the broker's: mosquitto 2.0 just closes ("Unspecified error")
        assert broker["disconnects"] == 1 and broker["last_error"]
        assert taken_at <= broker["last_error_at"] <= health["ts"]
    finally:
        sub.close()


def test_the_journal_health_line_says_the_disk_is_full_and_what_was_refused(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the broker is down that line is the only health anyone sees: 'ok' everywhere
    with the disk full and telemetry turned away would send the installer elsewhere."""
    store = {"min_free_disk_mb": 4, "reserve_mb": 2}
    with running(config(small_disk / "var", None, store=store)) as gw:
        assert gw.sync is not None
        fill(small_disk)
        gw.store.record(Event(ALARM, {"device": "A1"}))  # written from the reserve
        with pytest.raises(StorageFull):
            gw.store.record(Event(TELEMETRY, {"n": 1}))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gateway.sync.service"):
            gw.sync.report()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("health:")]
    assert "DISK FULL (reserve released) REFUSED p2=1;" in line, line


def test_the_journal_health_line_stops_saying_refused_once_the_disk_has_room_again(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The counts of refused events are kept for good, across restarts: a line that showed
    them would cry REFUSED for months after one full disk that was long dealt with."""
    store = {"min_free_disk_mb": 4, "reserve_mb": 2}

    def lines(gw: Any) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gateway.sync.service"):
            gw.sync.report()
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("health:")]

    with running(config(small_disk / "var", None, store=store)) as gw:
        assert gw.sync is not None
        filler = fill(small_disk)
        with pytest.raises(StorageFull):
            gw.store.record(Event(TELEMETRY, {"n": 1}))
        (line,) = lines(gw)
        assert "REFUSED p2=1;" in line, line
        filler.unlink()
        gw.store.housekeep()
        gw.store.record(Event(TELEMETRY, {"n": 2}))
        (line,) = lines(gw)
        assert "REFUSED" not in line and "DISK FULL" not in line, line
    with running(config(small_disk / "var", None, store=store)) as gw:
        assert gw.store.counters["refused_p2"] == 1  # still in the health message
        (line,) = lines(gw)
        assert "REFUSED" not in line, line


def test_health_says_when_another_program_holds_the_journal_and_what_waits_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An sqlite3 shell left in the middle of a change: the alarm waits in memory, and the
    platform and the journal's line must say so, not "ok"; once it lets go, they stop."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)

    def report(gw: Any) -> tuple[dict[str, Any], str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gateway.sync.service"):
            gw.sync.report()
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("health:")]
        health = gw.sync.health_message()
        assert not check_message("e/s/g/health", json.dumps(health).encode())
        return health, line

    with running(config(tmp_path / "var", None)) as gw:
        assert gw.sync is not None
        with contextlib.closing(sqlite3.connect(gw.store.path, isolation_level=None)) as shell:
            shell.execute("BEGIN IMMEDIATE")
            alarm = gw.store.submit(Event(ALARM, {"device": "A1"}))
            eventually(lambda: gw.store.locked is not None)
            health, line = report(gw)
            held = health["store_locked"]
            assert held["waiting"] >= 1 and held["for_s"] > 0  # the alarm, housekeeping perhaps
            assert f"STORE LOCKED by another program for {held['for_s']:.0f} s" in line, line
            shell.execute("ROLLBACK")
        alarm.result(10)
        health, line = report(gw)
        assert health["store_locked"] is None and "LOCKED" not in line, line
