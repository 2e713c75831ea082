"""The MQTT connection: the only module that imports paho.

One paho client per connection. When a connection ends, its client is thrown away with
everything paho queued in it; the outbox, not paho, decides what is sent again. That keeps
"delivered" meaning one thing only: the broker's PUBACK for that message, on this connection.
Callbacks never raise and only hand work over; each carries the connection's generation so a
late PUBACK from a dead connection can never acknowledge a message of the next one.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.clock import Clock, SystemClock
from gateway.config import PRIVATE_FILE, MqttSection, read_password, readable_by_all
from gateway.configfile import ConfigFileError, Issue
from gateway.events import iso_utc
from gateway.lifecycle import Opener
from gateway.logs import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname or "", parts.port or (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class Message(NamedTuple):
    """(A NamedTuple: one is made for every message sent.)"""

    topic: str
    payload: bytes
    retain: bool = False


DISCONNECT_WAIT_S = 2.0  # at stop, for the DISCONNECT to leave before the socket is shut
PUBLISH_OVERHEAD = 13  # fixed header, topic length, packet id, empty MQTT 5 properties
BATCH_CAP_MIN = 4096  # bytes: below it, a false guess would cost more than it could save
ENDS_KEPT = 8  # connections whose end is remembered for the publisher to judge
STABLE_S = 10.0  # a connection that lasted this long starts the reconnect backoff afresh


class MessageTooLarge(Exception):
    """The message is above the broker's packet limit. Sent anyway, it would only get the
    connection closed, and then again after every reconnect."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"a payload of {size} bytes, over the {limit} the broker's packet limit leaves"
        )


Done = Callable[[], None]


def nothing_to_ack() -> None:
    """A message that needs no acknowledgement (QoS 0)."""


class Handover(NamedTuple):
    """How the broker handed a message over. ``done``: to be called once it is taken care of
    (its answer recorded, or it is refused), now or later, on any thread; the broker is sent
    its PUBACK then. ``resent``: the broker sends it again (DUP), not having had its PUBACK."""

    retained: bool = False
    resent: bool = False
    done: Done = nothing_to_ack


LIVE = Handover()  # a message as most come: not retained, first sent, nothing to acknowledge


class _Receipt:
    __slots__ = ("done", "mid", "qos")

    def __init__(self, mid: int, qos: int) -> None:
        self.mid, self.qos, self.done = mid, qos, False


