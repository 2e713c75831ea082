"""The publisher at the edge of a connection, driven directly: a recording ``send`` stands in for
the link, so each interleaving happens exactly where the test puts it (the store is real)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import gateway.clock as clock_module
from gateway.clock import ClockSync
from gateway.config import MqttSection, StoreSection
from gateway.events import Event, Lane, StoredEvent
from gateway.store import OutboxReader, Store
from gateway.store.cipher import EventCipher
from gateway.store.outbox import Page
from gateway.sync.mqtt import Message
from gateway.sync.publisher import PREFETCH, Publisher
from gateway.sync.topics import Topics
from gateway.vision.events import FACE_DECISION
from tests.support.clock import ManualClock
from tests.support.disk import fill
from tests.support.events import ALARM, RECORD
from tests.support.wait import eventually


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    cfg = StoreSection(housekeeping_interval_s=3600)
    store = Store(cfg, tmp_path / "g.db", ManualClock(), ClockSync("never", 60))
    store.start()
    yield store
    store.stop()


class Link:
    """Records (generation, seq) of each message sent; mids count up from 1."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.messages: list[Message] = []
        self.before_send: Callable[[int, int], None] = lambda _generation, _seq: None

    def send(self, msg: Message, generation: int) -> int:
        seq = int(json.loads(msg.payload)["seq"])
        self.before_send(generation, seq)
        self.sent.append((generation, seq))
        self.messages.append(msg)
        return len(self.sent)


def publisher(
    store: Store,
    link: Link,
    reader: Callable[[], OutboxReader],
    cfg: MqttSection | None = None,
) -> Publisher:
    return Publisher(
        cfg or MqttSection(),
        store,
        reader,
        Topics("e", "s", "g"),
        send=link.send,
        drop=lambda g, r: None,
    )


def test_a_puback_that_came_just_before_the_connection_ended_is_kept(store: Store) -> None:
    first, second = (store.record(Event(RECORD, {"n": n})) for n in range(2))
    link = Link()
    holding, release = threading.Event(), threading.Event()

    def hold_second(generation: int, seq: int) -> None:
        if (generation, seq) == (1, second.seq):
            holding.set()
            release.wait(10)

    link.before_send = hold_second
    pub = publisher(store, link, store.reader)
    pub.start()
    try:
        pub.link_up(1)
        assert holding.wait(10)
        # While the publisher is busy: the broker acknowledges the first message (mid 1), then
        # the connection ends and a new one comes up, all before the publisher looks again.
        pub.puback(1, 1, True, "Success")
        pub.link_down(1)
        pub.link_up(2)
        release.set()
        eventually(lambda: (2, second.seq) in link.sent)
        assert (2, first.seq) not in link.sent, "an acknowledged event was sent again"
        eventually(lambda: store.usage[Lane.P1].count == 1)
        assert pub.events_acked == 1
    finally:
        release.set()
        pub.stop()


