"""The connection: protocol versions, failover, backoff, and a broker that says no."""

from __future__ import annotations

import logging
import random
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway, build
from gateway.config import MqttSection
from gateway.events import Event, EventType, Lane, compact_json
from gateway.store import Store
from gateway.sync.mqtt import Message, MqttLink, backoff_delay
from gateway.sync.publisher import Publisher
from tests.support.broker import Mosquitto, free_port
from tests.support.contract import check_message
from tests.support.deadpeer import Silent, Unanswered
from tests.support.events import ALARM, RECORD, TELEMETRY, sighting
from tests.support.gateway import config, running, sync_alone
from tests.support.relay import Relay
from tests.support.subrefuser import SubscriptionRefuser
from tests.support.subscriber import Subscriber
from tests.support.wait import eventually


def test_backoff_grows_to_its_ceiling_with_jitter() -> None:
    rng = random.Random(5)
    delays = [backoff_delay(n, 1.0, 60.0, rng) for n in range(12)]
    for n, d in enumerate(delays):
        base = min(60.0, 2.0**n)
        assert base / 2 <= d <= base
    assert len({round(d, 6) for d in delays[8:]}) == 4, "jitter keeps peers out of lock-step"


# A site that waits long between attempts (at least 20 s after the first failure), but not
# while an alarm waits: then at most 0.2 s.
SLOW_BACKOFF = {"reconnect_min_s": 40.0, "reconnect_max_s": 60.0, "alarm_reconnect_max_s": 0.2}


