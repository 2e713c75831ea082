"""The sync stage as one service: connection, publisher, downlink, status and health."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway import __version__
from gateway.catalog import EVENT_TYPES
from gateway.clock import Clock, ClockSync
from gateway.config import LoadedConfig
from gateway.events import Lane, compact_json, iso_utc
from gateway.lifecycle import Periodic
from gateway.logs import RateLimitedLog
from gateway.store import OutboxReader, Store
from gateway.sync.downlink import Downlink, Operation, Reply
from gateway.sync.identity import CONFLICT_WINDOW_S, IdentityWatch, new_instance
from gateway.sync.mqtt import LIVE, Handover, Message, MessageTooLarge, MqttLink
from gateway.sync.publisher import Publisher
from gateway.sync.topics import Topics

log = logging.getLogger(__name__)


def lane_figures(store: Store, oldest: Mapping[Lane, int | None]) -> dict[str, Any]:
    """Per-lane backlog figures shared by the health message and ``outbox.stats``."""
    now = store.steady_ms()
    counters = dict(store.counters)  # a snapshot: the writer may add a key meanwhile
    out: dict[str, Any] = {}
    for lane in Lane:
        first = oldest.get(lane)
        label = lane.label
        out[label] = {
            "pending": store.usage[lane].count,
            "pending_bytes": store.usage[lane].bytes,
            "oldest_age_s": None if first is None else max(0, now - first) / 1000,
            "evicted": sum(
                v for k, v in counters.items() if k.startswith("evicted_") and k.endswith(label)
            ),
            "expired": counters.get(f"expired_{label}", 0),
            "refused": counters.get(f"refused_{label}", 0),
        }
    return out


def summary(health: Mapping[str, Any], refused: Mapping[str, int]) -> str:
    """The health message in one log line: counts and states only, nothing personal.
    ``refused``: events refused per lane since the previous line. Not the health message's
    counts, which are kept for good: they would have the line cry REFUSED for months after
    one full disk that was long dealt with."""
    lanes = health["lanes"]
    pending = " ".join(f"{k}={v['pending']}" for k, v in lanes.items())
    services = ", ".join(
        f"{name} {service_state(state)}" for name, state in health["services"].items()
    )
    pressure = (
        f" STORAGE PRESSURE {','.join(health['storage_pressure'])}"
        if health["storage_pressure"]
        else ""
    )
    if health["disk_reserve"] == "released":
        pressure += " DISK FULL (reserve released)"
    held = health.get("store_locked")
    if held:
        pressure += (
            f" STORE LOCKED by another program for {held['for_s']:.0f} s "
            f"({held['waiting']} writes waiting)"
        )
    refusals = " ".join(f"{k}={n}" for k, n in refused.items() if n)
    if refusals:
        pressure += f" REFUSED {refusals}"
    return (
        f"health: pending {pending}; broker {health['broker']['state']}; "
        f"delivered {health['uplink']['events_acked']}{pressure}; {services or 'no devices'}"
    )


def _refused(lanes: Mapping[str, Any]) -> dict[str, int]:
    return {lane: figures["refused"] for lane, figures in lanes.items()}


def service_state(service: Mapping[str, Any]) -> str:
    """What an installer must act on, in capitals, else ok: while the broker is down this line
    is the only health anyone sees."""
    if service.get("state") == "not started":
        return "NOT STARTED"
    link = service.get("link") or {}
    if link.get("state", "up") != "up":
        return f"link {str(link['state']).upper()}"
    if service.get("silent"):
        return "SILENT"
    if (service.get("gallery") or {}).get("key_mismatch"):
        return "GALLERY KEY MISMATCH"
    camera = service.get("camera") or {}
    if camera.get("state", "streaming") not in ("streaming", "ended"):
        return f"camera {str(camera['state']).upper()}"
    return "ok"


class Sync:
    """Everything between the store and the platform's broker."""

    name = "sync"

    def __init__(
        self,
        loaded: LoadedConfig,
        store: Store,
        clock: Clock,
        clock_sync: ClockSync,
        *,
        password: str | None,
        services_health: Callable[[], dict[str, Any]] = dict,
        model_versions: Callable[[], dict[str, str]] = dict,
        operations: Sequence[Operation] = (),
        rng: random.Random | None = None,
    ) -> None:
        cfg = loaded.config
        self.loaded = loaded
        self.store = store
        self._clock = clock
        self._clock_sync = clock_sync
        self._started_ms = clock.monotonic_ms()
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.gateway.site, cfg.gateway.id)
        self._services_health = services_health
        self._model_versions = model_versions
        self._generation = 0
        self._rate_log = RateLimitedLog(log, 30)
        self.identity = IdentityWatch(new_instance())
        self._identity_log = RateLimitedLog(log, CONFLICT_WINDOW_S, self._steady_s)
        self.link = MqttLink(
            cfg.mqtt,
            cfg.mqtt.client_id or f"{cfg.gateway.site}-{cfg.gateway.id}",
            self,
            password=password,
            will=lambda: self._status("offline", "connection_lost"),
            subscriptions=lambda: [self.topics.requests, self.topics.status],
            alarm_waiting=lambda: store.usage[Lane.P0].count > 0,
            delivered=lambda: self.publisher.events_acked,
            unacknowledged=lambda: self.publisher.inflight,
            # twice the request limit: a request somewhat too large is still answered
            # too_large; one far beyond it never reaches the gateway's memory
            max_incoming_bytes=2 * cfg.downlink.max_payload_bytes + 65_536,
            rng=rng,
            clock=clock,
        )
        self.publisher = Publisher(
            cfg.mqtt,
            store,
            store.reader,
            self.topics,
            send=self.link.publish,
            drop=self.link.drop,
            batch_limit=self.link.batch_limit,
            ended_over=self.link.ended_over,
            added={t.name: t.added for t in EVENT_TYPES if t.added},
        )
        builtin = [
            Operation("ping", self._op_ping),
            Operation("rebirth", self._op_rebirth, applies_elsewhere=True),
            Operation("outbox.stats", self._op_outbox_stats),
        ]
        self.downlink = Downlink(
            cfg.downlink, store, self.topics, self._send_answer, [*builtin, *operations]
        )
        self._reader: OutboxReader | None = None
        self._report_lock = threading.Lock()  # on connect (link thread) and periodically
        self._refused_before: dict[str, int] = {}  # under _report_lock: at the last line
        self._health_task = Periodic("health-report", cfg.mqtt.health_interval_s, self.report)

    # ---- service -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every part, or none: a part that cannot start (a TLS file missing) stops the
        ones already running, whose threads would otherwise keep the process from exiting."""
        self._reader = self.store.reader()
        # those of earlier runs are not news
        self._refused_before = _refused(lane_figures(self.store, {}))
        self.store.subscribe(self._on_commit)
        try:
            self.publisher.start()
            self.downlink.start()
            self.link.start()
            self._health_task.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """The downlink stops while the connection is up, so the requests it still holds
        are answered; the farewell, sent after those answers, waits for its PUBACK."""
        self._health_task.stop()
        self.publisher.settle()
        self.downlink.stop()
        self.link.stop(farewell=self._status("offline", "shutdown"))
        self.publisher.stop()
        with self._report_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def healthy(self) -> bool:
        return (
            self.link.healthy()
            and self.publisher.healthy()
            and self.downlink.healthy()
            and self._health_task.alive()
        )

    def health(self) -> dict[str, Any]:
        return {
            "broker": self._broker_health(),
            "uplink": self.publisher.health(),
            "downlink": self.downlink.health(),
        }

    def _on_commit(self, lanes: set[Lane]) -> None:
        if Lane.P0 in lanes:
            self.link.alarm_recorded()

    # ---- LinkListener ------------------------------------------------------------------------

    def link_up(self, generation: int) -> None:
        """Birth, then events; the publisher learns of the connection even if the birth
        message cannot be made (a model version that cannot be read)."""
        self._generation = generation
        try:
            self._publish(self._status("online"), generation)
        finally:
            try:
                self.publisher.link_up(generation)
            finally:  # answers the platform waits for go out even if the uplink failed to
                self.downlink.link_up()
        self.report()

    def link_down(self, generation: int) -> None:
        self.publisher.link_down(generation)

    def puback(self, generation: int, mid: int, accepted: bool, reason: str) -> None:
        self.publisher.puback(generation, mid, accepted, reason)

    def received(self, topic: str, payload: bytes, how: Handover = LIVE) -> None:
        if topic == self.topics.status:
            try:
                self._status_seen(payload)
            finally:
                how.done()
        else:
            self.downlink.received(topic, payload, how)

    def _status_seen(self, payload: bytes) -> None:
        """Only named in the log and health: alarms must still go out, under either gateway."""
        if not self.identity.observe(payload, self._session(), self._steady_s()):
            return
        cfg = self.loaded.config
        self._identity_log.error(
            "identity",
            "another gateway is using gateway id %s at site %s (the same client id %s; the "
            "broker drops one connection whenever the other connects): a copied SD card or "
            "config? Give each gateway its own `gateway.id`",
            cfg.gateway.id,
            cfg.gateway.site,
            self.link.client_id,
        )

    def _broker_health(self) -> dict[str, Any]:
        return {**self.link.health(), **self.identity.health(self._steady_s())}

    def _steady_s(self) -> float:
        return self._clock.monotonic_ms() / 1000

    def _session(self) -> int:
        return max(self.store.session, 1)

    # ---- messages ----------------------------------------------------------------------------

    def _send_now(self, msg: Message) -> bool:
        return self._publish(msg, self._generation)

    def _send_answer(self, msg: Message) -> bool:
        """For the downlink: False only when no connection takes the answer now (it is held
        for the next one); one above the packet limit is logged and counted, not held."""
        try:
            return self.link.publish(msg, self._generation) is not None
        except MessageTooLarge as exc:
            self._too_large(msg, exc)
            return True

    def _publish(self, msg: Message, generation: int) -> bool:
        """Status and health: best effort, like the platform expects of them; one
        above the broker's packet limit is counted and logged instead of sent."""
        try:
            return self.link.publish(msg, generation) is not None
        except MessageTooLarge as exc:
            self._too_large(msg, exc)
            return False

    def _too_large(self, msg: Message, exc: MessageTooLarge) -> None:
        self._rate_log.warning(f"too-large-{msg.topic}", "mqtt: %s not sent: %s", msg.topic, exc)

    def _status(self, state: str, reason: str | None = None) -> Message:
        cfg = self.loaded.config
        body: dict[str, Any] = {
            "state": state,
            "gateway": cfg.gateway.id,
            "site": cfg.gateway.site,
            "session": self._session(),
            "instance": self.identity.instance,
        }
        if reason:
            body["reason"] = reason
        if state == "online":
            body.update(
                software=__version__,
                config=self.loaded.version,
                models=self._model_versions(),
                ts=iso_utc(self._clock.wall_ms()),
                clock_synced=self._clock_sync.synced,
            )
        return Message(self.topics.status, compact_json(body).encode(), retain=True)

    def health_message(self) -> dict[str, Any]:
        cfg = self.loaded.config
        store = self.store
        assert self._reader is not None
        others = {k: v for k, v in self._services_health().items() if k not in ("store", "sync")}
        return {
            "ts": iso_utc(self._clock.wall_ms()),
            "gateway": cfg.gateway.id,
            "site": cfg.gateway.site,
            "session": store.session,
            "uptime_s": (self._clock.monotonic_ms() - self._started_ms) / 1000,
            "clock_synced": self._clock_sync.synced,
            "lanes": lane_figures(store, self._reader.oldest_steady_ms()),
            "storage_pressure": [lane.label for lane in store.pressure],
            "disk_free_bytes": store.disk_free,
            "disk_reserve": store.reserve.state,
            "store_locked": store.lock_wait(),
            "broker": self._broker_health(),
            "uplink": self.publisher.health(),
            "downlink": self.downlink.health(),
            "services": others,
        }

    def report(self) -> None:
        """Publish the retained health message (if connected) and log a one-line summary."""
        with self._report_lock:
            if self._reader is None:
                return
            health = self.health_message()
            counts = _refused(health["lanes"])
            refused = {k: n - self._refused_before.get(k, 0) for k, n in counts.items()}
            self._refused_before = counts
        log.info("%s", summary(health, refused))
        if self.link.connected:
            body = compact_json(health).encode()
            self._publish(Message(self.topics.health, body, retain=True), self._generation)

    # ---- built-in operations -----------------------------------------------------------------

    def _op_ping(self, _request: Mapping[str, Any]) -> Reply:
        return Reply(
            {
                "pong": True,
                "session": self.store.session,
                "ts": iso_utc(self._clock.wall_ms()),
                "clock_synced": self._clock_sync.synced,
            }
        )

    def announce(self) -> bool:
        """Publish the birth message again (retained: the newest wins), e.g. once the face
        stage has loaded its models after the connection was made. False if offline."""
        return self._send_now(self._status("online"))

    def _op_rebirth(self, _request: Mapping[str, Any]) -> Reply:
        return Reply({"republished": self.announce()})

    def _op_outbox_stats(self, _request: Mapping[str, Any]) -> Reply:
        reader = self.store.reader()
        try:
            oldest = reader.oldest_steady_ms()
        finally:
            reader.close()
        return Reply(
            {
                "lanes": lane_figures(self.store, oldest),
                "storage_pressure": [lane.label for lane in self.store.pressure],
                "disk_free_bytes": self.store.disk_free,
                "delivered": self.store.counters.get("delivered", 0),
            }
        )