def test_events_read_ahead_before_the_clock_was_set_go_out_dated_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog read ahead while the clock was not set is read again once the store has
    dated it again: it does not go out with the old time."""
    first, second = (store.record(Event(RECORD, {"n": n})) for n in range(2))
    link = Link()
    pub = publisher(store, link, store.reader, MqttSection(inflight_window=1))
    pub.start()
    try:
        pub.link_up(1)
        eventually(lambda: len(link.sent) == 1)  # the second is read ahead, waiting its turn
        monkeypatch.setattr(clock_module, "probe", lambda _source: True)
        store.check_clock()
        eventually(lambda: store.redated == 1)
        pub.puback(1, 1, True, "Success")
        eventually(lambda: len(link.sent) == 2)
        sent = json.loads(link.messages[1].payload)
        assert (sent["seq"], sent["clock_synced"]) == (second.seq, True)
        before = json.loads(link.messages[0].payload)  # sent before: as it was then
        assert (before["seq"], before["clock_synced"]) == (first.seq, False)
    finally:
        pub.stop()


class ReadThenWait(OutboxReader):
    """Runs ``after_read`` once, between the next read of the lane and its return: the moment
    a scheduler may pick to let another thread commit."""

    def __init__(self, path: Path, cipher: EventCipher) -> None:
        super().__init__(path, cipher)
        self.after_read: tuple[Lane, Callable[[list[StoredEvent]], None]] | None = None

    def read(self, lane: Lane, after_seq: int, limit: int) -> Page:
        page = super().read(lane, after_seq, limit)
        if self.after_read is not None and self.after_read[0] is lane:
            hook = self.after_read[1]
            self.after_read = None
            hook(page.events)
        return page


def test_an_acknowledged_event_deleted_during_a_re_read_is_not_sent_again(store: Store) -> None:
    first, second = (store.record(Event(RECORD, {"n": n})) for n in range(2))
    link = Link()
    assert store.cipher is not None
    reader = ReadThenWait(store.path, store.cipher)
    pub = publisher(store, link, lambda: reader)
    pub.start()
    gate = threading.Event()
    try:
        pub.link_up(1)
        eventually(lambda: len(link.sent) == 2)
        store.write(lambda _conn: gate.wait(10))  # the writer holds the deletion back
        pub.puback(1, 1, True, "Success")
        eventually(lambda: pub.events_acked == 1)

        def commit_the_deletion(rows: list[StoredEvent]) -> None:
            assert first.seq in [r.seq for r in rows]  # read while still pending
            gate.set()
            eventually(lambda: store.usage[Lane.P1].count == 1)
            store.write(lambda _conn: None).result(10)  # a later commit: its callbacks ran

        reader.after_read = (Lane.P1, commit_the_deletion)
        pub.link_down(1)
        pub.link_up(2)  # rewind: everything not acknowledged is read again
        eventually(lambda: (2, second.seq) in link.sent)
        assert (2, first.seq) not in link.sent, "an acknowledged event was sent again"
    finally:
        gate.set()
        pub.stop()


def test_an_alarm_committed_while_its_lane_is_read_is_sent(store: Store) -> None:
    """The store's commit, on its own thread, says the lane has more while the publisher is
    reading it: the read's end must not take that back, or the alarm would wait for the next."""
    first = store.record(Event(ALARM, {"n": 1}))
    link = Link()
    assert store.cipher is not None
    reader = ReadThenWait(store.path, store.cipher)
    late: list[StoredEvent] = []
    reader.after_read = (Lane.P0, lambda _rows: late.append(store.record(Event(ALARM, {"n": 2}))))
    pub = publisher(store, link, lambda: reader)
    pub.start()
    try:
        pub.link_up(1)
        eventually(lambda: (1, first.seq) in link.sent and bool(late))
        eventually(lambda: (1, late[0].seq) in link.sent, timeout=5)
    finally:
        pub.stop()


class FailsWhenTold(OutboxReader):
    """Its next read fails once ``fail_next`` is set: the outbox cannot be read once (a
    damaged page, another program's exclusive lock)."""

    def __init__(self, path: Path, cipher: EventCipher) -> None:
        super().__init__(path, cipher)
        self.fail_next = False

    def read(self, lane: Lane, after_seq: int, limit: int) -> Page:
        if self.fail_next:
            self.fail_next = False
            raise sqlite3.OperationalError("disk I/O error")
        return super().read(lane, after_seq, limit)


def test_a_turn_that_cannot_read_the_outbox_does_not_stop_publishing(store: Store) -> None:
    """The thread used to end there, with the link up and health published: nothing sent,
    and nothing said but a service "unhealthy"."""
    alarm = store.record(Event(ALARM, {"device": "A1"}))
    link = Link()
    assert store.cipher is not None
    reader = FailsWhenTold(store.path, store.cipher)
    reader.fail_next = True
    pub = publisher(store, link, lambda: reader)
    pub.start()
    try:
        pub.link_up(1)
        eventually(lambda: (1, alarm.seq) in link.sent)
        pub.puback(1, 1, True, "Success")
        eventually(lambda: store.usage[Lane.P0].count == 0)
        assert not reader.fail_next and pub.health()["faults"] == 1 and pub.healthy()
    finally:
        pub.stop()


def test_a_turn_that_fails_on_a_live_connection_sends_nothing_in_flight_again(
    store: Store,
) -> None:
    """The connection is still up and the broker will acknowledge what it has: sending it
    again would reach the platform twice, and its PUBACK was thrown away unread."""
    first = store.record(Event(ALARM, {"n": 1}))
    link = Link()
    assert store.cipher is not None
    reader = FailsWhenTold(store.path, store.cipher)
    pub = publisher(store, link, lambda: reader)
    pub.start()
    try:
        pub.link_up(1)
        eventually(lambda: link.sent == [(1, first.seq)])
        reader.fail_next = True
        second = store.record(Event(ALARM, {"n": 2}))  # its read fails, the next one works
        eventually(lambda: (1, second.seq) in link.sent)
        pub.puback(1, 1, True, "Success")
        pub.puback(1, 2, True, "Success")
        eventually(lambda: store.usage[Lane.P0].count == 0)
        assert link.sent == [(1, first.seq), (1, second.seq)]
        assert pub.health()["faults"] == 1 and pub.events_acked == 2
    finally:
        pub.stop()


