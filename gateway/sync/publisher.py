"""Outbox -> MQTT: the delivery state machine.

A pending row becomes *in flight* when it is handed to the connection, and *delivered* only when
the broker's PUBACK for that very message arrives (then the store deletes it from the outbox).
When the connection drops, everything in flight is simply pending again: it was never deleted.
After a crash nothing is in flight at all. So an event is lost never, and sent twice only when a
PUBACK was lost, always with the same ``event_id``.

Order: the highest priority lane with pending rows is served first, each lane in ``seq`` order.
A window bounds the messages awaiting PUBACK; P0 alarms have a few reserved slots on top, so an
alarm never waits behind a window full of telemetry.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, NamedTuple

from gateway.config import MqttSection
from gateway.events import LANES, Lane, StoredEvent, with_added_fields
from gateway.lifecycle import Worker
from gateway.logs import RateLimitedLog, raised_at
from gateway.store import Delivered, OutboxReader, Receipt, Store, StoreClosed
from gateway.sync.mqtt import BATCH_CAP_MIN, Message, MessageTooLarge
from gateway.sync.topics import Topics
from gateway.sync.watchdog import AlarmAckWatch

log = logging.getLogger(__name__)
PREFETCH = 512
REFILL_READS = 8  # reads of PREFETCH rows at most per refill, passing over held-back events
ACK_CHUNK = 256  # acknowledged events per store write: keeps each commit short for alarms
ACK_WAKE = 8  # PUBACKs gathered before the publisher is woken for them ...
ACK_POLL_S = 0.002  # ... or this long at most, while messages are in flight
LATENCY_WINDOW = 1000
IDLE_WAIT_S = 1.0
FAULT_WAIT_S = 1.0  # after a turn that failed
SAVE_RETRY_S = 5.0  # acknowledged events whose deletion failed (a full disk) are tried again
SETTLE_S = 2.0  # at a clean stop, the longest wait for the PUBACKs of what is in flight
SUSPECT_MS = 10_000  # a batch sent this shortly before its connection ended may have ended it


class InFlight(NamedTuple):
    """(NamedTuples here and for PUBACKs: one of each is made for every message sent.)"""

    events: tuple[StoredEvent, ...]
    lane: Lane
    topic: str
    size: int
    sent_ms: int


@dataclass(frozen=True)
class _Held:
    """An event type (or one event) the broker refused: not sent again before ``retry_s``
    (running time), nor before ``delay_s`` into a new connection; ``first_seq`` is where its
    lane is read again from then."""

    lane: Lane
    retry_s: float
    delay_s: float
    first_seq: int


class _Ack(NamedTuple):
    generation: int
    mid: int
    accepted: bool
    reason: str


class Publisher:
    """Owns the in-flight window. Runs on its own thread; never writes SQLite itself."""

    name = "uplink"

    def __init__(
        self,
        cfg: MqttSection,
        store: Store,
        reader: Callable[[], OutboxReader],
        topics: Topics,
        *,
        send: Callable[[Message, int], int | None],
        drop: Callable[[int, str], None],
        batch_limit: Callable[[str], int | None] = lambda _topic: None,
        ended_over: Callable[[int, object | None, str, int, bool], bool] = lambda *_a: False,
        added: Mapping[str, tuple[tuple[str, Any], ...]] = MappingProxyType({}),
    ) -> None:
        self.cfg = cfg
        self._added = added  # event type -> fields its rows from before may lack
        self._store = store
        self._reader_factory = reader
        self._reader: OutboxReader | None = None
        self._topics = topics
        self._send = send
        self._drop = drop
        self._batch_limit = batch_limit
        self._ended_over = ended_over
        self._wake = threading.Event()
        self._settling = threading.Event()
        self._settled = threading.Event()
        self._acks: queue.SimpleQueue[_Ack] = queue.SimpleQueue()
        self._worker = Worker("uplink-publisher", self._run, wake=self._wake.set)
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._connected_steady = 0
        self._inflight: dict[int, InFlight] = {}
        self._inflight_bytes = 0
        self._buffers: dict[Lane, deque[StoredEvent]] = {lane: deque() for lane in Lane}
        self._cursor: dict[Lane, int] = dict.fromkeys(Lane, 0)
        self._high: dict[Lane, int] = dict.fromkeys(Lane, 0)
        self._more: dict[Lane, bool] = dict.fromkeys(Lane, True)
        self._acked_unsaved: set[int] = set()
        # acknowledged, but their deletion failed: kept out of every rewind and tried again
        self._save_failed: list[Delivered] = []
        self._save_retry_ms = 0
        self._alarms_sent: dict[int, int] = {}  # mid -> steady ms, oldest first
        self._alarm_watch = AlarmAckWatch(
            round(cfg.alarm_ack_timeout_s * 1000), round(cfg.keepalive_s * 1500)
        )
        # kept across connections: a broker may close the connection after a refusal, and the
        # refused message, sent first again, would hold up everything behind it for good
        # held back: an event type (str), or one event (its seq) too large for the broker
        self._held: dict[str | int, _Held] = {}
        self._refusals: dict[str | int, int] = {}  # refusals since it last went through
        # one message at a time until the first PUBACK: the connection before ended with
        # messages unacknowledged, and if it ends again, it is over that one
        self._probing = False
        self._redated = 0  # the store's count of re-datings, when the lanes were last read
        self._rate_log = RateLimitedLog(log, 30)
        self._latency: dict[Lane, deque[int]] = {
            lane: deque(maxlen=LATENCY_WINDOW) for lane in Lane
        }
        self.messages_sent = 0
        self.events_sent = 0
        self.events_acked = 0
        self.rejected = 0
        self.alarm_timeouts = 0
        self.faults = 0  # turns of the publisher that failed (an unreadable outbox, a bug)

    # ---- service -----------------------------------------------------------------------------

    def start(self) -> None:
        self._reader = self._reader_factory()
        self._store.subscribe(self._on_commit)
        self._worker.start()

    def settle(self, timeout_s: float = SETTLE_S) -> bool:
        """Before a clean stop: send nothing new but alarms, and wait for the PUBACKs of what is
        in flight. A message still in flight at the disconnect is sent again at the next start
        (its PUBACK may have been on the way), so without this every stop made duplicates."""
        self._settling.set()
        self._wake.set()
        if not self._worker.alive() or self._settled.wait(timeout_s):
            return True
        log.info("uplink: %d messages still in flight at stop", len(self._inflight))
        return False

    def stop(self) -> None:
        self._worker.stop()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def healthy(self) -> bool:
        return self._worker.alive()

    @property
    def inflight(self) -> int:
        """Messages from the outbox handed to the connection and not yet acknowledged."""
        return len(self._inflight)

    def health(self) -> dict[str, Any]:
        return {
            "inflight": self.inflight,
            "messages_sent": self.messages_sent,
            "events_sent": self.events_sent,
            "events_acked": self.events_acked,
            "rejected": self.rejected,
            "alarm_timeouts": self.alarm_timeouts,
            "faults": self.faults,
            "undecryptable": 0 if self._reader is None else self._reader.undecryptable,
            "latency_ms": {lane.label: self.latency(lane) for lane in Lane},
        }

    def latency(self, lane: Lane) -> dict[str, int] | None:
        """Record-to-PUBACK time of the lane's last deliveries (the gateway's share of an
        alarm's journey), as median and 99th percentile in ms."""
        samples = sorted(self._latency[lane])
        if not samples:
            return None
        return {
            "p50": samples[len(samples) // 2],
            "p99": samples[min(len(samples) - 1, (len(samples) * 99) // 100)],
            "n": len(samples),
        }

    # ---- events from the store and the link (other threads: hand over and return) --------------

    def _on_commit(self, lanes: set[Lane]) -> None:
        for lane in lanes:
            self._more[lane] = True
        self._wake.set()

    def link_up(self, generation: int) -> None:
        with self._lock:
            self._generation = generation
            self._connected_steady = self._store.steady_ms()
        self._wake.set()

    def link_down(self, generation: int) -> None:
        with self._lock:
            if self._generation == generation:
                self._generation = None
        self._wake.set()

    def puback(self, generation: int, mid: int, accepted: bool, reason: str) -> None:
        """Gather PUBACKs rather than wake the publisher for each: a thread switch per message
        cost more than the rest of the publishing. New events still wake it at once."""
        self._acks.put(_Ack(generation, mid, accepted, reason))
        if self._acks.qsize() >= ACK_WAKE or not accepted:
            self._wake.set()

    # ---- the publisher thread -------------------------------------------------------------------

    def _run(self, stopping: threading.Event) -> None:
        """One turn after another until the stop. A turn that fails (the outbox unreadable
        for a while: another program's lock past the busy timeout, a damaged page) must not
        end the thread, which would leave the link up and nothing sent: what was in flight is
        pending again, and the next turn, a second later, reads the outbox afresh."""
        current: int | None = None
        while not stopping.is_set():
            try:
                current = self._turn(current)
            except Exception as exc:
                self.faults += 1
                self._rate_log.error(
                    "fault", "uplink: publishing failed, trying again: %s", raised_at(exc)
                )
                self._rewind()
                stopping.wait(FAULT_WAIT_S)
        self._drain_acks(current)  # PUBACKs that came while stopping

    def _turn(self, current: int | None) -> int | None:
        """Hand over what the window has room for; the connection it was for."""
        self._wake.clear()
        with self._lock:
            generation = self._generation
        if generation != current:
            # PUBACKs that came before the connection ended are valid: save them first.
            self._drain_acks(current)
            if current is not None:
                self._connection_ended(current)
            self._reset()
            if generation is not None:
                self._defer_held()
            current = generation
        self._drain_acks(current)
        self._retry_saves()
        if self._store.redated != self._redated:
            # events read ahead with the time of a clock not yet set: read them again
            self._redated = self._store.redated
            self._rewind()
        if current is not None:
            self._fill_window(current)
            if self._alarms_sent:
                self._watch_alarms(current)
        if not self._inflight and self._settling.is_set():
            self._settled.set()
        self._wake.wait(ACK_POLL_S if self._inflight else self._idle_wait())
        return current

    def _idle_wait(self) -> float:
        """Until the next turn with nothing in flight: a held event type is sent again when
        its wait is over, not up to a second later."""
        if not self._held:
            return IDLE_WAIT_S
        due = min(h.retry_s for h in self._held.values()) - self._store.steady_ms() / 1000
        return min(IDLE_WAIT_S, max(due, ACK_POLL_S))

    def _reset(self) -> None:
        """A new (or no) connection: whatever was in flight is pending again."""
        if self._inflight:
            log.info("uplink: %d messages in flight are pending again", len(self._inflight))
        self._inflight.clear()
        self._inflight_bytes = 0
        self._alarms_sent.clear()
        self._rewind()

    def _rewind(self) -> None:
        """Read every lane again from its start. What is in flight stays in flight: after a
        turn that failed on a connection still up, its PUBACKs are still to come, and sent
        again it would reach the platform twice (the rewind passes over it)."""
        for lane in LANES:
            self._buffers[lane].clear()
            self._cursor[lane] = 0
            self._more[lane] = True

    def _connection_ended(self, generation: int) -> None:
        """Tell the link which message the connection may have ended over: the oldest still
        without its PUBACK (a broker reads in order, and one that closes the connection on
        what it will not take may lose the PUBACKs it sent just before), if it was sent
        shortly before the end. The next connection sends one message until the first
        PUBACK: it cannot be lost behind another, so two ends in a row over the same message
        are its doing, and it is then held back as one the broker refused. A small message
        is refused for its topic, that is its event type (an ACL); one above ``BATCH_CAP_MIN``
        bytes more likely for its size (a packet limit the broker does not announce), and
        only that event is held back: the smaller ones of its type go on."""
        now = self._store.steady_ms()
        oldest = next(iter(self._inflight.values()), None)
        if oldest is None or now - oldest.sent_ms > SUSPECT_MS:
            self._ended_over(generation, None, "", 0, False)
            return
        probed, self._probing = self._probing, True
        if probed and len(self._inflight) > 1:
            # an alarm went beside the probe: either may be the one; the next probe tells
            self._ended_over(generation, None, "", 0, False)
            return
        key = (oldest.lane, oldest.events[0].seq)
        if not self._ended_over(generation, key, oldest.topic, oldest.size, len(oldest.events) > 1):
            return
        if oldest.size > BATCH_CAP_MIN and len(oldest.events) == 1:
            reason = (
                f"the connection ended over this {oldest.size}-byte message twice in a row, "
                "without a PUBACK; if the broker has a packet limit, set mqtt.max_packet_bytes"
            )
            self._rejected(oldest, reason, oldest.events[0].seq)
        else:
            reason = "the connection ended over it twice in a row, without a PUBACK"
            self._rejected(oldest, reason, oldest.events[0].type)

    def _drain_acks(self, current: int | None) -> None:
        delivered: list[Delivered] = []
        now = self._store.steady_ms()
        session = self._store.session
        last_sent = None
        while True:
            try:
                ack = self._acks.get_nowait()
            except queue.Empty:
                break
            if ack.generation != current:
                continue
            flight = self._inflight.pop(ack.mid, None)
            if flight is None:
                continue  # status, health or a response: not from the outbox
            self._probing = False
            self._inflight_bytes -= flight.size
            last_sent = flight.sent_ms
            if flight.lane is Lane.P0:
                self._alarms_sent.pop(ack.mid, None)
            if not ack.accepted:
                self._rejected(flight, ack.reason)
                continue
            if self._refusals:
                self._refusals.pop(flight.events[0].type, None)
                self._refusals.pop(flight.events[0].seq, None)
            latency = self._latency[flight.lane]
            for e in flight.events:
                if e.session == session:
                    latency.append(now - e.steady_ms)
                delivered.append(Delivered(e.seq, e.lane))
        if last_sent is not None:
            # Any PUBACK tells how long this link takes now, telemetry queued ahead included.
            self._alarm_watch.acked(now - last_sent)
        if delivered:
            self._save_delivered(delivered)

    def _save_delivered(self, delivered: list[Delivered]) -> None:
        with self._lock:
            self._acked_unsaved.update(d.seq for d in delivered)
        self.events_acked += len(delivered)
        for start in range(0, len(delivered), ACK_CHUNK):
            chunk = delivered[start : start + ACK_CHUNK]
            try:
                self._store.mark_delivered(chunk).add_done_callback(self._saved(chunk))
            except StoreClosed:
                log.warning("uplink: store closed; acknowledged events stay pending")
                return

    def _saved(self, chunk: list[Delivered]) -> Callable[[Receipt[int]], None]:
        """Once the deletion is committed, the rows can no longer be read back as pending.
        A deletion that failed (a full disk) leaves them acknowledged: read back at the next
        rewind they would be sent again, once per reconnect, so they stay out of every rewind
        and their deletion is tried again."""
        seqs = [d.seq for d in chunk]

        def forget(receipt: Receipt[int]) -> None:
            with self._lock:
                if receipt.exception() is None:
                    self._acked_unsaved.difference_update(seqs)
                else:
                    self._save_failed += chunk
            self._wake.set()

        return forget

    def _retry_saves(self) -> None:
        with self._lock:
            if not self._save_failed or self._store.steady_ms() < self._save_retry_ms:
                return
            failed, self._save_failed = self._save_failed, []
            self._save_retry_ms = self._store.steady_ms() + round(SAVE_RETRY_S * 1000)
        log.info("uplink: deleting %d delivered events again", len(failed))
        for start in range(0, len(failed), ACK_CHUNK):
            chunk = failed[start : start + ACK_CHUNK]
            try:
                self._store.mark_delivered(chunk).add_done_callback(self._saved(chunk))
            except StoreClosed:
                return

    def _rejected(self, flight: InFlight, reason: str, key: str | int | None = None) -> None:
        """The broker refused the message (e.g. not authorised for its topic, quota): its
        events stay pending, and that event type is held back and tried again later, with a
        growing delay, while everything else goes on past it. A broker's ACL is per topic,
        that is per event type; holding back the whole lane, or the message alone, would let
        one refused alarm type stop the other alarms, or be sent first after every reconnect
        (a broker may close the connection after a refusal). An alarm type waits at most
        ``alarm_reconnect_max_s``. ``key``: what is held back, the message's event type unless
        told otherwise."""
        self.rejected += len(flight.events)
        lane = flight.lane
        etype = flight.events[0].type  # a message holds events of one type
        key = etype if key is None else key
        refusals = self._refusals[key] = self._refusals.get(key, 0) + 1
        longest = self.cfg.reconnect_max_s
        if lane is Lane.P0:
            # as a reconnect while an alarm waits: a path that flapped twice as an SOS left
            # looks like a broker closing over it, and a new SOS must not sit out a minute
            longest = min(longest, self.cfg.alarm_reconnect_max_s)
        delay = min(longest, self.cfg.reconnect_min_s * 2 ** min(refusals, 10))
        first = min(e.seq for e in flight.events)
        held = self._held.get(key)
        if held is not None:
            first = min(first, held.first_seq)
        self._held[key] = _Held(lane, self._store.steady_ms() / 1000 + delay, delay, first)
        buf = self._buffers[lane]
        if any(key in (e.type, e.seq) for e in buf):
            self._buffers[lane] = deque(e for e in buf if key not in (e.type, e.seq))
        self._rate_log.warning(
            f"reject-{key}",
            "uplink: broker refused %s %s message: %s; kept, tried again in %.1f s, the rest "
            "goes on",
            lane.name,
            etype,
            reason,
            delay,
        )

    def _defer_held(self) -> None:
        """A new connection: what it carries first is everything but the refused types. A
        broker that closed the connection over one would otherwise be sent it first again
        whenever the reconnect took longer than the hold (both grow alike), and nothing
        would ever get past it."""
        now_s = self._store.steady_ms() / 1000
        for key, held in self._held.items():
            self._held[key] = replace(held, retry_s=max(held.retry_s, now_s + held.delay_s))

    def _release_held(self) -> None:
        """Event types (and events) whose wait is over are sent again: their lane is read
        again from the first of their events (what was delivered or is in flight meanwhile is
        left out)."""
        now_s = self._store.steady_ms() / 1000
        for key, held in list(self._held.items()):
            if held.retry_s > now_s:
                continue
            del self._held[key]
            lane = held.lane
            self._cursor[lane] = min(self._cursor[lane], held.first_seq - 1)
            self._buffers[lane].clear()
            self._more[lane] = True

    def _fill_window(self, generation: int) -> None:
        now = self._store.steady_ms()
        with self._lock:
            connected = self._connected_steady
        while not self._worker.stopping.is_set():
            lane = self._next_lane()
            if lane is None or (lane is not Lane.P0 and self._settling.is_set()):
                return
            if self._probing and self._inflight and (lane is not Lane.P0 or self._alarms_sent):
                # one message until the first PUBACK, so that one the broker closes over is
                # named; but an alarm goes beside a probe of telemetry, watched as every alarm
                # is: held back, a path dead since the probe left kept it until the keepalive
                return
            if lane is Lane.P0:
                if len(self._inflight) >= self.cfg.inflight_window + self.cfg.p0_reserved:
                    return
            elif (
                len(self._inflight) >= self.cfg.inflight_window
                or self._inflight_bytes >= self.cfg.inflight_max_bytes
            ):
                return
            events, msg = self._take(lane, connected)
            try:
                mid = self._send(msg, generation)
            except MessageTooLarge as exc:
                self._too_large(lane, events, exc)
                continue
            if mid is None:
                for e in reversed(events):
                    self._buffers[lane].appendleft(e)
                return
            if lane is Lane.P0:
                self._alarms_sent[mid] = now
            self._inflight[mid] = InFlight(tuple(events), lane, msg.topic, len(msg.payload), now)
            self._inflight_bytes += len(msg.payload)
            self._high[lane] = max(self._high[lane], events[-1].seq)
            self.messages_sent += 1
            self.events_sent += len(events)

    def _too_large(self, lane: Lane, events: list[StoredEvent], exc: MessageTooLarge) -> None:
        """Only a single event can be above the broker's limit (batches are sized to fit). It
        can never go through this broker: it stays in the outbox, to be sent if the limit is
        raised or another broker takes over, and the lane goes on past it."""
        self._rate_log.warning(
            f"too-large-{lane.label}",
            "uplink: %s event seq %d (%s) not sent, kept in the outbox: %s",
            lane.name,
            events[0].seq,
            events[0].type,
            exc,
        )

    def _watch_alarms(self, generation: int) -> None:
        """Take the connection for dead when the oldest alarm in flight is overdue."""
        waited = self._store.steady_ms() - next(iter(self._alarms_sent.values()))
        if not self._alarm_watch.overdue(waited):
            return
        self.alarm_timeouts += 1
        reason = f"alarm unacknowledged after {waited / 1000:.1f} s"
        log.warning("uplink: %s; dropping the connection to send it again", reason)
        self._alarm_watch.expired()
        self._alarms_sent.clear()
        self._drop(generation, reason)

    def _next_lane(self) -> Lane | None:
        if self._held:
            self._release_held()
        for lane in LANES:
            if self._buffers[lane] or (self._more[lane] and self._refill(lane)):
                return lane
        return None

    def _refill(self, lane: Lane) -> bool:
        """Read the lane's next pending events. Those of a type held back are passed over, a
        few reads at a time: a backlog of them must not keep an alarm waiting meanwhile."""
        assert self._reader is not None
        skip: set[int] = set()
        if self._cursor[lane] < self._high[lane]:
            # Re-reading after a rewind: leave out what is in flight or already acknowledged.
            # The acknowledged are copied before the read: a deletion that commits in between
            # is then in the copy, or its rows are gone from what the read returns.
            with self._lock:
                skip = set(self._acked_unsaved)
            skip.update(e.seq for f in self._inflight.values() for e in f.events)
        held = self._held
        buf = self._buffers[lane]
        for _ in range(REFILL_READS):
            # cleared before the read, only ever set after it: a commit during the read sets
            # it again (on the writer's thread), and its event must not be left unread
            self._more[lane] = False
            page = self._reader.read(lane, self._cursor[lane], PREFETCH)
            if page.full:
                self._more[lane] = True
            added = self._added
            buf.extend(
                with_added_fields(e, added[e.type]) if e.type in added else e
                for e in page.events
                if e.seq not in skip and e.type not in held and e.seq not in held
            )
            if page.last_seq is not None:
                self._cursor[lane] = page.last_seq
            if buf or not self._more[lane]:
                return bool(buf)
        self._wake.set()  # read on at the next turn, after the lanes before this one
        return False

    def _take(self, lane: Lane, connected: int) -> tuple[list[StoredEvent], Message]:
        """One event, or for P2 a run of consecutive same-type events (order is kept), and the
        message that carries them. A batch is sized by its exact bytes, so that it fits the
        broker's packet limit as well as ``batch_max_bytes``. Events recorded before
        ``connected`` (steady ms) are marked as replayed."""
        session = self._store.session
        buf = self._buffers[lane]
        first = buf.popleft()
        topic = self._topics.event(first.type)
        body = first.envelope_json(first.session != session or first.steady_ms < connected)
        if lane is not Lane.P2:
            return [first], Message(topic, body.encode())
        taken, parts = [first], [body.encode()]
        limit = self._batch_limit(topic)
        max_bytes = min(self.cfg.batch_max_bytes, limit or self.cfg.batch_max_bytes)
        size = len(parts[0]) + 2
        while len(taken) < self.cfg.batch_max_events:
            if not buf and not (self._more[lane] and self._refill(lane)):
                break
            nxt = buf[0]
            if nxt.type != first.type:
                break
            part = nxt.envelope_json(nxt.session != session or nxt.steady_ms < connected).encode()
            size += len(part) + 1
            if size > max_bytes:
                break
            taken.append(buf.popleft())
            parts.append(part)
        return taken, Message(topic, b"[" + b",".join(parts) + b"]")
