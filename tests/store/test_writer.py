from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.clock as clock_module
from gateway.clock import ClockSync, SystemClock
from gateway.config import StoreSection
from gateway.events import Event, Lane, StoredEvent
from gateway.store import (
    Backlogged,
    Delivered,
    DomainWrite,
    StorageFull,
    Store,
    StoreClosed,
    StoreError,
    Withdrawn,
    db,
    read_stats,
    writer,
)
from gateway.store.writer import _STOP, Receipt
from tests.store.conftest import MEAL, SEEN, SOS, StoreFactory
from tests.support.clock import ManualClock
from tests.support.events import sighting
from tests.support.wait import eventually

MB = 1024 * 1024


def committed_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT event_id FROM events")}


def test_record_returns_only_once_the_event_is_committed(make_store: StoreFactory) -> None:
    store = make_store()
    ev = Event(SOS, {"band": "A1B2C3D4E5F6"})
    stored = store.record(ev)
    # Another connection (another process, after a crash) sees it as soon as record() returns.
    assert ev.event_id in committed_ids(store.path)
    assert stored.seq == 1 and stored.session == 1 and stored.lane is Lane.P0
    assert stored.data_json == '{"band":"A1B2C3D4E5F6"}'


def test_concurrent_producers_share_commits_and_get_unique_seqs(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    results: list[int] = []
    lock = threading.Lock()

    def produce() -> None:
        futures = [store.submit(Event(SEEN, {"i": i})) for i in range(2000)]
        seqs = [f.result().seq for f in futures]
        with lock:
            results.extend(seqs)

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 8001))
    assert store.commits < 8000 / 4