class Receipts:
    """The QoS 1 messages one connection handed over, acknowledged (PUBACK) once each is
    done and in the order they came, as MQTT requires. Acknowledged on arrival, a request
    the gateway was killed holding (a power cut, the OOM killer) was lost: the broker had its
    PUBACK. Now it hands it over again at the next connection (the persistent session), and
    one answered before is answered from its record. Done after its connection ended, the
    acknowledgement goes nowhere: the broker hands it over again on the next."""

    def __init__(self, client: paho.Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._open: deque[_Receipt] = deque()

    def take(self, mid: int, qos: int) -> Done | None:
        """On paho's thread, as each message arrives: what to call once it is done. None for
        the broker's resend of one this connection still holds (EMQX resends an unacknowledged
        message after its ``retry_interval``, with the same packet id): it is not taken again,
        or its second PUBACK could acknowledge a later message given the freed id."""
        if qos == 0:
            return nothing_to_ack
        receipt = _Receipt(mid, qos)
        with self._lock:
            if any(r.mid == mid for r in self._open):
                return None
            self._open.append(receipt)

        def done() -> None:
            with self._lock:
                if receipt.done:
                    return
                receipt.done = True
                while self._open and self._open[0].done:
                    first = self._open.popleft()
                    try:
                        self._client.ack(first.mid, first.qos)
                    except (OSError, ValueError) as exc:  # its connection is gone
                        log.debug("mqtt: PUBACK %d not sent: %s", first.mid, exc)

        return done


class LinkListener(Protocol):
    """What the link reports. Called from paho's thread or the link's: must be quick."""

    def link_up(self, generation: int) -> None: ...

    def link_down(self, generation: int) -> None: ...

    def puback(self, generation: int, mid: int, accepted: bool, reason: str) -> None: ...

    def received(self, topic: str, payload: bytes, how: Handover = LIVE) -> None: ...


def _properties(packet_type: int) -> Properties:
    """paho's Properties constructor is untyped; keep the one exemption here."""
    props: Properties = Properties(packet_type)  # type: ignore[no-untyped-call]
    return props


class _SocketErrors(logging.Logger):
    """paho tells why a socket failed (a TLS alert, a reset) only to its logger, and then
    reports "Unspecified error": keep the text. Below ERROR nothing is even formatted, so
    paho's per-packet debug lines cost nothing."""

    def __init__(self) -> None:
        super().__init__("paho", logging.ERROR)
        self.last: str | None = None

    def log(self, level: int, msg: object, *args: object, **_kwargs: Any) -> None:
        if level < logging.ERROR:
            return
        try:  # on paho's network thread: nothing may be raised into it
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            return
        if "on socket: " in text:
            self.last = text.partition("on socket: ")[2]

    def read_alert(self, sock: object) -> None:
        """Sending may fail first ("EOF occurred in violation of protocol") while the broker's
        TLS alert, the reason, still waits unread: read it before the socket is closed."""
        if not isinstance(sock, ssl.SSLSocket):
            return
        try:
            sock.setblocking(False)
            sock.recv(1)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLError as exc:
            self.last = str(exc)
        except OSError:
            pass


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: never zero, never in lock-step with peers."""
    base = min(high, low * 2.0 ** min(attempt, 30))
    return base / 2 + rng.uniform(0, base / 2)


class _ClosedOnFailedHandshake(ssl.SSLSocket):
    """paho drops the socket of a handshake that failed (a certificate refused, a listener that
    is not TLS) without closing it: it stayed open until the garbage collector found it."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(cfg: MqttSection) -> ssl.SSLContext:
    """Verify the broker's certificate and host name; no fallback to plaintext or no-verify.
    A CA or client key that cannot be used is a configuration error, like a bad key: the
    gateway stops (exit 2) instead of retrying a file that will not mend itself. Both are
    tried, so that one error names every file to fix."""
    tls = cfg.tls
    issues: list[Issue] = []
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        issues.append(Issue(str(tls.ca_file), None, "mqtt.tls.ca_file", f"cannot load CA: {exc}"))
        ctx = ssl.create_default_context()  # only for the client key's check below
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.sslsocket_class = _ClosedOnFailedHandshake
    if tls.cert_file and tls.key_file:
        try:
            if readable_by_all(tls.key_file):
                issues.append(Issue(str(tls.key_file), None, "mqtt.tls.key_file", PRIVATE_FILE))
            else:
                ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            issues.append(
                Issue(
                    f"{tls.cert_file}, {tls.key_file}",
                    None,
                    "mqtt.tls.cert_file/key_file",
                    f"cannot load client certificate: {exc}",
                )
            )
    if issues:
        raise ConfigFileError(issues)
    return ctx


def check_secret_files(cfg: MqttSection) -> str | None:
    """The password file and, where a broker is ``mqtts://``, the CA and client key: read
    before anything starts (and by ``validate-config``), each problem a configuration error
    naming its key, all of them at once. Returns the password."""
    issues: list[Issue] = []
    password = None
    try:
        password = read_password(cfg)
    except ConfigFileError as exc:
        issues += exc.issues
    if any(Endpoint.parse(url).tls for url in cfg.brokers):
        try:
            tls_context(cfg)
        except ConfigFileError as exc:
            issues += exc.issues
    if issues:
        raise ConfigFileError(issues)
    return password


class MqttLink:
    name = "mqtt"

    def __init__(
        self,
        cfg: MqttSection,
        client_id: str,
        listener: LinkListener,
        *,
        password: str | None,
        will: Callable[[], Message],
        subscriptions: Callable[[], list[str]],
        alarm_waiting: Callable[[], bool] = lambda: False,
        delivered: Callable[[], int] = lambda: 0,
        unacknowledged: Callable[[], int] = lambda: 0,
        max_incoming_bytes: int | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.cfg = cfg
        self._max_incoming = max_incoming_bytes
        self.client_id = client_id
        self.endpoints = [Endpoint.parse(u) for u in cfg.brokers]
        self._listener = listener
        self._password = password
        self._will = will
        self._subscriptions = subscriptions
        self._alarm_waiting = alarm_waiting
        self._delivered = delivered
        self._unacknowledged = unacknowledged
        self._rng = rng or random.Random()
        self._clock = clock or SystemClock()
        self._stop = threading.Event()
        self._opener = Opener(self._stop)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._client: paho.Client | None = None
        self._generation = 0
        self._settled = threading.Event()  # CONNACK, connection ended before it, or stop()
        self._connacked = False
        self._down = threading.Event()
        self._refused: str | None = None
        self._lost: str | None = None
        self._dropped: str | None = None
        self._timed_out = False  # paho's keepalive: the path went quiet, not the broker's doing
        self._packet_limit = cfg.max_packet_bytes
        # per broker: a cap on batches that ended its connections (see ended_over)
        self._batch_caps: dict[Endpoint, int] = {}
        self._ends: dict[int, tuple[Endpoint, bool]] = {}  # generation -> broker, its doing
        self._strike: tuple[Endpoint, object] | None = None
        self._subscribed: list[str] = []  # the topics of this connection's SUBSCRIBE, in order
        self.subscriptions_refused: list[str] = []
        self.state = "stopped"
        self.endpoint: Endpoint | None = None
        self.connects = 0
        self.disconnects = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.listener_errors = 0
        self.resent_held = 0  # the broker's resends of requests still held on one connection
        self.too_large = 0
        self._rate_log = RateLimitedLog(log, 30)
        self._tls: ssl.SSLContext | None = None

    # ---- service -----------------------------------------------------------------------------

    def start(self) -> None:
        if not self.endpoints:
            self.state = "no broker configured"
            log.warning("no MQTT broker configured: events are kept in the outbox")
            return
        if any(e.tls for e in self.endpoints):
            self._tls = tls_context(self.cfg)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mqtt-link")
        self._thread.start()

    def stop(self, farewell: Message | None = None) -> None:
        """Say goodbye (retained offline status) if connected, then disconnect cleanly."""
        self._stop.set()
        self._wake.set()
        self._settled.set()  # a connection still waiting for its CONNACK gives up now
        self._opener.abandon()  # a lookup, TCP connect or TLS handshake still under way
        with self._lock:
            client = self._client
        if client is not None and self.connected and farewell is not None:
            info = client.publish(farewell.topic, farewell.payload, qos=1, retain=farewell.retain)
            with contextlib.suppress(ValueError, RuntimeError):
                info.wait_for_publish(timeout=2)
        if client is not None:
            client.disconnect()
            if not self._down.wait(DISCONNECT_WAIT_S):
                # the DISCONNECT sits behind a full send buffer (the far end is gone): paho
                # would keep its thread, and the stop, until keepalive gave up
                _shut_down(client)
        self._down.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.state = "stopped"

    def healthy(self) -> bool:
        return not self.endpoints or (self._thread is not None and self._thread.is_alive())

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "broker": str(self.endpoint) if self.endpoint else None,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "packet_limit": self.packet_limit,
            "batch_cap": self._batch_caps.get(self.endpoint) if self.endpoint else None,
            "too_large": self.too_large,
            "listener_errors": self.listener_errors,
            "resent_held": self.resent_held,
            "subscriptions_refused": list(self.subscriptions_refused),
        }

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def alarm_recorded(self) -> None:
        """A new alarm waits: a backoff longer than the alarm ceiling is cut short."""
        if self.state == "backoff":
            self._wake.set()

    def drop(self, generation: int, reason: str) -> None:
        """End a connection that looks open but carries nothing (half-open). Shutting the socket
        down wakes paho's loop at once; a DISCONNECT packet could sit behind a full send buffer."""
        with self._lock:
            client = self._client
            if client is None or generation != self._generation:
                return
            self._dropped = reason
        _shut_down(client)
        self._down.set()

    # ---- sending -----------------------------------------------------------------------------

    @property
    def packet_limit(self) -> int | None:
        """The connection's packet size limit: the configured one, the one the broker announced
        in its CONNACK (MQTT 5), whichever is smaller."""
        return self._packet_limit

    def _announce(self, announced: int | None) -> None:
        """Worked out once per connection: every message sent is checked against it."""
        limits = [x for x in (self.cfg.max_packet_bytes, announced) if x]
        self._packet_limit = min(limits) if limits else None

    def ended_over(
        self, generation: int, message: object | None, topic: str, payload_bytes: int, batch: bool
    ) -> bool:
        """The publisher's word on a connection that ended: ``message`` names the oldest
        message still without its PUBACK, if it was sent shortly before the end. Named at
        two ends in a row that the broker caused (not the gateway's own drops, keepalive
        timeouts or a stop), with nothing between, it is one the broker will not take and
        closes the connection over rather than refusing it in a PUBACK: a packet limit it
        does not announce (mosquitto's ``message_size_limit``, whose refusal paho cannot
        read), an MQTT 3.1.1 broker, AWS IoT Core over a topic the gateway may not use. Sent
        first after every reconnect, it would end every connection for good.

        A batch is capped here: batches to that broker are kept under a quarter of its size,
        not below ``BATCH_CAP_MIN``, until the gateway restarts; nothing else (health,
        answers) is limited by it. True when capping cannot help (a single message, a batch
        already small): the publisher holds the message's event type back, as refused, and
        when it is sent again and the broker ends the connection over it once more, that is
        enough."""
        with self._lock:
            ended = self._ends.get(generation)
            if ended is None or not ended[1]:
                self._strike = None  # two in a row means with nothing between
                return False
            endpoint = ended[0]
            strike = None if message is None else (endpoint, message)
            if strike is None or strike != self._strike:
                self._strike = strike
                return False
            packet = payload_bytes + len(topic.encode()) + PUBLISH_OVERHEAD
            cap = max(BATCH_CAP_MIN, packet // 4)
            if not batch or cap >= self._batch_caps.get(endpoint, packet):
                return True  # the strike stays: sent again later, one more end is enough
            self._strike = None
            self._batch_caps[endpoint] = cap
        log.warning(
            "mqtt: %s ended two connections in a row over a batch of %d bytes before its "
            "PUBACK: batches to it are kept under %d bytes until the gateway restarts. It has "
            "a packet limit it does not announce: set mqtt.max_packet_bytes to it (mosquitto: "
            "use max_packet_size, which it announces, instead of message_size_limit)",
            endpoint,
            packet,
            cap,
        )
        return False

    def batch_limit(self, topic: str) -> int | None:
        """The largest payload a batch on ``topic`` may have on this connection."""
        cap = self._batch_caps.get(self.endpoint) if self.endpoint else None
        limits = [x for x in (self.packet_limit, cap) if x]
        return _payload_room(min(limits) if limits else None, topic)

    def payload_limit(self, topic: str) -> int | None:
        """The largest payload a message on ``topic`` may have on this connection."""
        return _payload_room(self.packet_limit, topic)

    def publish(self, msg: Message, generation: int) -> int | None:
        """Hand one QoS 1 message to the current connection; return its mid, or None if the
        connection is gone (or is not the one the caller thinks it is). Raises
        ``MessageTooLarge`` rather than send what the broker would refuse by disconnecting."""
        with self._lock:
            client = self._client
            if client is None or generation != self._generation or not self.connected:
                return None
        limit = None if self._packet_limit is None else self.payload_limit(msg.topic)
        if limit is not None and len(msg.payload) > limit:
            self.too_large += 1
            raise MessageTooLarge(len(msg.payload), limit)
        # No per-message MQTT 5 properties: building them costs paho more than the rest of a
        # publish together; the content type (JSON) is declared in the AsyncAPI document.
        info = client.publish(msg.topic, msg.payload, qos=1, retain=msg.retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    # ---- the connection loop -------------------------------------------------------------------

    def _run(self) -> None:
        """A connection that ends soon after its CONNACK with events still unacknowledged,
        having delivered none, does not start the backoff afresh: one that a message ends
        every time (above a limit the broker does not announce) would otherwise be made again
        several times a second, for good. An idle one (a flapping path, a restarted broker)
        does: the next alarm must not wait out a grown backoff."""
        index = 0
        attempt = 0
        while not self._stop.is_set():
            endpoint = self.endpoints[index % len(self.endpoints)]
            self.endpoint = endpoint
            if self._attempt(endpoint):
                connected, delivered = time.monotonic(), self._delivered()
                unacknowledged = self._serve()
                if self._stop.is_set():
                    break
                progressed = self._delivered() > delivered
                if not unacknowledged or progressed or time.monotonic() - connected >= STABLE_S:
                    attempt = 0
            elif self._stop.is_set():
                break
            else:
                self.failures += 1
                index += 1
            if self._back_off(attempt):
                break
            attempt += 1

    def _attempt(self, endpoint: Endpoint) -> bool:
        """One connection attempt. Whatever goes wrong in it is a failed attempt, followed by
        backoff: it must never end this thread, or the gateway stays offline for good."""
        try:
            return self._connect_once(endpoint)
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            log.exception("mqtt: connecting to %s failed: %s", endpoint, self.last_error)
            return False

    def _back_off(self, attempt: int) -> bool:
        """Wait before the next attempt; True if stopping. The delay grows to reconnect_max_s,
        but while an alarm waits for the broker it stays within alarm_reconnect_max_s: an SOS
        must not sit out a minute after the broker is back."""
        cfg = self.cfg
        delay = backoff_delay(attempt, cfg.reconnect_min_s, cfg.reconnect_max_s, self._rng)
        alarm_cap = min(cfg.alarm_reconnect_max_s, cfg.reconnect_max_s)
        alarm_delay = min(delay, backoff_delay(attempt, cfg.reconnect_min_s, alarm_cap, self._rng))
        self._wake.clear()
        self.state = "backoff"
        started = time.monotonic()
        alarm = self._alarm_waiting()
        log.info(
            "mqtt: next attempt in %.1f s%s",
            alarm_delay if alarm else delay,
            " (an alarm is waiting)" if alarm else "",
        )
        while not self._stop.is_set():
            remaining = started + (alarm_delay if alarm else delay) - time.monotonic()
            if remaining <= 0:
                return False
            self._wake.wait(remaining)
            self._wake.clear()
            alarm = alarm or self._alarm_waiting()
        return True

    def _new_client(self, generation: int) -> paho.Client:
        v5 = self.cfg.protocol == "5"
        persistent = self.cfg.session_expiry_s > 0
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else not persistent,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        receipts = Receipts(client)
        # paho's own 5 s would bound the TCP connection and the TLS handshake whatever the
        # installer set: on a slow mobile link the handshake alone can take longer
        client.connect_timeout = self.cfg.connect_timeout_s
        client.max_inflight_messages_set(self.cfg.inflight_window + self.cfg.p0_reserved + 16)
        client.max_queued_messages_set(0)
        if self.cfg.username is not None:
            client.username_pw_set(self.cfg.username, self._password)
        if self._tls is not None and self.endpoint is not None and self.endpoint.tls:
            client.tls_set_context(self._tls)
        will = self._will()
        client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        socket_errors = _SocketErrors()
        client.enable_logger(socket_errors)

        def on_connect(
            _c: paho.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Properties | None
        ) -> None:
            if rc.is_failure:
                self._refused = str(rc)
            self._announce(getattr(_p, "MaximumPacketSize", None))
            self._connacked = True
            self._settled.set()

        def on_disconnect(_c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            # a broker refusing our certificate under TLS 1.3 closes after the handshake:
            # the CONNACK will never come, and its alert is the reason
            self._lost = None if rc.value == 0 else socket_errors.last or str(rc)
            self._timed_out = str(rc) == "Keep alive timeout"
            self._down.set()
            self._settled.set()

        def on_socket_close(_c: paho.Client, _u: Any, sock: object) -> None:
            if not self._connacked:
                socket_errors.read_alert(sock)

        def on_subscribe(
            _c: paho.Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Any
        ) -> None:
            # a broker ACL may refuse a subscription and keep the connection: the gateway
            # would then never hear a request, and nothing else would tell
            refused = [
                (topic, rc)
                for topic, rc in zip(self._subscribed, codes, strict=False)
                if rc.is_failure
            ]
            self.subscriptions_refused = [topic for topic, _rc in refused]
            for topic, rc in refused:
                self._rate_log.warning(
                    f"subscribe-{topic}",
                    "mqtt: the broker refused the subscription to %s (%s): nothing published "
                    "there reaches the gateway",
                    topic,
                    rc,
                )

        def on_publish(_c: paho.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
            try:
                failed = rc.is_failure  # named only when refused: this runs for every message
                self._listener.puback(generation, mid, not failed, str(rc) if failed else "")
            except Exception:
                log.exception("puback handler failed")

        def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
            try:
                topic = message.topic
            except UnicodeDecodeError as exc:
                # a broker that does not check topics passed on one that is not UTF-8: it is
                # handed on readable, to be refused and counted as a topic that is not ours
                topic = exc.object.decode("utf-8", "replace")
            done = receipts.take(message.mid, message.qos)
            if done is None:
                self.resent_held += 1
                return
            try:
                how = Handover(bool(message.retain), bool(message.dup), done)
                self._listener.received(topic, bytes(message.payload), how)
            except Exception:
                done()  # never handed over again: it would fail the same way
                log.exception("downlink handler failed")

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_socket_close = on_socket_close
        client.on_subscribe = on_subscribe
        client.on_publish = on_publish
        client.on_message = on_message
        return client

    def _connect_once(self, endpoint: Endpoint) -> bool:
        self.state = "connecting"
        with self._lock:
            self._generation += 1
            generation = self._generation
        client = self._new_client(generation)
        self._settled.clear()
        self._connacked = False
        self._down.clear()
        self._refused = None
        self._lost = None
        self._dropped = None
        self._timed_out = False
        self._announce(None)
        self.subscriptions_refused = []
        props = None
        clean_start: paho.CleanStartOption = paho.MQTT_CLEAN_START_FIRST_ONLY
        if self.cfg.protocol == "5":
            props = _properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            if self._max_incoming is not None:
                # the broker drops what is larger instead of sending it: paho would hold a
                # 200 MB request in memory (twice) before the downlink could refuse it
                props.MaximumPacketSize = self._max_incoming
            clean_start = self.cfg.session_expiry_s == 0
        try:
            opened, _ = self._opener.open(
                "mqtt-connect",
                lambda: client.connect(
                    endpoint.host,
                    endpoint.port,
                    keepalive=self.cfg.keepalive_s,
                    clean_start=clean_start,
                    properties=props,
                ),
                lambda _code: _close_socket(client),
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            log.warning("mqtt: cannot connect to %s: %s", endpoint, self.last_error)
            return False
        if not opened:
            return False
        client.loop_start()
        try:
            if not self._open(client, endpoint):
                _close(client)
                return False
        except BaseException:
            with self._lock:
                if self._client is client:
                    self._client = None
            _close(client)
            raise
        self._notify("link_up", self._listener.link_up, generation)
        return True

    def _open(self, client: paho.Client, endpoint: Endpoint) -> bool:
        """Wait for the CONNACK, or the connection ending before it, and make the connection
        the current one, unless stop() came meanwhile: it found no connection to end, so this
        one must not outlive it."""
        if self._stop.is_set():  # stop() may have woken the CONNACK wait before it began
            return False
        self._settled.wait(self.cfg.connect_timeout_s)
        if self._stop.is_set():
            return False
        if not self._connacked or self._refused:
            self._failed(self._refused or self._lost or "no CONNACK in time")
            log.warning("mqtt: %s refused or silent: %s", endpoint, self.last_error)
            return False
        with self._lock:
            if self._stop.is_set():
                return False
            self._client = client
            self.state = "connected"
        self.connects += 1
        limit = self.packet_limit
        log.info(
            "mqtt: connected to %s%s",
            endpoint,
            f" (packet limit {limit} bytes)" if limit is not None else "",
        )
        # one SUBSCRIBE: its SUBACK answers for each topic in order
        self._subscribed = self._subscriptions()
        if self._subscribed:
            if self.cfg.protocol == "5":
                # the retain flag as published, also on live delivery: a retained request is
                # then refused every time, not applied once and refused at the next connect
                options = SubscribeOptions(qos=1, retainAsPublished=True)
                client.subscribe([(topic, options) for topic in self._subscribed])
            else:
                client.subscribe([(topic, 1) for topic in self._subscribed])
        return True

    def _failed(self, reason: str) -> None:
        """Kept until the next failure: health is published only while connected, so the
        reason a connection ended or an attempt failed is seen only after reconnecting."""
        self.last_error = reason
        self.last_error_at = iso_utc(self._clock.wall_ms())

    def _notify(self, what: str, handler: Callable[[int], None], generation: int) -> None:
        """Tell the listener; its fault is logged and counted, and the link goes on."""
        try:
            handler(generation)
        except Exception as exc:
            self.listener_errors += 1
            self._rate_log.warning(
                what, "mqtt: %s handler failed: %s: %s", what, type(exc).__name__, exc
            )

    def _serve(self) -> int:
        """Until the connection ends; how many events it left unacknowledged (counted before
        the publisher hears of the end and takes them back)."""
        self._down.wait()
        with self._lock:
            client = self._client
            self._client = None
            generation = self._generation
            self.state = "disconnected"
        self.disconnects += 1
        if client is not None:
            client.loop_stop()
        reason = self._dropped or self._lost
        if reason is not None:
            self._failed(reason)
        if self.endpoint is not None:
            with self._lock:
                self._ends[generation] = (
                    self.endpoint,
                    self._dropped is None and not self._timed_out and not self._stop.is_set(),
                )
                for old in list(self._ends)[:-ENDS_KEPT]:
                    del self._ends[old]
        if not self._stop.is_set():
            log.warning("mqtt: connection to %s lost (%s)", self.endpoint, reason)
        unacknowledged = self._unacknowledged()
        self._notify("link_down", self._listener.link_down, generation)
        return unacknowledged


def _payload_room(packet_limit: int | None, topic: str) -> int | None:
    """What a packet limit leaves for the payload of a message on ``topic``."""
    return None if packet_limit is None else packet_limit - len(topic.encode()) - PUBLISH_OVERHEAD


def _close_socket(client: paho.Client) -> None:
    """A socket the connect opened after the link let it go (a stop during the connect)."""
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _shut_down(client: paho.Client) -> None:
    """End the connection under paho at once: its loop wakes and sees it closed."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _close(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()