def test_events_acknowledged_while_the_disk_is_full_are_not_sent_again(
    small_disk: Path,
) -> None:
    """Their deletion fails on the full disk: they were sent again at every reconnect, and
    stayed pending after the disk had room again. Now they are kept out of every rewind
    and deleted once there is room."""
    cfg = StoreSection(housekeeping_interval_s=3600, reserve_mb=0, min_free_disk_mb=0)
    clock = ManualClock()
    store = Store(cfg, small_disk / "g.db", clock, ClockSync("never", 60))
    store.start()
    alarms = [store.record(Event(ALARM, {"n": n})).seq for n in range(5)]
    filler = fill(small_disk)
    link = Link()
    pub = publisher(store, link, store.reader)
    pub.start()
    try:
        pub.link_up(1)
        eventually(lambda: [seq for _, seq in link.sent] == alarms)
        for mid in range(1, 6):
            pub.puback(1, mid, True, "Success")
        eventually(lambda: pub.events_acked == 5)
        pub.link_down(1)
        pub.link_up(2)
        time.sleep(0.5)  # a reconnect's rewind takes milliseconds
        assert all(generation == 1 for generation, _ in link.sent)
        assert store.usage[Lane.P0].count == 5  # not deleted: no room to write that
        filler.unlink()

        def deleted() -> bool:
            clock.advance(1000)  # the retries' wait
            return store.usage[Lane.P0].count == 0

        eventually(deleted)
        assert all(generation == 1 for generation, _ in link.sent)
    finally:
        pub.stop()
        store.stop()


def test_alarms_behind_a_read_of_rows_that_do_not_open_are_sent(store: Store) -> None:
    """A damaged stretch of the card as long as a whole read: the rows are passed over and
    the alarms behind them still go, as do those recorded later."""
    damaged = [
        r.result(10).seq for r in [store.submit(Event(ALARM, {"n": n})) for n in range(PREFETCH)]
    ]
    readable = [store.record(Event(ALARM, {"n": n})).seq for n in range(3)]
    with sqlite3.connect(store.path) as conn:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.executemany(
            "UPDATE events SET data = ? WHERE seq = ?", [(b"\x01" + bytes(40), s) for s in damaged]
        )
    link = Link()
    pub = publisher(store, link, store.reader)
    pub.start()
    try:
        pub.link_up(1)
        eventually(lambda: [seq for _, seq in link.sent] == readable)
        later = store.record(Event(ALARM, {"n": "later"})).seq
        eventually(lambda: (1, later) in link.sent)
    finally:
        pub.stop()


def test_a_decision_recorded_before_its_schema_gained_fields_is_sent_meeting_it(
    store: Store,
) -> None:
    """A backlog from before an upgrade: a meal record without confusable_with, confirmable
    and learned_from failed the contract that now requires them, and a consumer that checks
    dropped it. They are filled in with what such a record meant."""
    old = {
        "outcome": "accepted", "camera": "counter-1", "track": 3, "elder_id": "E-0001",
        "score": 0.71, "margin": 0.2, "candidates": [], "frames_used": 3, "frames_seen": 5,
        "liveness": 0.98, "reason": None, "audit_frame": False, "models": {},
        "policy": {}, "timings_ms": {},
    }  # fmt: skip
    before = store.record(Event(FACE_DECISION, old))
    recent = store.record(Event(FACE_DECISION, {**old, "learned_from": "01a2-e", "track": 4}))
    link = Link()
    pub = Publisher(
        MqttSection(), store, store.reader, Topics("e", "s", "g"), send=link.send,
        drop=lambda g, r: None, added={FACE_DECISION.name: FACE_DECISION.added},
    )  # fmt: skip
    pub.start()
    try:
        pub.link_up(1)
        eventually(lambda: len(link.messages) == 2)
    finally:
        pub.stop()
    sent = {json.loads(m.payload)["seq"]: json.loads(m.payload)["data"] for m in link.messages}
    assert sent[before.seq] == {
        **old,
        "confusable_with": [],
        "confirmable": False,
        "learned_from": None,
    }
    assert sent[recent.seq]["learned_from"] == "01a2-e"  # a field it has is left as it is