def test_seq_and_session_survive_restarts_and_are_never_reused(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store()
    seqs = [store.record(Event(SEEN, {"i": i})).seq for i in range(5)]
    # Delivered telemetry is deleted, so MAX(seq) in the table falls back: seq must not.
    store.mark_delivered([Delivered(s, Lane.P2) for s in seqs]).result()
    store.stop()
    again = make_store(tmp_path / "g.db")
    assert again.session == 2 and again.previous_stop_clean
    assert again.record(Event(SEEN, {"i": 5})).seq == 6


def test_domain_row_commits_with_its_event_or_not_at_all(make_store: StoreFactory) -> None:
    store = make_store()
    store.write(lambda c: c.execute("CREATE TABLE meals (event_id TEXT PRIMARY KEY, elder TEXT)"))
    ok = Event(MEAL, {"elder": "E1"})
    store.record(ok, [DomainWrite("INSERT INTO meals VALUES (?, ?)", (ok.event_id, "E1"))])
    # A domain write that fails takes its event with it, and only its event.
    bad = Event(MEAL, {"elder": "E1"})
    futures = [
        store.submit(Event(SEEN, {"i": 1})),
        store.submit(bad, [DomainWrite("INSERT INTO meals VALUES (?, ?)", (ok.event_id, "x"))]),
        store.submit(Event(SEEN, {"i": 2})),
    ]
    with pytest.raises(sqlite3.IntegrityError):
        futures[1].result()
    assert futures[0].result().seq < futures[2].result().seq
    ids = committed_ids(store.path)
    assert ok.event_id in ids and bad.event_id not in ids
    assert store.usage[Lane.P1].count == 1


def test_an_event_refused_for_lack_of_disk_leaves_no_domain_row(
    make_store: StoreFactory,
) -> None:
    free = {"bytes": 10 * MB}
    store = make_store(free_disk=lambda _p: free["bytes"], min_free_disk_mb=5)
    store.write(lambda c: c.execute("CREATE TABLE meals (event_id TEXT PRIMARY KEY, elder TEXT)"))
    free["bytes"] = 1 * MB  # below the floor, and no telemetry to make room from
    meal = Event(MEAL, {"elder": "E1"})
    with pytest.raises(StorageFull):
        store.record(meal, [DomainWrite("INSERT INTO meals VALUES (?, ?)", (meal.event_id, "E1"))])
    rows = store.write(lambda c: c.execute("SELECT event_id FROM meals").fetchall()).result()
    assert rows == []  # no meal settled whose event the platform will never hear of
    free["bytes"] = 10 * MB
    store.record(meal, [DomainWrite("INSERT INTO meals VALUES (?, ?)", (meal.event_id, "E1"))])
    assert meal.event_id in committed_ids(store.path)


def test_the_same_event_id_is_recorded_once(make_store: StoreFactory) -> None:
    store = make_store()
    ev = Event(SOS, {"band": "A1"})
    store.record(ev)
    with pytest.raises(sqlite3.IntegrityError):
        store.record(ev)
    assert store.usage[Lane.P0].count == 1


def test_p2_over_quota_evicts_its_oldest_and_counts(make_store: StoreFactory) -> None:
    store = make_store(lanes={"p2": {"quota_mb": 0.05}})
    first = [store.record(Event(SEEN, {"i": i, "pad": "x" * 100})) for i in range(400)]
    alarm = store.record(Event(SOS, {"band": "A1"}))
    assert store.usage[Lane.P2].bytes <= 0.05 * MB
    evicted = store.counters["evicted_quota_p2"]
    assert evicted > 0 and store.usage[Lane.P2].count == 400 - evicted
    reader = store.reader()
    left = reader.pending(Lane.P2, 0, 1000)
    # Oldest first: what is left is exactly the newest events, in order.
    assert [e.seq for e in left] == [e.seq for e in first[evicted:]]
    assert [e.event_id for e in reader.pending(Lane.P0, 0, 10)] == [alarm.event_id]
    reader.close()


def test_telemetry_at_its_quota_through_an_outage_logs_its_evictions_once_a_minute(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """At the quota every commit of telemetry evicts: a line each would be one a second to
    the SD card for as long as the outage lasts. The counter still counts every event."""
    store = make_store(lanes={"p2": {"quota_mb": 0.02}})
    for i in range(100):
        store.record(Event(SEEN, {"i": i, "pad": "x" * 100}))
    before = store.counters["evicted_quota_p2"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="gateway.store.writer"):
        for i in range(100):
            store.record(Event(SEEN, {"later": i, "pad": "x" * 100}))
    assert store.counters["evicted_quota_p2"] >= before + 100  # one or more each
    assert len([r for r in caplog.records if "evicted" in r.getMessage()]) <= 1


def test_a_quota_lowered_over_a_backlog_is_evicted_in_batches_not_in_an_alarms_commit(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """The P2 quota lowered (the disk getting tight) on a gateway with an outage's backlog:
    the alarm committed next evicts nothing, telemetry does not grow past what it holds, and
    housekeeping brings the lane within its quota a batch of batch_max_rows at a time."""
    store = make_store(batch_max_rows=100)
    sent = [store.submit(Event(SEEN, {"i": i, "pad": "x" * 100})) for i in range(2000)]
    assert all(r.result() for r in sent)
    store.stop()
    store = make_store(tmp_path / "g.db", batch_max_rows=100, lanes={"p2": {"quota_mb": 0.1}})
    backlog = store.usage[Lane.P2]
    held = (backlog.count, backlog.bytes)
    alarm = store.record(Event(SOS, {"band": "A1"}))
    assert store.counters.get("evicted_quota_p2", 0) == 0
    assert (store.usage[Lane.P2].count, store.usage[Lane.P2].bytes) == held
    newest = store.record(Event(SEEN, {"i": "new", "pad": "x" * 100}))
    assert store.usage[Lane.P2].bytes <= held[1]  # it made room for itself
    commits = store.commits
    store.housekeep()
    assert store.usage[Lane.P2].bytes <= 0.1 * MB
    evicted = store.counters["evicted_quota_p2"]
    assert evicted > 1000 and store.usage[Lane.P2].count == held[0] + 1 - evicted
    assert store.commits - commits >= evicted // 100  # no commit evicted more than 100
    reader = store.reader()
    assert [e.seq for e in reader.pending(Lane.P0, 0, 10)] == [alarm.seq]
    assert reader.pending(Lane.P2, 0, 1000)[-1].seq == newest.seq
    reader.close()


def test_an_outages_expired_telemetry_and_old_journal_go_in_batches(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    """A backlog expiring (or a journal past retention) all at once is removed a batch of
    batch_max_rows per commit, each short enough for an alarm to wait for."""
    store = make_store(
        batch_max_rows=100, delivered_retention_days=0.0005, lanes={"p2": {"ttl_s": 60}}
    )
    seen = [store.submit(Event(SEEN, {"i": i})) for i in range(1000)]
    alarms = [store.submit(Event(SOS, {"i": i})) for i in range(500)]
    assert all(r.result() for r in seen)
    store.mark_delivered([Delivered(r.result().seq, Lane.P0) for r in alarms]).result()
    clock.advance(61_000)
    commits = store.commits
    store.housekeep()
    assert store.counters["expired_p2"] == 1000 and store.usage[Lane.P2].count == 0
    assert committed_ids(store.path) == set()
    assert store.commits - commits >= 15


def test_p0_and_p1_over_quota_are_kept_and_raise_pressure(make_store: StoreFactory) -> None:
    store = make_store(lanes={"p0": {"quota_mb": 0.01}, "p1": {"quota_mb": 0.01}})
    for i in range(200):
        store.record(Event(SOS, {"i": i, "pad": "x" * 100}))
    assert store.usage[Lane.P0].count == 200
    assert store.pressure == [Lane.P0]
    assert "storage_pressure" in store.health() and store.health()["storage_pressure"] == ["p0"]
    reader = store.reader()
    delivered = reader.pending(Lane.P0, 0, 1000)
    reader.close()
    store.mark_delivered([Delivered(e.seq, e.lane) for e in delivered]).result()
    assert store.pressure == []


def test_below_the_disk_floor_alarms_take_room_from_telemetry(make_store: StoreFactory) -> None:
    free = {"bytes": 10 * MB}
    store = make_store(free_disk=lambda _p: free["bytes"], min_free_disk_mb=5)
    for i in range(20):
        store.record(Event(SEEN, {"i": i}))
    free["bytes"] = 1 * MB  # the disk is now below the floor
    alarm = store.record(Event(SOS, {"band": "A1"}))
    assert alarm.seq == 21
    assert store.counters["evicted_disk_p2"] >= 1
    # Telemetry replaces older telemetry (a ring) while there is any to replace.
    while store.usage[Lane.P2].count:
        store.record(Event(MEAL, {"elder": "E"}))
    with pytest.raises(StorageFull):
        store.record(Event(SOS, {"band": "A2"}))
    with pytest.raises(StorageFull):
        store.record(Event(SEEN, {"i": 99}))
    assert store.counters["refused_p0"] == 1 and store.counters["refused_p2"] == 1
    free["bytes"] = 10 * MB
    assert store.record(Event(SOS, {"band": "A2"})).lane is Lane.P0


def test_a_message_below_the_disk_floor_is_written_whole_with_its_alarm(
    make_store: StoreFactory,
) -> None:
    """A panel's message of an alarm and a status report, on a site with nothing pending and
    little disk: both are written and answered once. Refusing the status would NAK the
    message, and each resend would write the alarm again under a new id."""
    free = {"bytes": 10 * MB}
    store = make_store(free_disk=lambda _p: free["bytes"], min_free_disk_mb=5, reserve_mb=1)
    assert store.health()["disk_reserve"] == "held"
    free["bytes"] = 1 * MB
    message = store.wait(store.submit_all([Event(SOS, {"zone": 1}), Event(SEEN, {"n": 1})]), 10)
    assert [e.lane for e in message] == [Lane.P0, Lane.P2]
    assert committed_ids(store.path) == {e.event_id for e in message}
    assert not any(name.startswith("refused") for name in store.counters)


def test_ttl_expires_pending_telemetry_by_running_time(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    store = make_store(lanes={"p2": {"quota_mb": 10, "ttl_s": 60}})
    old = store.record(Event(SEEN, {"i": 0}))
    alarm = store.record(Event(SOS, {"band": "A1"}))
    clock.advance(30_000)
    new = store.record(Event(SEEN, {"i": 1}))
    clock.advance(31_000)
    store.housekeep()
    reader = store.reader()
    assert [e.seq for e in reader.pending(Lane.P2, 0, 10)] == [new.seq]
    assert [e.seq for e in reader.pending(Lane.P0, 0, 10)] == [alarm.seq]
    reader.close()
    assert store.counters["expired_p2"] == 1 and old.event_id not in committed_ids(store.path)


def test_a_ttl_of_0_keeps_telemetry_until_the_quota_evicts_it(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    store = make_store(lanes={"p2": {"ttl_s": 0}})
    seen = store.record(Event(SEEN, {"i": 0}))
    clock.advance(400 * 86_400_000)
    store.housekeep()
    assert seen.event_id in committed_ids(store.path)
    assert store.counters.get("expired_p2", 0) == 0


def test_delivered_alarms_stay_in_the_journal_telemetry_does_not(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    store = make_store(delivered_retention_days=1)
    alarm = store.record(Event(SOS, {"band": "A1"}))
    seen = store.record(Event(SEEN, {"i": 1}))
    store.mark_delivered([Delivered(alarm.seq, Lane.P0), Delivered(seen.seq, Lane.P2)]).result()
    assert committed_ids(store.path) == {alarm.event_id}
    clock.advance(86_400_000 + 1)
    store.housekeep()
    assert committed_ids(store.path) == set()


def test_outbox_stats_reads_a_running_store(make_store: StoreFactory, clock: ManualClock) -> None:
    store = make_store()
    store.record(Event(SOS, {"band": "A1"}))
    clock.advance(90_000)
    store.record(Event(SEEN, {"i": 1}))
    stats = read_stats(store.path).as_dict()
    assert stats["session"] == 1
    assert stats["lanes"]["p0"]["pending"] == 1
    assert stats["lanes"]["p0"]["oldest_age_s"] == pytest.approx(90, abs=0.01)
    assert stats["lanes"]["p2"]["pending"] == 1


def test_an_alarm_does_not_wait_behind_the_deletion_of_delivered_telemetry(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    seen = [store.submit(Event(SEEN, {"i": i})) for i in range(20_000)]
    stored = [r.result() for r in seen]
    acks = [
        store.mark_delivered([Delivered(e.seq, e.lane) for e in stored[i : i + 500]])
        for i in range(0, len(stored), 500)
    ]
    store.record(Event(SOS, {"band": "A1"}))
    done_when_alarm_committed = sum(a.done() for a in acks)
    assert done_when_alarm_committed < len(acks) // 2
    assert sum(a.result() for a in acks) == 20_000


class LingerUntilNext(queue.SimpleQueue[object]):
    """The writer's queue, on which lingering for more rows waits for the next item however
    long it takes, so the test decides what arrives meanwhile; ``lingering`` says it waits."""

    def __init__(self) -> None:
        self.lingering = threading.Event()

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        if timeout is not None:
            self.lingering.set()
        return super().get(block)


def test_stop_while_the_writer_lingers_for_a_batch(tmp_path: Path, clock: ManualClock) -> None:
    cfg = StoreSection(batch_linger_ms=200, housekeeping_interval_s=3600)
    store = Store(cfg, tmp_path / "g.db", clock, ClockSync("never", 60))
    waits = LingerUntilNext()
    store._queue = waits
    store.start()
    receipt = store.submit(Event(SEEN, {"i": 1}))
    assert waits.lingering.wait(10)
    stopper = threading.Thread(target=store.stop, daemon=True)
    stopper.start()  # the stop signal is what the lingering writer takes next
    stopper.join(30)
    hung = stopper.is_alive()
    if hung:
        waits.put(_STOP)  # end a writer that dropped the signal: fail the test, do not hang it
    assert not hung, "stop() did not return"
    assert receipt.done() and receipt.exception() is None
    assert committed_ids(tmp_path / "g.db") == {receipt.result().event_id}


def test_sightings_share_a_commit_and_an_alarm_or_an_acknowledgement_does_not_wait(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Every commit writes several pages to the SD card: telemetry nobody waits for is
    committed together, but an alarm, or an event whose source waits to be acknowledged,
    is committed at once and takes the waiting sightings with it."""
    store = Store(
        StoreSection(housekeeping_interval_s=3600), tmp_path / "g.db", clock, ClockSync("never", 60)
    )
    waits = LingerUntilNext()  # the writer lingers until the test sends what comes next
    store._queue = waits
    store.start()
    try:
        acked = store.submit(Event(SEEN, {"i": 0}), waited=True).result(10)  # no lingering
        before = store.commits
        sightings = [store.submit(Event(SEEN, {"i": i})) for i in range(1, 4)]
        assert waits.lingering.wait(10)
        assert not any(r.done() for r in sightings)
        alarm = store.submit(Event(SOS, {"band": "A1"})).result(10)
        assert all(r.done() for r in sightings) and store.commits == before + 1
        assert [r.result().seq for r in sightings] == [2, 3, 4] and alarm.seq == 5
        assert acked.seq == 1
    finally:
        store.stop()


def test_deliveries_of_telemetry_ride_along_with_the_next_events_but_not_with_an_alarm(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A deletion after delivery writes the same pages as the next events: one commit for
    both. An alarm's commit stays short, and a stop commits whatever waits."""
    store = Store(
        StoreSection(housekeeping_interval_s=3600), tmp_path / "g.db", clock, ClockSync("never", 60)
    )
    waits = LingerUntilNext()
    store._queue = waits
    store.start()
    try:
        seen = [store.submit(Event(SEEN, {"i": i}), waited=True).result(10) for i in range(2)]
        before = store.commits
        first = store.mark_delivered([Delivered(seen[0].seq, Lane.P2)])
        assert waits.lingering.wait(10) and not first.done()
        store.record(Event(MEAL, {"meal": 1}))
        assert first.result(10) == 1 and store.commits == before + 1
        assert store.usage[Lane.P2].count == 1
        second = store.mark_delivered([Delivered(seen[1].seq, Lane.P2)])
        store.record(Event(SOS, {"band": "A1"}))
        assert not second.done()  # not in the alarm's commit
    finally:
        store.stop()
    assert second.result(10) == 1 and store.usage[Lane.P2].count == 0


def test_an_alarm_handed_over_while_deliveries_wait_to_ride_along_is_not_held_with_them(
    make_store: StoreFactory,
) -> None:
    """Deliveries of telemetry wait up to telemetry_linger_ms for events to ride along with.
    An alarm handed over during a commit, beside such a delivery, waited with it: for the next
    item on the queue, or to the end of the linger."""
    store = make_store(telemetry_linger_ms=5000)
    seen = store.record(Event(SEEN, {"i": 0}))
    writer_held, release = threading.Event(), threading.Event()

    def hold(_conn: sqlite3.Connection) -> None:
        writer_held.set()
        release.wait(10)

    store.write(hold)
    assert writer_held.wait(10)
    delivered = store.mark_delivered([Delivered(seen.seq, Lane.P2)])
    alarm = store.submit(Event(SOS, {"band": "A1"}))
    release.set()
    assert alarm.result(timeout=2.5).seq == seen.seq + 1  # half the linger, at most
    assert not delivered.done()  # not in the alarm's commit: in the next one of events
    store.record(Event(MEAL, {"meal": 1}))
    assert delivered.result(0) == 1


def test_events_say_the_clock_is_synchronised_within_check_interval_s(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Pi boots without a clock; once NTP has set it, events say so within
    `[clock] check_interval_s`, however seldom the store keeps house."""
    state = {"synced": False}
    monkeypatch.setattr(clock_module, "probe", lambda _source: state["synced"])  # adjtimex
    section = StoreSection.model_validate({"housekeeping_interval_s": 3600})
    store = Store(section, tmp_path / "g.db", clock, ClockSync("kernel", 1))
    store.start()
    try:
        assert store.record(Event(SOS, {"band": "A1"})).clock_synced is False
        state["synced"] = True  # NTP sets the clock
        eventually(lambda: store.record(Event(SOS, {"band": "A1"})).clock_synced, timeout=5)
    finally:
        store.stop()


def test_events_stamped_before_the_clock_was_set_are_dated_again_once_it_is(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Pi booted with yesterday evening's time (fake-hwclock) and NTP answered only at
    08:00: the meal served at 07:50 is sent dated 07:50, not the evening before. An event of
    an earlier session cannot be dated again (the time the gateway was off is not known)."""
    state = {"synced": False}
    monkeypatch.setattr(clock_module, "probe", lambda _source: state["synced"])  # adjtimex
    section = StoreSection.model_validate({"housekeeping_interval_s": 3600})
    path = tmp_path / "g.db"
    earlier_session = Store(section, path, clock, ClockSync("kernel", 3600))
    earlier_session.start()
    old = earlier_session.record(Event(MEAL, {"elder": "E0"}))
    earlier_session.stop()
    store = Store(section, path, clock, ClockSync("kernel", 3600))
    store.start()
    try:
        meal = store.record(Event(MEAL, {"elder": "E1"}))
        assert meal.clock_synced is False
        clock.advance(10 * 60_000)
        clock.step_wall(12 * 3_600_000)  # NTP: the clock was 12 hours behind
        state["synced"] = True
        store.check_clock()
        eventually(lambda: store.redated == 1)
        rows = {e.seq: e for e in store.reader().read(Lane.P1, 0, 10).events}
        assert rows[meal.seq].clock_synced is True
        assert rows[meal.seq].ts_ms == clock.wall_ms() - 10 * 60_000
        assert (rows[old.seq].ts_ms, rows[old.seq].clock_synced) == (old.ts_ms, False)
        store.check_clock()  # still synchronised: nothing to date again
        assert store.redated == 1
    finally:
        store.stop()


def test_a_long_backlog_is_dated_again_in_short_commits_all_of_it(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hours offline before NTP leave many rows: they are dated again in commits of
    REDATE_SEQS (an alarm waits for one at most), one after the other to the last."""
    monkeypatch.setattr(writer, "REDATE_SEQS", 10)
    state = {"synced": False}
    monkeypatch.setattr(clock_module, "probe", lambda _source: state["synced"])
    section = StoreSection.model_validate({"housekeeping_interval_s": 3600})
    store = Store(section, tmp_path / "g.db", clock, ClockSync("kernel", 3600))
    store.start()
    try:
        backlog = store.wait([store.submit(Event(SEEN, {"n": n})) for n in range(95)], 10)
        clock.advance(60_000)
        clock.step_wall(3_600_000)
        state["synced"] = True
        store.check_clock()
        eventually(lambda: store.redated == 1)
        rows = store.reader().read(Lane.P2, 0, 200).events
        assert len(rows) == 95 and all(e.clock_synced for e in rows)
        assert [e.ts_ms for e in rows] == [e.ts_ms + 3_600_000 for e in backlog]
    finally:
        store.stop()


def test_one_damaged_recent_event_does_not_hide_the_older_ones(make_store: StoreFactory) -> None:
    """What a restart remembers (the elders settled in the last minute) is read newest first:
    a row that does not open (damaged on the card) is passed over, not the end of the read."""
    store = make_store()
    first, second, third = (store.record(Event(MEAL, {"elder": e})) for e in ("E1", "E2", "E3"))
    with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute(
            "UPDATE events SET data = (SELECT data FROM events WHERE seq = ?) WHERE seq = ?",
            (third.seq, second.seq),
        )
    assert [data["elder"] for _, data in store.recent(MEAL.name, 60_000)] == ["E3", "E1"]
    assert first.seq < second.seq < third.seq


class _WriterFault(BaseException):
    """A fault that ends the writer (nothing in the writer catches it)."""


def test_an_event_queued_as_the_writer_fails_is_refused_at_once_not_left_waiting(
    make_store: StoreFactory,
) -> None:
    """A device's frame handed over just as the writer fails gets StoreClosed (its NAK) at
    once, not after the record timeout with its receipt never settled."""
    store = make_store()
    in_write, fail, queuing, go = (threading.Event() for _ in range(4))
    real_queue = store._queue

    class Queue:
        def put(self, item: object) -> None:
            if threading.current_thread().name == "producer":
                queuing.set()
                go.wait(10)
            real_queue.put(item)

        def __getattr__(self, name: str) -> object:
            return getattr(real_queue, name)

    def faulty(_conn: sqlite3.Connection) -> None:
        in_write.set()
        fail.wait(10)
        raise _WriterFault("writer fault")

    store._queue = Queue()  # type: ignore[assignment]
    store.write(faulty)
    assert in_write.wait(10)
    receipts: list[Receipt[StoredEvent]] = []
    producer = threading.Thread(
        target=lambda: receipts.append(store.submit(Event(SOS, {"device": "A1"}))),
        name="producer",
        daemon=True,
    )
    producer.start()
    assert queuing.wait(10)  # the producer is past the store's checks, in the queue's put
    fail.set()
    writer = store._thread
    assert writer is not None
    try:
        writer.join(1.0)  # the writer fails (or waits for the put under way)
        go.set()
        producer.join(10)
        with pytest.raises(StoreClosed):
            receipts[0].result(5)
        assert not store.healthy()
    finally:
        go.set()
        store.stop()  # its housekeeping threads, which a failed writer leaves running


@pytest.mark.parametrize("batch_max_rows", [1, 512], ids=["behind-it", "in-its-commit"])
def test_an_event_taken_by_the_writer_as_it_fails_is_refused_not_left_waiting(
    make_store: StoreFactory, batch_max_rows: int
) -> None:
    """An alarm the writer had taken off its queue, into the commit that fails or waiting
    for the next one, gets StoreClosed (its NAK) at once, not after the record timeout."""
    store = make_store(batch_max_rows=batch_max_rows)
    holding, go = threading.Event(), threading.Event()

    def hold(_conn: sqlite3.Connection) -> None:
        holding.set()
        go.wait(10)

    def faulty(_conn: sqlite3.Connection) -> None:
        raise _WriterFault("writer fault")

    store.write(hold)
    assert holding.wait(10)
    store.write(faulty)
    alarm = store.submit(Event(SOS, {"device": "A1"}))
    go.set()  # the writer takes both at once after the held commit
    try:
        with pytest.raises(StoreClosed):
            alarm.result(5)
        assert not store.healthy()
    finally:
        store.stop()
    assert SOS.name not in {
        r[0] for r in sqlite3.connect(store.path).execute("SELECT type FROM events")
    }


def test_a_commit_listener_that_raises_does_not_stop_the_store(
    make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener's fault after a commit ended the writer, and every later event (an SOS
    among them) was refused; now the events are still stored, the other listeners still told,
    and the fault logged once per 30 s by type and line, without its message."""
    store = make_store()
    told: list[set[Lane]] = []

    def failing(lanes: set[Lane]) -> None:
        raise RuntimeError("resident Wang Fang")

    store.subscribe(failing)
    store.subscribe(told.append)
    try:
        with caplog.at_level("WARNING", logger="gateway.store.writer"):
            first = store.record(Event(SEEN, {"device": "A1"}))
            second = store.record(Event(SOS, {"device": "A1"}))
            eventually(lambda: told == [{Lane.P2}, {Lane.P0}])  # told after record() returns
        assert {first.event_id, second.event_id} <= committed_ids(store.path)
        assert store.healthy()
        (line,) = [r.getMessage() for r in caplog.records]
        assert "listener" in line and "RuntimeError at test_writer.py:" in line
        assert "Wang" not in line
    finally:
        store.stop()  # its housekeeping threads, which a failed writer leaves running


def wal_frames(path: Path, start: int) -> list[bytes]:
    """The pages of the WAL's valid frames from byte ``start`` on, in the order written."""
    wal = path.with_name(path.name + "-wal").read_bytes()
    page_size = int.from_bytes(wal[8:12], "big")
    salt, pages, at = wal[16:24], [], 32
    while at + 24 + page_size <= len(wal) and wal[at + 8 : at + 16] == salt:
        if at >= start:
            pages.append(wal[at + 24 : at + 24 + page_size])
        at += 24 + page_size
    return pages


def test_a_second_of_sightings_writes_a_few_kib_to_the_sd_card(make_store: StoreFactory) -> None:
    """What wears the SD card: at 20 sightings a second, each second's commit holds them and
    the deletion of the second before's, delivered. Every page a commit touches is written
    whole to the WAL: with 4 KiB pages that was 52 KiB a second, and with secure_delete ON
    each page the deletion freed was written again, zeroed."""
    store = make_store()
    writer_held, release = threading.Event(), threading.Event()

    def hold(_conn: sqlite3.Connection) -> None:
        writer_held.set()
        release.wait(10)

    wal = store.path.with_name(store.path.name + "-wal")
    grown: list[int] = []
    previous: list[StoredEvent] = []
    created = wal.stat().st_size  # the schema's creation, which frees pages of its own
    for second in range(10):
        writer_held.clear()
        release.clear()
        store.write(hold)  # what follows is queued while the writer waits: one commit
        assert writer_held.wait(10)
        before = wal.stat().st_size
        delivered = store.mark_delivered([Delivered(e.seq, e.lane) for e in previous])
        receipts = [
            store.submit(Event(SEEN, sighting(second * 20 + i)), waited=True) for i in range(20)
        ]
        release.set()
        previous = [r.result(10) for r in receipts]
        assert delivered.result(10) == (20 if second else 0)
        grown.append(wal.stat().st_size - before)
    assert sorted(grown[3:])[3] <= 32 * 1024, grown  # the median second, once pages are reused
    assert not any(page.count(0) == len(page) for page in wal_frames(store.path, created))


def test_a_quiet_journal_is_not_written_by_housekeeping_but_its_running_time_is_saved(
    make_store: StoreFactory, clock: ManualClock, tmp_path: Path
) -> None:
    store = make_store()

    def files() -> list[tuple[str, int, int]]:
        return [
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(tmp_path.glob("g.db*"))
        ]

    def saved_running_time() -> int:
        with contextlib.closing(sqlite3.connect(tmp_path / "g.db")) as conn:
            return int(conn.execute("SELECT value FROM meta WHERE key = 'steady_ms'").fetchone()[0])

    store.record(Event(SEEN, sighting(1)))  # the last event of a busy hour
    before, saved = files(), saved_running_time()
    for _ in range(6):  # a minute of a quiet site, housekept every 10 s
        clock.advance(10_000)
        store.housekeep()
    assert files() == before and saved_running_time() == saved
    clock.advance(240_000)  # five minutes: what a power cut may lose of the running time
    store.housekeep()
    assert saved_running_time() == store.steady_ms() == saved + 300_000


@contextlib.contextmanager
def shell_editing(path: Path) -> Iterator[sqlite3.Connection]:
    """An sqlite3 shell left in the middle of a change: it holds the write lock until it ends."""
    shell = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        shell.execute("BEGIN IMMEDIATE")
        yield shell
    finally:
        shell.close()


def locked_out(store: Store) -> None:
    """Wait until a commit has found the lock held past the busy timeout."""
    eventually(lambda: store.locked is not None, 10)


@pytest.fixture
def quick_lock_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(writer, "LOCKED_RETRY_MS", 100)


@pytest.mark.usefixtures("quick_lock_tries")
def test_events_waiting_for_a_lock_another_program_holds_are_all_committed_once_it_lets_go(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """What waits while the lock is held past the busy timeout, an alarm too, is committed in
    order once it lets go, none refused. (Split into one commit per event, each waited out the
    timeout in turn and was refused, an alarm every 5 s.)"""
    store = make_store(tmp_path / "g.db")
    with shell_editing(tmp_path / "g.db") as shell:
        sightings = [store.submit(Event(SEEN, {"n": n})) for n in range(20)]
        alarm = store.submit(Event(SOS, {"device": "A1"}))
        locked_out(store)
        time.sleep(1.0)  # tried again and again
        assert not alarm.done()
        assert store.lock_wait() == {"for_s": 0.2, "waiting": 21}  # the test's clock stands
        shell.execute("COMMIT")
    seqs = [r.result(10).seq for r in sightings]
    assert seqs == sorted(seqs) and alarm.result(10).seq > seqs[-1]
    assert store.usage[Lane.P2].count == 20 and store.usage[Lane.P0].count == 1
    assert store.lock_wait() is None


@pytest.mark.usefixtures("quick_lock_tries")
def test_a_record_given_up_on_is_taken_back_and_never_committed_later(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """The caller stops waiting (the counter says "not recorded", a device is NAKed): the
    event must not turn up in the journal once the lock goes, or staff who settled that meal
    by hand would see it charged twice. Whether it was in the commit being tried or still
    queued behind it, it is taken back."""
    store = make_store(tmp_path / "g.db")
    with shell_editing(tmp_path / "g.db") as shell:
        trying = store.submit(Event(MEAL, {"elder": "e-1"}), waited=True)
        time.sleep(0.1)  # in the commit being tried, most likely
        behind = store.submit(Event(MEAL, {"elder": "e-2"}), waited=True)
        started = time.monotonic()
        with pytest.raises(Withdrawn, match="did not commit in time; not written"):
            store.wait([trying, behind], 0.1)
        assert time.monotonic() - started < 0.4 + writer.SETTLE_GRACE_S
        assert isinstance(behind.exception(), Withdrawn)
        with pytest.raises(Withdrawn):
            trying.result(1)
        shell.execute("COMMIT")
    after = store.record(Event(MEAL, {"elder": "e-3"}))
    assert committed_ids(store.path) == {after.event_id}
    assert store.usage[Lane.P1].count == 1


@pytest.mark.usefixtures("quick_lock_tries")
def test_the_events_of_one_message_are_committed_or_taken_back_together(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """A source's message is ACKed for all its events or NAKed for all: none of them may be
    on disk after a NAK, or its resend records it twice. Even where a commit holds fewer rows
    than the message has events."""
    store = make_store(tmp_path / "g.db", batch_max_rows=1)
    with shell_editing(tmp_path / "g.db") as shell:
        sighting = store.submit(Event(SEEN, {"n": 0}), waited=True)
        locked_out(store)  # the sighting's commit waits for the lock; the message behind it
        message = store.submit_all([Event(SOS, {"device": "A1", "n": n}) for n in range(3)])
        with pytest.raises(Withdrawn):
            store.wait(message, 0.3)
        assert all(isinstance(r.exception(), Withdrawn) for r in message)
        shell.execute("COMMIT")
    sighting.result(10)
    commits = store.commits
    again = store.wait(
        store.submit_all([Event(SOS, {"device": "A1", "n": n}) for n in range(3)]), 10
    )
    assert store.commits == commits + 1  # one commit for the three, beyond batch_max_rows
    assert committed_ids(store.path) >= {e.event_id for e in again}
    assert store.usage[Lane.P0].count == 3


def test_a_commit_under_way_is_waited_for_not_taken_back(make_store: StoreFactory) -> None:
    """A slow commit that already holds the event ends after its caller's time: the caller
    hears the truth, that it is on disk, instead of a refusal the journal contradicts."""
    store = make_store()
    held, gate, release = threading.Event(), threading.Event(), threading.Event()
    store.write(lambda _conn: held.set() or gate.wait(10))  # the next two queue meanwhile
    held.wait(10)
    slow = store.write(lambda _conn: release.wait(10))
    meal = store.submit(Event(MEAL, {"elder": "e-1"}), waited=True)  # the same commit
    gate.set()
    eventually(lambda: meal._claimed)
    threading.Timer(0.5, release.set).start()
    [stored] = store.wait([meal], 0.2)
    assert slow.result(0) is True and stored.event_id in committed_ids(store.path)


@pytest.mark.usefixtures("quick_lock_tries")
def test_telemetry_beyond_what_may_wait_for_a_lock_is_refused_and_counted(
    make_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell left open overnight: the sightings that pile up in memory behind it are bounded,
    while alarms and events whose source waits still wait their turn."""
    monkeypatch.setattr(writer, "WAITING_MAX_WHILE_LOCKED", 5)
    store = make_store(tmp_path / "g.db", telemetry_linger_ms=0)
    with shell_editing(tmp_path / "g.db") as shell:
        first = store.submit(Event(SEEN, {"n": 0}))
        locked_out(store)
        later = [store.submit(Event(SEEN, {"n": n})) for n in range(1, 11)]
        alarm = store.submit(Event(SOS, {"device": "A1"}))
        refused = [r for r in later if r.done()]
        assert len(refused) == 5
        with pytest.raises(Backlogged, match="locked by another program"):
            refused[0].result(0)
        shell.execute("COMMIT")
    alarm.result(10)
    assert all(r.result(10).seq for r in [first, *later[:5]])
    assert store.usage[Lane.P2].count == 6 and store.counters["refused_p2"] == 5
    store.stop()
    assert read_stats(tmp_path / "g.db").lanes[Lane.P2].refused == 5


@pytest.mark.usefixtures("quick_lock_tries")
@pytest.mark.parametrize("housekeeping", [False, True])
def test_a_stop_while_another_program_holds_the_lock_refuses_what_waits_and_ends(
    make_store: StoreFactory, tmp_path: Path, housekeeping: bool
) -> None:
    """A lock held for good must not hold the stop too, nor a housekeeping pass queued
    behind it."""
    store = make_store(
        tmp_path / "g.db",
        telemetry_linger_ms=0,
        housekeeping_interval_s=1 if housekeeping else 3600,
    )
    with shell_editing(tmp_path / "g.db"):
        waiting = [store.submit(Event(SEEN, {"n": n})) for n in range(20)]
        locked_out(store)
        if housekeeping:
            time.sleep(1.2)  # a pass is queued
        stopper = threading.Thread(target=store.stop)
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive()
    for receipt in waiting:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            receipt.result(0)


def test_housekeeping_does_not_pile_up_behind_a_lock(
    make_store: StoreFactory, tmp_path: Path, quick_lock_tries: None
) -> None:
    store = make_store(tmp_path / "g.db", telemetry_linger_ms=0)
    with shell_editing(tmp_path / "g.db") as shell:
        store.submit(Event(SEEN, {"n": 0}))
        locked_out(store)
        for _ in range(3):
            store.housekeep()  # returns at once: nothing is queued behind the lock
        assert store.lock_wait() == {"for_s": 0.2, "waiting": 1}
        shell.execute("COMMIT")


@pytest.mark.parametrize("synced", [True, False])
def test_recent_events_count_the_time_switched_off_only_by_synchronised_clocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced: bool
) -> None:
    """An elder settled at 17:30, the gateway off for the night: by running time alone she
    was settled seconds ago at the next morning's start. Two synchronised clocks prove the
    night; a clock not yet set at start (a Pi has no RTC) keeps the running time's age."""
    monkeypatch.setattr(clock_module, "probe", lambda _source: True)
    clock = ManualClock()
    section = StoreSection.model_validate({"housekeeping_interval_s": 3600})
    store = Store(section, tmp_path / "g.db", clock, ClockSync("kernel", 3600))
    store.start()
    store.record(Event(MEAL, {"elder": "E1"}))
    clock.advance(5_000)
    store.stop()
    clock.step_wall(15 * 3_600_000)  # the night switched off
    monkeypatch.setattr(clock_module, "probe", lambda _source: synced)
    again = Store(section, tmp_path / "g.db", clock, ClockSync("kernel", 3600))
    again.start()
    try:
        ages = [age for age, _ in again.recent(MEAL.name, 12 * 3_600_000)]
        assert ages == ([] if synced else [5_000])
        assert [age for age, _ in again.recent(MEAL.name, 16 * 3_600_000)] == (
            [15 * 3_600_000 + 5_000] if synced else [5_000]
        )
        clock.step_wall(3_600_000)  # NTP moves the clock while it runs: no more time off
        assert again.time_off_ms() == (15 * 3_600_000 if synced else 0)
    finally:
        again.stop()


@pytest.mark.parametrize("source", ["kernel", "assume_synced"])
def test_a_clock_stepped_while_running_is_no_time_switched_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """NTP moves a wrong clock an hour forward while the gateway runs, and it restarts a few
    seconds later: the hour is no night switched off, and an elder settled just before must
    still be remembered. Nor does a clock only assumed synchronised prove any time off."""
    monkeypatch.setattr(clock_module, "probe", lambda _source: True)
    clock = ManualClock()
    section = StoreSection.model_validate({"housekeeping_interval_s": 3600})
    store = Store(section, tmp_path / "g.db", clock, ClockSync(source, 3600))
    store.start()
    store.record(Event(MEAL, {"elder": "E1"}))
    clock.advance(1_000)
    clock.step_wall(3_600_000)  # corrected while running
    store.record(Event(MEAL, {"elder": "E2"}))
    clock.advance(1_000)
    store.stop()
    if source == "assume_synced":
        clock.step_wall(15 * 3_600_000)  # and a night it cannot prove
    again = Store(section, tmp_path / "g.db", clock, ClockSync(source, 3600))
    again.start()
    try:
        assert again.time_off_ms() == 0
        assert [age for age, _ in again.recent(MEAL.name, 60_000)] == [1_000, 2_000]
    finally:
        again.stop()


def test_the_night_is_not_added_to_what_a_session_never_synchronised_stamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Yesterday synchronised; this morning the router was down all along and the clock never
    set; a restart at lunch with the network back. The gap the clocks prove holds the night
    and the morning's running: added to the morning's events too, an elder settled 90 s
    before the restart looked settled 15 hours ago (and was settled again). Only what was
    stamped before the last synchronised save gets it."""
    clock = ManualClock()
    section = StoreSection.model_validate({"housekeeping_interval_s": 3600})

    def session(synced: bool) -> Store:
        monkeypatch.setattr(clock_module, "probe", lambda _source: synced)
        store = Store(section, tmp_path / "g.db", clock, ClockSync("kernel", 3600))
        store.start()
        return store

    yesterday = session(True)
    yesterday.record(Event(MEAL, {"elder": "E2"}))
    clock.advance(5_000)
    yesterday.stop()
    clock.step_wall(15 * 3_600_000)  # the night switched off
    morning = session(False)
    clock.advance(4 * 3_600_000)
    morning.record(Event(MEAL, {"elder": "E1"}))
    clock.advance(60_000)
    morning.stop()
    clock.step_wall(30_000)  # restarted 30 s later
    lunch = session(True)
    try:
        assert lunch.time_off_ms() == 15 * 3_600_000 + 30_000
        assert [(age, d["elder"]) for age, d in lunch.recent(MEAL.name, 20 * 3_600_000)] == [
            (60_000, "E1"),
            (4 * 3_600_000 + 65_000 + 15 * 3_600_000 + 30_000, "E2"),
        ]
    finally:
        lunch.stop()


def test_a_start_that_fails_at_its_last_step_leaves_no_thread_to_keep_the_process_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second connection (for checkpoints) failing to open (no file descriptors left)
    left the writer thread running: the start failed, and the gateway could not exit."""
    store = Store(StoreSection(), tmp_path / "g.db", SystemClock(), ClockSync("never", 60))

    def refused(_path: Path, **_options: object) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(writer, "connect", refused)
    with pytest.raises(StoreError, match=r"cannot open database .* a second time"):
        store.start()
    assert not [t for t in threading.enumerate() if t.name.startswith("store-")]
