"""TLS and mutual TLS against a real mosquitto; never a byte of MQTT in plaintext."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config import LoadedConfig
from gateway.configfile import ConfigFileError
from gateway.events import Event, Lane
from gateway.sync.mqtt import tls_context
from tests.support.broker import Mosquitto, free_port
from tests.support.events import ALARM
from tests.support.gateway import config, running
from tests.support.pki import Authority, Pair
from tests.support.relay import Relay
from tests.support.subscriber import Subscriber
from tests.support.wait import eventually


class TlsBroker:
    def __init__(self, tmp_path: Path, *, require_client_cert: bool) -> None:
        self.ca = Authority(tmp_path / "pki")
        self.server = self.ca.issue("broker", server=True)
        self.client = self.ca.issue("gw-test", server=False)
        self.tls_port = free_port()
        plain = free_port()
        conf = (
            f"listener {plain} 127.0.0.1\n"
            f"listener {self.tls_port} 127.0.0.1\n"
            f"cafile {self.ca.ca_file}\ncertfile {self.server.cert}\nkeyfile {self.server.key}\n"
            f"require_certificate {'true' if require_client_cert else 'false'}\n"
            "allow_anonymous true\n"
        )
        self.broker = Mosquitto(tmp_path, port=plain, extra_conf=conf)


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[[bool], TlsBroker]]:
    started: list[TlsBroker] = []

    def make(require_client_cert: bool) -> TlsBroker:
        b = TlsBroker(tmp_path, require_client_cert=require_client_cert)
        b.broker.start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.broker.stop()


def tls_config(
    tmp_path: Path,
    port: int,
    ca: Path,
    client: Pair | None = None,
    *,
    next_broker: str | None = None,
    **mqtt: float,
) -> LoadedConfig:
    tls: dict[str, str] = {"ca_file": str(ca)}
    if client is not None:
        tls |= {"cert_file": str(client.cert), "key_file": str(client.key)}
    brokers = [f"mqtts://localhost:{port}"] + ([next_broker] if next_broker else [])
    return config(tmp_path / "var", None, mqtt={"brokers": brokers, "tls": tls, **mqtt})


def test_tls_with_the_platform_ca_delivers(
    tmp_path: Path, make_broker: Callable[[bool], TlsBroker]
) -> None:
    tls_broker = make_broker(False)
    sub = Subscriber(tls_broker.broker.port)
    try:
        with running(tls_config(tmp_path, tls_broker.tls_port, tls_broker.ca.ca_file)) as gw:
            ev = gw.store.record(Event(ALARM, {"n": 1}))
            sub.wait_for(lambda _m: ev.event_id in sub.event_ids())
            assert gw.sync is not None and gw.sync.link.health()["broker"].startswith("mqtts://")
    finally:
        sub.close()


def test_mutual_tls_needs_the_client_certificate(
    tmp_path: Path, make_broker: Callable[[bool], TlsBroker]
) -> None:
    mtls_broker = make_broker(True)
    sub = Subscriber(mtls_broker.broker.port)
    ca, port = mtls_broker.ca.ca_file, mtls_broker.tls_port
    try:
        with running(tls_config(tmp_path / "a", port, ca, mtls_broker.client)) as gw:
            ev = gw.store.record(Event(ALARM, {"n": 1}))
            sub.wait_for(lambda _m: ev.event_id in sub.event_ids())
        with running(tls_config(tmp_path / "b", port, ca)) as gw:
            ev = gw.store.record(Event(ALARM, {"n": 2}))
            assert gw.sync is not None
            link = gw.sync.link
            eventually(lambda: link.failures >= 1)
            assert link.connects == 0 and gw.store.usage[Lane.P0].count == 1
            assert ev.event_id not in sub.event_ids()
    finally:
        sub.close()


@pytest.mark.parametrize(
    ("offered", "alert"),
    [
        ("no certificate", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        ("a stranger's", "TLSV1_ALERT_UNKNOWN_CA"),
    ],
)
def test_a_refused_client_certificate_fails_over_at_once_and_says_why(
    tmp_path: Path,
    make_broker: Callable[[bool], TlsBroker],
    caplog: pytest.LogCaptureFixture,
    offered: str,
    alert: str,
) -> None:
    """Under TLS 1.3 the broker refuses the certificate after the handshake, with an alert,
    and closes: the alarm goes to the next broker then, not after connect_timeout_s, and the
    log names the alert."""
    mtls_broker = make_broker(True)
    (tmp_path / "good").mkdir()
    good = Mosquitto(tmp_path / "good").start()
    sub = Subscriber(good.port)
    client = None
    if offered != "no certificate":
        client = Authority(tmp_path / "other", name="Someone Else CA").issue("gw", server=False)
    ca, port = mtls_broker.ca.ca_file, mtls_broker.tls_port
    cfg = tls_config(tmp_path, port, ca, client, next_broker=good.url, connect_timeout_s=60)
    try:
        with caplog.at_level(logging.WARNING, "gateway.sync.mqtt"), running(cfg) as gw:
            ev = gw.store.record(Event(ALARM, {"n": 1}))
            sub.wait_for(lambda _m: ev.event_id in sub.event_ids(), timeout=20)
            assert gw.sync is not None and gw.sync.link.failures == 1
        assert f"localhost:{port} refused or silent: [SSL: {alert}]" in caplog.text
    finally:
        sub.close()
        good.stop()


def test_a_client_key_every_user_can_read_is_refused_at_start(
    tmp_path: Path, make_broker: Callable[[bool], TlsBroker]
) -> None:
    mtls_broker = make_broker(True)
    mtls_broker.client.key.chmod(0o644)
    try:
        ca, port, client = mtls_broker.ca.ca_file, mtls_broker.tls_port, mtls_broker.client
        loaded = tls_config(tmp_path, port, ca, client)
        with pytest.raises(ConfigFileError, match=r"key_file: readable by every user"):
            tls_context(loaded.config.mqtt)
    finally:
        mtls_broker.client.key.chmod(0o600)


def test_a_broker_certificate_from_another_ca_is_refused(
    tmp_path: Path, make_broker: Callable[[bool], TlsBroker]
) -> None:
    """Each attempt's socket is closed when its handshake fails, not left to the garbage
    collector."""
    tls_broker = make_broker(False)
    stranger = Authority(tmp_path / "other", name="Someone Else CA")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with running(tls_config(tmp_path, tls_broker.tls_port, stranger.ca_file)) as gw:
            gw.store.record(Event(ALARM, {"n": 1}))
            assert gw.sync is not None
            link = gw.sync.link
            eventually(lambda: link.failures >= 2)
            assert link.connects == 0
            assert "CERTIFICATE_VERIFY_FAILED" in (link.last_error or "")
            assert gw.store.usage[Lane.P0].count == 1
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


def test_nothing_is_sent_in_plaintext_to_a_tls_broker(tmp_path: Path) -> None:
    """A listener that is not TLS at all: the gateway only ever offers a TLS handshake."""
    ca = Authority(tmp_path / "pki")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    first_bytes: list[bytes] = []

    def accept() -> None:
        server.settimeout(10)
        for _ in range(3):
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                first_bytes.append(conn.recv(5))

    thread = threading.Thread(target=accept)
    thread.start()
    with running(tls_config(tmp_path, port, ca.ca_file)) as gw:
        gw.store.record(Event(ALARM, {"n": 1}))
        thread.join(30)
    server.close()
    assert len(first_bytes) == 3
    for head in first_bytes:
        assert head[:2] == b"\x16\x03", f"not a TLS handshake: {head!r}"
        assert head[:1] != b"\x10"  # an MQTT CONNECT


def test_a_half_open_tls_connection_is_dropped_for_a_waiting_alarm(
    tmp_path: Path, make_broker: Callable[[bool], TlsBroker]
) -> None:
    tls_broker = make_broker(False)
    sub = Subscriber(tls_broker.broker.port)
    relay = Relay(tls_broker.tls_port)
    try:
        cfg = tls_config(
            tmp_path, relay.port, tls_broker.ca.ca_file, keepalive_s=60, alarm_ack_timeout_s=1
        )
        with running(cfg) as gw:
            assert gw.sync is not None
            eventually(lambda: gw.sync is not None and gw.sync.link.connected)
            relay.freeze()
            ev = gw.store.record(Event(ALARM, {"n": 1}))
            sub.wait_for(lambda _m: ev.event_id in sub.event_ids(), timeout=15)
            assert gw.sync.publisher.alarm_timeouts == 1 and relay.accepted == 2
    finally:
        relay.close()
        sub.close()


def test_a_link_slower_than_five_seconds_connects_within_connect_timeout_s(
    tmp_path: Path, make_broker: Callable[[bool], TlsBroker]
) -> None:
    """On a congested mobile link the broker's TLS answer may take longer than a few seconds:
    connect_timeout_s is the installer's say on how long that may be, for the handshake as
    much as for the CONNACK (paho's own 5 s would otherwise fail every attempt)."""
    tls_broker = make_broker(False)
    sub = Subscriber(tls_broker.broker.port)
    relay = Relay(tls_broker.tls_port, delay_back_s=6)
    try:
        cfg = tls_config(
            tmp_path, relay.port, tls_broker.ca.ca_file, connect_timeout_s=30, keepalive_s=60
        )
        with running(cfg) as gw:
            ev = gw.store.record(Event(ALARM, {"n": 1}))
            sub.wait_for(lambda _m: ev.event_id in sub.event_ids(), timeout=40)
            assert gw.sync is not None and gw.sync.link.failures == 0
    finally:
        relay.close()
        sub.close()