def test_an_alarm_cuts_a_long_reconnect_wait_short(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    with running(config(tmp_path / "var", broker.port, mqtt=SLOW_BACKOFF)) as gw:
        assert gw.sync is not None
        link = gw.sync.link
        eventually(lambda: link.state == "backoff")
        gw.store.record(Event(TELEMETRY, {"n": 1}))
        broker.start()
        try:
            time.sleep(1.0)
            assert link.state == "backoff" and link.connects == 0, "telemetry waits its turn"
            gw.store.record(Event(ALARM, {"n": 2}))
            eventually(lambda: link.connects == 1, timeout=15)
            eventually(lambda: all(gw.store.usage[lane].count == 0 for lane in Lane))
        finally:
            broker.stop()


def test_while_an_alarm_waits_the_broker_is_tried_often(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    with running(config(tmp_path / "var", broker.port, mqtt=SLOW_BACKOFF)) as gw:
        assert gw.sync is not None
        link = gw.sync.link
        gw.store.record(Event(ALARM, {"n": 1}))
        eventually(lambda: link.failures >= 3)
        broker.start()
        try:
            eventually(lambda: gw.store.usage[Lane.P0].count == 0, timeout=15)
        finally:
            broker.stop()


# Keepalive alone would notice a dead path only after about 90 s.
LONG_KEEPALIVE = {"keepalive_s": 60, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}


def test_an_alarm_on_a_half_open_connection_goes_out_on_a_new_one(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sub = Subscriber(mosquitto.port)
    relay = Relay(mosquitto.port)
    try:
        mqtt = {**LONG_KEEPALIVE, "brokers": [f"mqtt://127.0.0.1:{relay.port}"]}
        with running(config(tmp_path / "var", None, mqtt={**mqtt, "alarm_ack_timeout_s": 1})) as gw:
            assert gw.sync is not None
            before = gw.store.record(Event(TELEMETRY, {"n": 1}))
            sub.wait_for(lambda _m: before.event_id in sub.event_ids())
            relay.freeze()
            alarm = gw.store.record(Event(ALARM, {"n": 2}))
            sub.wait_for(lambda _m: alarm.event_id in sub.event_ids(), timeout=15)
            health = gw.sync.health()
            assert health["uplink"]["alarm_timeouts"] == 1
            assert health["broker"]["disconnects"] == 1 and relay.accepted == 2
            assert [e["event_id"] for e in sub.events()].count(alarm.event_id) == 1
    finally:
        relay.close()
        sub.close()


def through(relay: Relay, **mqtt: Any) -> dict[str, Any]:
    """The [mqtt] of a gateway whose broker is behind the relay, a keepalive too long to
    notice anything in a test."""
    return {
        "keepalive_s": 30,
        "reconnect_min_s": 0.1,
        "brokers": [f"mqtt://127.0.0.1:{relay.port}"],
        **mqtt,
    }


def probing_after_a_break(gw: Gateway, relay: Relay) -> tuple[Publisher, MqttLink]:
    """A telemetry backlog draining through the relay when its path breaks: the connection
    after it sends one message (a probe) until its first PUBACK, and that one is in flight."""
    assert gw.sync is not None
    publisher, link = gw.sync.publisher, gw.sync.link
    eventually(lambda: link.connected)
    for i in range(2000):
        gw.store.submit(Event(TELEMETRY, sighting(i)))
    eventually(lambda: publisher.inflight > 0, every=0.001)
    connects = link.connects
    relay.reset()
    eventually(lambda: link.connects > connects and publisher.inflight > 0, every=0.001)
    return publisher, link


def test_an_alarm_is_not_held_behind_the_probe_a_new_connection_sends_first(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A connection broke with telemetry in flight, so the next sends one message until its
    first PUBACK; its path dies right after. The SOS recorded then waited unsent behind that
    telemetry, unseen by the alarm watchdog, until the keepalive ended the connection."""
    sub = Subscriber(mosquitto.port)
    relay = Relay(mosquitto.port, delay_back_s=0.5)
    try:
        mqtt = through(relay, reconnect_max_s=0.5, alarm_ack_timeout_s=3)
        with running(config(tmp_path / "var", None, mqtt=mqtt)) as gw:
            publisher, link = probing_after_a_break(gw, relay)
            relay.freeze()  # the probe's PUBACK, 0.5 s away, never comes
            alarm = gw.store.record(Event(ALARM, {"n": "sos"}))
            eventually(lambda: publisher.alarm_timeouts >= 1, timeout=20)
            sub.wait_for(lambda _m: alarm.event_id in sub.event_ids())
            assert link.health()["last_error"] != "Keep alive timeout"
    finally:
        relay.close()
        sub.close()


def test_a_broker_closing_over_an_alarm_sent_beside_a_probe_is_not_taken_for_the_probes(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection after a break probes with one telemetry message, and an alarm goes
    beside it. The broker closes over the alarm (AWS IoT, a topic not allowed): the probe,
    oldest unacknowledged at two ends in a row, was taken for the one refused, and
    telemetry held back as refused; only the alarm's type is."""
    fall = EventType("test.fall", Lane.P0)
    sub = Subscriber(mosquitto.port)
    relay = Relay(mosquitto.port, delay_back_s=0.5, cut_on=b"/event/test.fall")
    try:
        mqtt = through(relay, reconnect_max_s=30)
        with running(config(tmp_path / "var", None, mqtt=mqtt)) as gw:
            publisher, _link = probing_after_a_break(gw, relay)
            gw.store.record(Event(fall, {"n": "cut"}))
            eventually(lambda: publisher.rejected >= 1)
            later = gw.store.record(Event(ALARM, {"n": "later"}))
            sub.wait_for(lambda _m: later.event_id in sub.event_ids())
            refused = [r.getMessage() for r in caplog.records if "broker refused" in r.getMessage()]
            assert refused and all("P0 test.fall" in line for line in refused)
    finally:
        relay.close()
        sub.close()


def test_on_a_slow_link_the_alarm_timeout_backs_off_until_the_alarm_gets_through(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """PUBACKs take 1.5 s to come back: 0.5 s and 1 s are too short, 2 s is enough."""
    sub = Subscriber(mosquitto.port)
    relay = Relay(mosquitto.port, delay_back_s=1.5)
    try:
        mqtt = {**LONG_KEEPALIVE, "brokers": [f"mqtt://127.0.0.1:{relay.port}"]}
        with running(
            config(tmp_path / "var", None, mqtt={**mqtt, "alarm_ack_timeout_s": 0.5})
        ) as gw:
            assert gw.sync is not None
            eventually(lambda: gw.sync is not None and gw.sync.link.connected)
            alarm = gw.store.record(Event(ALARM, {"n": 1}))
            eventually(lambda: gw.store.usage[Lane.P0].count == 0, timeout=30)
            drops = gw.sync.publisher.alarm_timeouts
            assert drops in (2, 3), "0.5 s and 1 s too short; 2 s enough unless the host stalls"
            second = gw.store.record(Event(ALARM, {"n": 2}))
            eventually(lambda: gw.store.usage[Lane.P0].count == 0, timeout=10)
            assert gw.sync.publisher.alarm_timeouts == drops, (
                "a live slow link is not dropped again"
            )
            sub.wait_for(lambda _m: {alarm.event_id, second.event_id} <= sub.event_ids())
    finally:
        relay.close()
        sub.close()


def test_on_a_slow_link_that_carries_telemetry_an_alarm_is_given_the_time_it_needs(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """PUBACKs of the telemetry show the link takes 1.5 s: the 0.5 s timeout is not used."""
    relay = Relay(mosquitto.port, delay_back_s=1.5)
    try:
        mqtt = {**LONG_KEEPALIVE, "brokers": [f"mqtt://127.0.0.1:{relay.port}"]}
        cfg = config(tmp_path / "var", None, mqtt={**mqtt, "alarm_ack_timeout_s": 0.5})
        with running(cfg) as gw:
            assert gw.sync is not None
            gw.store.record(Event(TELEMETRY, {"n": 1}))
            eventually(lambda: gw.store.usage[Lane.P2].count == 0, timeout=15)
            gw.store.record(Event(ALARM, {"n": 2}))
            eventually(lambda: gw.store.usage[Lane.P0].count == 0, timeout=15)
            assert gw.sync.publisher.alarm_timeouts == 0 and gw.sync.link.disconnects == 0
    finally:
        relay.close()


def test_a_stop_on_a_path_that_takes_no_more_bytes_ends_within_the_service_stop_timeout(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The far end is gone and the send buffer full: the DISCONNECT cannot go out, and paho
    would hold the stop until keepalive gave up (up to a minute, past systemd's 30 s)."""
    relay = Relay(mosquitto.port)
    try:
        mqtt = {
            **LONG_KEEPALIVE,
            "brokers": [f"mqtt://127.0.0.1:{relay.port}"],
            "inflight_window": 1000,
            "inflight_max_bytes": 64_000_000,
            "batch_max_bytes": 1_000_000,
        }
        gw = build(config(tmp_path / "var", None, mqtt=mqtt), password=None)
        gw.start()
        try:
            assert gw.sync is not None
            link = gw.sync.link
            eventually(lambda: link.connected)
            relay.stall()
            filler = "x" * 4000  # 12 MB in all: more than the socket buffers hold
            for n in range(3000):
                gw.store.submit(Event(TELEMETRY, {"n": n, "filler": filler}))
            eventually(lambda: gw.sync is not None and gw.sync.publisher.events_sent > 3000)
        finally:
            started = time.monotonic()
            stopper = threading.Thread(target=gw.stop, daemon=True)
            stopper.start()
            stopper.join(60)
        assert not stopper.is_alive(), "stop() did not return"
        assert time.monotonic() - started < 15, "the service manager would have killed it"
    finally:
        relay.close()


def test_mqtt_3_1_1_delivers_with_a_last_will(tmp_path: Path, mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port)
    try:
        cfg = config(tmp_path / "var", mosquitto.port, mqtt={"protocol": "3.1.1"})
        with running(cfg) as gw:
            ev = gw.store.record(Event(ALARM, {"n": 1}))
            sub.wait_for(lambda _m: ev.event_id in sub.event_ids())
        sub.wait_for(lambda _m: sub.of_topic("/status")[-1].json()["state"] == "offline")
    finally:
        sub.close()


def test_fails_over_to_the_next_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    dead = free_port()
    sub = Subscriber(mosquitto.port)
    try:
        cfg = config(
            tmp_path / "var",
            None,
            mqtt={"brokers": [f"mqtt://127.0.0.1:{dead}", mosquitto.url]},
        )
        with running(cfg) as gw:
            ev = gw.store.record(Event(ALARM, {"n": 1}))
            sub.wait_for(lambda _m: ev.event_id in sub.event_ids())
            assert gw.sync is not None
            health = gw.sync.link.health()
            assert health["broker"] == mosquitto.url and health["failures"] >= 1
    finally:
        sub.close()


def acl_broker(tmp_path: Path, allowed: list[str]) -> Mosquitto:
    """A broker where the gateway may publish only to its status, health and the event types
    given; the platform user reads everything."""
    base = "eldercare/site-test/gw-test"
    acl = tmp_path / "acl"
    acl.write_text(
        "user gw\n"
        + "".join(f"topic write {base}/{t}\n" for t in ["status", "health", *allowed])
        + f"topic read {base}/request/#\n"
        + "user platform\ntopic read #\n"
    )
    passwd = tmp_path / "passwd"
    passwd.write_text("gw:secret-gw\nplatform:secret-pl\n")
    broker = Mosquitto(tmp_path, port=free_port())
    broker.extra_conf = (
        f"listener {broker.port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {passwd}\nacl_file {acl}\n"
    )
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True)
    broker.start()
    return broker


def test_a_broker_that_refuses_a_topic_keeps_those_events_pending(tmp_path: Path) -> None:
    """PUBACK with a failure reason (here 0x87, not authorised) is not a delivery."""
    broker = acl_broker(tmp_path, ["event/test.alarm"])
    try:
        cfg = config(
            tmp_path / "var",
            broker.port,
            mqtt={"username": "gw", "password": "secret-gw", "reconnect_max_s": 0.2},
        )
        with running(cfg) as gw:
            gw.store.record(Event(TELEMETRY, {"n": "refused"}))
            alarm = gw.store.record(Event(ALARM, {"n": "allowed"}))
            assert gw.sync is not None
            publisher = gw.sync.publisher
            eventually(lambda: publisher.rejected >= 2)
            eventually(lambda: gw.store.usage[Lane.P0].count == 0)
            assert gw.store.usage[Lane.P2].count >= 1, "a refused event was dropped"
            assert publisher.events_acked >= 1 and alarm.seq > 0
    finally:
        broker.stop()


def test_a_refused_alarm_type_does_not_hold_up_the_alarms_records_and_sightings_behind_it(
    tmp_path: Path,
) -> None:
    """The broker refuses one alarm type, and may close the connection after it (mosquitto
    does): that alarm stays pending and is tried again later; the other alarms, the records
    and the telemetry behind it reach the platform."""
    fall = EventType("test.fall", Lane.P0)
    allowed = ["event/test.alarm", "event/test.record", "event/test.telemetry"]
    broker = acl_broker(tmp_path, allowed)
    sub = Subscriber(broker.port, login=("platform", "secret-pl"))
    try:
        cfg = config(
            tmp_path / "var", broker.port, mqtt={"username": "gw", "password": "secret-gw"}
        )
        with running(cfg) as gw:
            gw.store.record(Event(fall, {"n": "refused"}))
            sent = [gw.store.record(Event(t, {"n": t.name})) for t in (ALARM, RECORD, TELEMETRY)]
            sub.wait_for(lambda _m: {e.event_id for e in sent} <= sub.event_ids())
            assert gw.sync is not None and gw.sync.publisher.rejected >= 1
            # the refused alarm stays (0 would be a loss), the other one's deletion follows
            eventually(lambda: gw.store.usage[Lane.P0].count == 1)
    finally:
        sub.close()
        broker.stop()


def test_a_refused_alarm_type_is_tried_again_within_the_alarm_reconnect_bound(
    tmp_path: Path,
) -> None:
    """A path that flaps twice while an SOS waits for its PUBACK looks like a broker closing
    the connection over it, and the type is held back like a refused one: held for up to
    reconnect_max_s, a new SOS on a healthy link waited a minute. It waits as an alarm waits
    for a reconnect, alarm_reconnect_max_s at most (each try here is refused: 0x87)."""
    broker = acl_broker(tmp_path, ["event/gateway.started", "event/gateway.stopped"])
    try:
        mqtt = {
            "username": "gw",
            "password": "secret-gw",
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 60,
            "alarm_reconnect_max_s": 0.3,
        }
        with running(config(tmp_path / "var", broker.port, mqtt=mqtt)) as gw:
            assert gw.sync is not None
            publisher = gw.sync.publisher
            gw.store.record(Event(ALARM, {"n": "refused"}))
            # held 0.2, 0.3, 0.3 ... s: ten tries in seconds; held up to a minute, ten
            # tries took 0.2 + 0.4 + ... + 51.2 s
            eventually(lambda: publisher.rejected >= 10, timeout=20)
            assert gw.store.usage[Lane.P0].count == 1
    finally:
        broker.stop()


def test_a_broker_that_closes_the_connection_over_an_alarm_type_without_a_puback(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """AWS IoT Core closes the connection over a message to a topic the gateway may not use,
    and says nothing: the message sent first after every reconnect would end every
    connection. After it has ended two in a row, its type is held back like a refused one; the
    other alarms, the records and the telemetry go on, and it stays pending. Each later try
    comes after the rest and costs one connection, not two."""
    fall = EventType("test.fall", Lane.P0)
    relay = Relay(mosquitto.port, cut_on=b"/event/test.fall")
    sub = Subscriber(mosquitto.port)
    try:
        mqtt = {
            "brokers": [f"mqtt://127.0.0.1:{relay.port}"],
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 30,
        }
        with running(config(tmp_path / "var", None, mqtt=mqtt)) as gw:
            assert gw.sync is not None
            publisher = gw.sync.publisher
            gw.store.record(Event(fall, {"n": "cut"}))
            sent = [gw.store.record(Event(t, {"n": t.name})) for t in (ALARM, RECORD, TELEMETRY)]
            sub.wait_for(lambda _m: {e.event_id for e in sent} <= sub.event_ids())
            assert publisher.rejected >= 1
            eventually(lambda: gw.store.usage[Lane.P0].count == 1)
            # tried again 0.2 s, 0.4 s, 0.8 s, 1.6 s into the connections after: one connection
            # each. At first, the connection that named another message whose PUBACK it lost,
            # and two that named it; and one more if paho, seeing the connection end as the
            # message left, said it was not sent (it is then not taken for in flight)
            eventually(lambda: publisher.rejected >= 4, timeout=15)
            eventually(lambda: relay.cuts <= publisher.rejected + 3)
            later = gw.store.record(Event(ALARM, {"n": "later"}))
            sub.wait_for(lambda _m: later.event_id in sub.event_ids())
    finally:
        sub.close()
        relay.close()


def test_a_refused_request_subscription_is_told_in_the_log_and_health(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that refuses the gateway its request topic (SUBACK 0x80) keeps the connection:
    events still go out, but the platform's requests would vanish without a word."""
    broker = SubscriptionRefuser()
    try:
        cfg = config(tmp_path / "var", broker.port, mqtt={"protocol": "3.1.1"})
        with sync_alone(cfg) as (store, sync):
            store.record(Event(ALARM, {"n": 1}))
            eventually(lambda: sync.publisher.events_acked == 1)
            refused = [sync.topics.requests, sync.topics.status]
            eventually(lambda: sync.link.health()["subscriptions_refused"] == refused)
            assert not check_message(sync.topics.health, compact_json(sync.health_message()))
        assert f"refused the subscription to {sync.topics.requests}" in caplog.text
    finally:
        broker.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_refused_password_stays_the_reason_while_waiting(tmp_path: Path, protocol: str) -> None:
    """The broker closing the connection after its refusal does not replace the reason."""
    passwd = tmp_path / "passwd"
    passwd.write_text("gw:secret-gw\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True)
    broker = Mosquitto(tmp_path, port=free_port())
    broker.extra_conf = (
        f"listener {broker.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
    )
    broker.start()
    try:
        mqtt = {"username": "gw", "password": "wrong", "protocol": protocol}
        with running(config(tmp_path / "var", broker.port, mqtt=mqtt)) as gw:
            assert gw.sync is not None
            link = gw.sync.link
            eventually(lambda: link.failures >= 2 and link.state == "backoff")
            assert link.health()["last_error"] == "Not authorized"
    finally:
        broker.stop()


class Listener:
    """Records the connections the link reports."""

    def __init__(self) -> None:
        self.ups: list[int] = []
        self.downs: list[int] = []

    def link_up(self, generation: int) -> None:
        self.ups.append(generation)

    def link_down(self, generation: int) -> None:
        self.downs.append(generation)

    def puback(self, generation: int, mid: int, accepted: bool, reason: str) -> None:
        pass

    def received(self, topic: str, payload: bytes, retained: bool = False) -> None:
        pass


def quick_link(port: int, listener: Listener, will: Callable[[], Message]) -> MqttLink:
    cfg = MqttSection(
        brokers=[f"mqtt://127.0.0.1:{port}"],
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        connect_timeout_s=3,
        session_expiry_s=0,
    )
    return MqttLink(cfg, "gw-test", listener, password=None, will=will, subscriptions=list)


WILL = Message("eldercare/site-test/gw-test/status", b"{}", retain=True)


def test_a_connect_attempt_that_fails_unforeseen_is_retried(mosquitto: Mosquitto) -> None:
    """Whatever a connect attempt raises (paho packing a CONNECT, building the will) is a
    failed attempt: counted, backed off and retried, never the end of the link thread."""
    attempts: list[int] = []

    def will() -> Message:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("cannot build the will")
        return WILL

    listener = Listener()
    link = quick_link(mosquitto.port, listener, will)
    link.start()
    try:
        eventually(lambda: listener.ups == [2])
        assert link.failures == 1 and link.healthy()
        assert link.last_error == "RuntimeError: cannot build the will", "kept after reconnecting"
    finally:
        link.stop()


def test_stop_while_a_connection_is_being_opened_returns(mosquitto: Mosquitto) -> None:
    """stop() finds no connection to end yet; the one being opened must not outlive it."""
    listener = Listener()

    def will() -> Message:  # runs on the link thread, while it opens its first connection
        if stopper.ident is None:
            stopper.start()
            link._down.wait(10)  # stop() has said "down" before the connection exists
        return WILL

    link = quick_link(mosquitto.port, listener, will)
    stopper = threading.Thread(target=link.stop, daemon=True)
    link.start()
    eventually(lambda: stopper.ident is not None)  # the link thread started it, in will()
    stopper.join(30)
    hung = stopper.is_alive()
    if hung:
        link._down.set()  # end a link that missed the stop: fail the test, do not hang it
    assert not hung, "stop() did not return"
    assert link.state == "stopped" and link.connects == 0 and listener.ups == []


def stops_at_once(link: MqttLink, listener: Listener, waited_for: str) -> None:
    """stop() returns within 30 s, far below the link's timeout of 120 s, and no connection
    was made."""
    stopper = threading.Thread(target=link.stop, daemon=True)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive(), f"stop() waited for {waited_for}"
    assert link.state == "stopped" and link.connects == 0 and listener.ups == []


def test_stop_while_waiting_for_a_silent_broker_returns_at_once() -> None:
    """A broker that takes the connection and never answers (overloaded, or a proxy that
    has lost its upstream): stop() must not sit out the CONNACK timeout."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        accepted: list[socket.socket] = []
        server.settimeout(10)
        listener = Listener()
        link = quick_link(server.getsockname()[1], listener, lambda: WILL)
        link.cfg = link.cfg.model_copy(update={"connect_timeout_s": 120})
        link.start()
        try:
            accepted.append(server.accept()[0])
            eventually(lambda: link.state == "connecting")
            stops_at_once(link, listener, "the CONNACK timeout")
        finally:
            for conn in accepted:
                conn.close()


@pytest.mark.parametrize("scheme", ["mqtt", "mqtts"])
def test_stop_does_not_wait_for_a_connect_or_handshake_that_gets_no_answer(scheme: str) -> None:
    """A network outage: the broker's host does not answer the TCP connect (mqtt), or takes the
    connection and never answers the TLS handshake (mqtts). Neither can be woken, and with an
    installer's long connect timeout (a slow mobile link) the stop would run past systemd's
    30 s. A connection that gets through after the stop is closed, not left to the broker."""
    peer = Unanswered() if scheme == "mqtt" else Silent()
    cfg = MqttSection(
        brokers=[f"{scheme}://127.0.0.1:{peer.port}"], connect_timeout_s=120, session_expiry_s=0
    )
    listener = Listener()
    link = MqttLink(cfg, "gw-test", listener, password=None, will=lambda: WILL, subscriptions=list)
    link.start()
    try:
        if isinstance(peer, Silent):
            assert peer.accepted.wait(10), "no connection attempt"
        eventually(lambda: link.state == "connecting")
        stops_at_once(link, listener, "the connect")
        if isinstance(peer, Unanswered):
            with peer.answer(timeout=20) as late:
                late.settimeout(10)
                while late.recv(4096):  # its CONNECT, then the end of the connection
                    pass
    finally:
        peer.close()


def test_a_failing_health_report_on_connect_leaves_the_link_working(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """E.g. a service whose health() raises, or a model version that cannot be read: events
    still flow, and the link still reconnects after the broker comes back."""

    def broken() -> dict[str, str]:
        raise RuntimeError("health bug")

    loaded = config(tmp_path / "var", mosquitto.port)
    with sync_alone(loaded, services_health=broken, model_versions=broken) as (store, sync):
        store.record(Event(ALARM, {"n": 1}))
        eventually(lambda: store.usage[Lane.P0].count == 0)
        assert sync.link.healthy() and sync.link.health()["listener_errors"] == 1
        mosquitto.restart()
        eventually(lambda: sync.link.connects == 2)
        store.record(Event(ALARM, {"n": 2}))
        eventually(lambda: store.usage[Lane.P0].count == 0)


def _fitting_and_too_large(
    store: Store, n: int, too_large: bool = True
) -> tuple[set[str], set[str]]:
    """Telemetry that fits a 4,096-byte packet only in small batches, and then (unless not
    ``too_large``) two events (P1, P2) too large for it, each followed by one that fits, and
    an alarm: the ids that must be delivered, and those that cannot be."""
    sent = [store.submit(Event(TELEMETRY, {"n": i, "pad": "x" * 100})) for i in range(n)]
    # multi-byte text: three bytes a character, so batches must be sized in bytes
    sent += [store.submit(Event(TELEMETRY, {"n": i, "text": "长者" * 300})) for i in range(6)]
    huge = (
        [
            store.record(Event(TELEMETRY, {"n": "huge", "pad": "x" * 5000})),
            store.record(Event(RECORD, {"n": "huge", "text": "长者" * 1000})),
        ]
        if too_large
        else []
    )
    sent += [store.submit(Event(TELEMETRY, {"n": "after"}))]
    sent += [store.submit(Event(RECORD, {"n": "after"}))]
    sent += [store.submit(Event(ALARM, {"n": "sos"}))]
    return {f.result().event_id for f in sent}, {e.event_id for e in huge}


def test_connections_that_end_at_once_without_delivering_anything_back_off(
    tmp_path: Path,
) -> None:
    """A record above a limit the broker does not announce ends every connection it is sent
    on. Reconnecting at once each time, the gateway made six connections a second for good."""
    broker = Mosquitto(tmp_path, port=free_port())
    broker.extra_conf = f"listener {broker.port} 127.0.0.1\nallow_anonymous true\n"
    broker.extra_conf += "max_packet_size 4096\n"
    broker.start()
    mqtt = {"protocol": "3.1.1", "reconnect_min_s": 0.2, "reconnect_max_s": 4.0}
    try:
        with running(config(tmp_path / "var", broker.port, mqtt=mqtt)) as gw:
            assert gw.sync is not None
            link = gw.sync.link
            eventually(lambda: link.connects == 1)
            gw.store.record(Event(RECORD, {"text": "x" * 6000}))
            eventually(lambda: link.disconnects == 1)
            time.sleep(6)
            # the delays double from 0.1-0.2 s: at most 7 more connections fit in 6 s
            assert link.connects <= 9, link.connects
    finally:
        broker.stop()


def test_a_record_above_a_limit_the_broker_does_not_announce_holds_up_nothing_behind_it(
    tmp_path: Path,
) -> None:
    """An MQTT 3.1.1 mosquitto closes the connection over a packet above its
    ``max_packet_size`` and cannot say why: sent first after every reconnect, the record
    kept every record and alarm behind it from the platform. It is held back alone (the
    smaller records of its type go on) and stays pending."""
    broker = Mosquitto(tmp_path, port=free_port())
    broker.extra_conf = f"listener {broker.port} 127.0.0.1\nallow_anonymous true\n"
    broker.extra_conf += "max_packet_size 4096\n"
    broker.start()
    sub = Subscriber(broker.port)
    mqtt = {"protocol": "3.1.1", "reconnect_min_s": 0.2, "reconnect_max_s": 4.0}
    try:
        with running(config(tmp_path / "var", broker.port, mqtt=mqtt)) as gw:
            assert gw.sync is not None
            eventually(lambda: gw.sync is not None and gw.sync.link.connects == 1)
            gw.store.record(Event(RECORD, {"text": "x" * 6000}))
            after = [gw.store.record(Event(t, {"n": "after"})) for t in (RECORD, ALARM)]
            sub.wait_for(lambda _m: {e.event_id for e in after} <= sub.event_ids())
            eventually(lambda: gw.store.usage[Lane.P1].count == 1)
    finally:
        sub.close()
        broker.stop()


def test_an_idle_gateway_whose_connections_break_at_once_reconnects_without_delay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing waits to be delivered, so a short connection cannot show progress: that is
    no reason to wait longer and longer, and have the next alarm wait with it."""
    caplog.set_level(logging.INFO, logger="gateway.sync.mqtt")
    broker = Mosquitto(tmp_path, port=free_port()).start()
    relay = Relay(broker.port)
    try:
        mqtt = {
            "brokers": [f"mqtt://127.0.0.1:{relay.port}"],
            "reconnect_min_s": 1.0,
            "reconnect_max_s": 60.0,
        }
        with running(config(tmp_path / "var", None, mqtt=mqtt)) as gw:
            assert gw.sync is not None
            link = gw.sync.link
            eventually(
                lambda: link.connected and gw.sync is not None and gw.sync.publisher.events_acked
            )
            for n in range(1, 5):
                eventually(lambda: link.connected)
                relay.reset()
                eventually(lambda n=n: link.disconnects == n)
            eventually(lambda: link.connected)
    finally:
        relay.close()
        broker.stop()
    waits = [re.search(r"next attempt in ([\d.]+) s", r.getMessage()) for r in caplog.records]
    delays = [float(found[1]) for found in waits if found]
    assert len(delays) >= 4 and max(delays) <= 1.0, delays


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_message_above_the_brokers_packet_limit_stays_in_the_outbox_and_holds_nothing_up(
    tmp_path: Path, protocol: str
) -> None:
    """A broker closes the connection on a packet above its limit; sent again after every
    reconnect, one such message would cut the gateway off for good. MQTT 5 brokers announce
    the limit; for MQTT 3.1.1 the installer states it."""
    broker = Mosquitto(tmp_path, port=free_port())
    broker.extra_conf = (
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\nmax_packet_size 4096\n"
    )
    broker.start()
    sub = Subscriber(broker.port)
    mqtt: dict[str, object] = {"protocol": protocol}
    if protocol == "3.1.1":
        mqtt["max_packet_bytes"] = 4096
    try:
        with running(config(tmp_path / "var", broker.port, mqtt=mqtt)) as gw:
            ids, huge = _fitting_and_too_large(gw.store, 50)
            sub.wait_for(lambda _m: ids <= set(sub.event_ids()))
            assert gw.sync is not None
            link = gw.sync.link
            assert link.connects == 1 and link.disconnects == 0
            assert link.packet_limit == 4096 and link.too_large >= 2
            assert not huge & set(sub.event_ids())
            usage = gw.store.usage
            eventually(lambda: usage[Lane.P1].count == 1 and usage[Lane.P2].count == 1)
            assert all(len(m.payload) <= 4096 for m in sub.messages)
    finally:
        sub.close()
        broker.stop()


@pytest.mark.parametrize(
    ("protocol", "limit"),
    [("5", "message_size_limit 4096"), ("3.1.1", "max_packet_size 4096")],
)
def test_batches_are_made_smaller_for_a_broker_that_ends_connections_over_them(
    tmp_path: Path, protocol: str, limit: str
) -> None:
    """mosquitto refuses a message above its ``message_size_limit`` with a PUBACK code paho
    cannot read, so the connection ends; an MQTT 3.1.1 broker just closes it. Nobody told the
    gateway the limit: the batch sent first after every reconnect would end every connection,
    and no telemetry would ever be delivered. Nothing else is limited by the guess."""
    broker = Mosquitto(tmp_path, port=free_port())
    broker.extra_conf = f"listener {broker.port} 127.0.0.1\nallow_anonymous true\n{limit}\n"
    broker.start()
    sub = Subscriber(broker.port)
    mqtt = {"protocol": protocol, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    try:
        with running(config(tmp_path / "var", broker.port, mqtt=mqtt)) as gw:
            assert gw.sync is not None
            link = gw.sync.link
            eventually(lambda: link.connects == 1)
            ids, _ = _fitting_and_too_large(gw.store, 120, too_large=False)
            sub.wait_for(lambda _m: ids <= set(sub.event_ids()), timeout=60)
            cap = link.health()["batch_cap"]
            assert cap is not None and cap <= 4096 and link.packet_limit is None
            settled = link.disconnects
            assert settled <= 8, "two connections for each cut of the batches, two cuts"
            later = gw.store.record(Event(TELEMETRY, {"n": "later"}))
            sub.wait_for(lambda _m: later.event_id in sub.event_ids())
            assert link.disconnects == settled and link.state == "connected"
            assert all(len(m.payload) <= 4096 for m in sub.messages)
    finally:
        sub.close()
        broker.stop()
