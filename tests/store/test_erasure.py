"""An erasure takes the delivered events naming the person out of the journal at once, and
those still to be delivered as soon as they are, sent meanwhile exactly as before."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.events import Event, Lane, StoredEvent
from gateway.store import Delivered, Store, StoreError, erasure, schema
from gateway.store.cipher import answer_key
from gateway.store.erasure import (
    ANSWER_ERASED,
    ErasedEvents,
    Goes,
    Journal,
    erase_answers,
    erase_events,
)
from tests.store.conftest import MEAL, SEEN, SOS, StoreFactory
from tests.store.test_cipher import raw
from tests.support.clock import ManualClock
from tests.support.journal import journal
from tests.support.wait import eventually


def _names_e1(data: Mapping[str, Any]) -> bool:
    return data.get("elder") == "E1" or "E1" in data.get("others", ())


def _journal_of(store: Store) -> Journal:
    return Journal(store.path, store.key_path)


def _deliver(store: Store, *events: StoredEvent) -> None:
    store.mark_delivered([Delivered(e.seq, e.lane) for e in events]).result(10)


def _pending(store: Store, lane: Lane) -> list[StoredEvent]:
    reader = store.reader()
    try:
        return reader.pending(lane, 0, 1000)
    finally:
        reader.close()


def _marks(path: Path) -> int:
    """Outbox rows marked to be deleted at their delivery."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE erased").fetchone()[0])


def test_delivered_events_naming_her_go_and_those_still_to_be_sent_go_once_delivered(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    hers, beside, others, pending, pending_other = (
        store.record(Event(MEAL, data))
        for data in (
            {"elder": "E1"},
            {"elder": "E2", "others": ["E1"]},
            {"elder": "E2", "others": ["E10"]},
            {"elder": "E1"},
            {"elder": "E3"},
        )
    )
    alarm = store.record(Event(SOS, {"elder": "E1"}))
    _deliver(store, hers, beside, others, alarm)

    # beside the running store, as a command run on the device would
    assert erase_events(_journal_of(store), MEAL.name, _names_e1) == ErasedEvents(2, 1)
    assert [e.seq for e in journal(store.path)] == [
        others.seq,
        pending.seq,
        pending_other.seq,
        alarm.seq,
    ]
    # the meal not yet sent still goes, as it was, in its turn
    assert _pending(store, Lane.P1) == [pending, pending_other]
    assert erase_events(_journal_of(store), MEAL.name, _names_e1) == ErasedEvents(0, 1)
    _deliver(store, pending, pending_other)
    assert [e.seq for e in journal(store.path)] == [others.seq, pending_other.seq, alarm.seq]
    assert store.counters["delivered"] == 6 and _marks(store.path) == 0
    store.record(Event(SOS, {"elder": "E3"}))  # the store writes on
    store.stop()
    no_database = Journal(store.path.with_name("none.db"), store.key_path)
    assert erase_events(no_database, "x", _names_e1) == ErasedEvents(0, 0)


def test_a_decision_marked_before_a_restart_goes_at_its_delivery_after_it(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """The mark is in the database: a power cut between the erasure and the delivery keeps
    it, and the event, read back after the restart, is the one recorded."""
    store = make_store(tmp_path / "g.db")
    pending = store.record(Event(MEAL, {"elder": "E1"}))
    theirs = store.record(Event(MEAL, {"elder": "E2"}))
    assert erase_events(_journal_of(store), MEAL.name, _names_e1) == ErasedEvents(0, 1)
    store.stop()

    store = make_store(tmp_path / "g.db")
    assert _pending(store, Lane.P1) == [pending, theirs]
    _deliver(store, pending, theirs)
    assert [e.data for e in journal(store.path)] == [{"elder": "E2"}]


def test_an_event_delivered_while_the_erasure_reads_the_journal_is_deleted_by_it(
    make_store: StoreFactory,
) -> None:
    """The erasure reads the events before its write transaction: one the writer delivers in
    between is no longer in the outbox to be marked, and is deleted as delivered."""
    store = make_store()
    pending = store.record(Event(MEAL, {"elder": "E1"}))

    def delivered_while_read(data: Mapping[str, Any]) -> bool:
        _deliver(store, pending)
        return _names_e1(data)

    assert erase_events(_journal_of(store), MEAL.name, delivered_while_read) == ErasedEvents(1, 0)
    assert journal(store.path) == [] and _marks(store.path) == 0


def test_marked_events_that_expire_or_are_evicted_leave_no_mark(
    make_store: StoreFactory, clock: ManualClock
) -> None:
    store = make_store(lanes={"p2": {"ttl_s": 60, "quota_mb": 0.05}})
    store.record(Event(SEEN, {"elder": "E1"}))
    assert erase_events(_journal_of(store), SEEN.name, _names_e1) == ErasedEvents(0, 1)
    clock.advance(61_000)
    store.housekeep()
    assert store.counters["expired_p2"] == 1
    assert journal(store.path) == [] and _marks(store.path) == 0

    hers = store.record(Event(SEEN, {"elder": "E1"}))
    assert erase_events(_journal_of(store), SEEN.name, _names_e1) == ErasedEvents(0, 1)
    others = [store.record(Event(SEEN, {"i": i, "pad": "x" * 100})) for i in range(400)]
    assert store.counters["evicted_quota_p2"] > 0
    assert hers.seq not in [e.seq for e in journal(store.path)] and _marks(store.path) == 0
    assert _pending(store, Lane.P2)[-1] == others[-1]


def test_a_database_of_schema_4_gets_the_mark_keeping_its_pending_events(
    make_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.db"
    with monkeypatch.context() as old:  # the gateway of schema 4 writes it
        old.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:4])
        old.setattr(schema, "SCHEMA_VERSION", 4)
        store = make_store(path)
        pending = store.record(Event(MEAL, {"elder": "E1"}))
        store.stop()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4

    store = make_store(path)
    assert erase_events(_journal_of(store), MEAL.name, _names_e1) == ErasedEvents(0, 1)
    assert _pending(store, Lane.P1) == [pending]
    _deliver(store, pending)
    assert journal(store.path) == [] and _marks(path) == 0
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 5


def test_an_erasure_before_the_upgraded_gateway_first_starts_brings_the_schema_up_to_date(
    make_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gateway gallery remove` right after an upgrade, before the new gateway has opened the
    journal: it is still of the old schema, without the column that marks pending events."""
    path = tmp_path / "g.db"
    with monkeypatch.context() as old:
        old.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:4])
        old.setattr(schema, "SCHEMA_VERSION", 4)
        store = make_store(path)
        delivered = store.record(Event(MEAL, {"elder": "E1"}))
        pending = store.record(Event(MEAL, {"elder": "E1"}))
        store.stop()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:  # delivered
        conn.execute("DELETE FROM outbox WHERE seq = ?", (delivered.seq,))
        conn.execute("UPDATE events SET delivered_steady_ms = 1 WHERE seq = ?", (delivered.seq,))

    assert erase_events(_journal_of(store), MEAL.name, _names_e1) == ErasedEvents(1, 1)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    store = make_store(path)
    assert _pending(store, Lane.P1) == [pending]
    _deliver(store, pending)
    assert journal(store.path) == [] and _marks(path) == 0


def test_a_journal_of_a_newer_gateway_is_left_as_it_is(make_store: StoreFactory) -> None:
    store = make_store()
    store.record(Event(MEAL, {"elder": "E1"}))
    store.stop()
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this gateway supports"):
        erase_events(_journal_of(store), MEAL.name, _names_e1)
    assert len(journal(store.path)) == 1


def test_a_wrong_key_is_refused_rather_than_finding_nobody(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store()
    delivered = store.record(Event(MEAL, {"elder": "E1"}))
    pending = store.record(Event(MEAL, {"elder": "E1"}))
    _deliver(store, delivered)
    store.stop()
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(bytes(32))
    wrong.chmod(0o600)
    with pytest.raises(StoreError, match="not the key the journal was written with"):
        erase_events(Journal(store.path, wrong), MEAL.name, _names_e1)
    assert [e.seq for e in journal(store.path)] == [delivered.seq, pending.seq]
    assert _marks(store.path) == 0


def _without_e1(data: Mapping[str, Any]) -> bool | dict[str, Any]:
    """E1's events go; another's that names her among its others is kept without her."""
    if data.get("elder") == "E1" or "E1" not in data.get("others", ()):
        return data.get("elder") == "E1"
    return {**data, "others": [e for e in data["others"] if e != "E1"]}


def test_another_persons_event_naming_her_is_kept_without_her_and_its_old_copy_overwritten(
    make_store: StoreFactory,
) -> None:
    """Delivered or still to be sent, E2's meal stays E2's (sent, then kept for review), with
    E1 taken out; the sealed copy that named her, longer than a page, is nowhere in the file
    (opened with the key, it would name her)."""
    store = make_store()
    pad = "x" * 3000  # spills onto overflow pages, which a deletion frees whole
    delivered = store.record(Event(MEAL, {"elder": "E2", "others": ["E1", "E3"], "pad": pad}))
    pending = store.record(Event(MEAL, {"elder": "E2", "others": ["E1"]}))
    _deliver(store, delivered)
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        (sealed,) = conn.execute(
            "SELECT data FROM events WHERE seq = ?", (delivered.seq,)
        ).fetchone()

    assert erase_events(_journal_of(store), MEAL.name, _without_e1) == ErasedEvents(0, 0, 2)
    assert [json.loads(e.data_json) for e in _pending(store, Lane.P1)] == [
        {"elder": "E2", "others": []}
    ]
    _deliver(store, pending)
    assert [e.data for e in journal(store.path)] == [
        {"elder": "E2", "others": ["E3"], "pad": pad},
        {"elder": "E2", "others": []},
    ]
    assert _marks(store.path) == 0
    store.stop()  # checkpointed: the older pages in the WAL written over
    left = raw(store.path)
    assert not any(sealed[i : i + 32] in left for i in range(0, len(sealed) - 32, 32))


def test_her_deleted_events_old_copies_are_not_left_in_the_wal_while_the_gateway_runs(
    make_store: StoreFactory,
) -> None:
    """The gateway running on, its WAL holds every page written since its last checkpoint:
    the sealed copy of her delivered meal was still there after the erasure, beside the key
    that opens it, until the next clean stop."""
    store = make_store()
    hers = store.record(Event(MEAL, {"elder": "E1", "pad": "y" * 3000}))
    _deliver(store, hers)
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        (sealed,) = conn.execute("SELECT data FROM events WHERE seq = ?", (hers.seq,)).fetchone()
    assert sealed[:32] in raw(store.path)  # it is on disk to begin with
    assert erase_events(_journal_of(store), MEAL.name, _names_e1) == ErasedEvents(1, 0)
    left = raw(store.path)  # the database and its WAL, the store still open
    assert not any(sealed[i : i + 32] in left for i in range(0, len(sealed) - 32, 32))
    store.record(Event(SOS, {"elder": "E3"}))  # the store writes on


def test_her_event_deleted_at_its_delivery_leaves_no_old_copy_in_the_wal(
    make_store: StoreFactory,
) -> None:
    """Her meal was still to be sent when she was erased: deleted at its delivery, the WAL's
    older frames kept its sealed copy beside the key, until the next clean stop."""
    store = make_store()
    hers = store.record(Event(MEAL, {"elder": "E1", "pad": "y" * 3000}))
    others = [store.record(Event(MEAL, {"elder": "E2", "n": n})) for n in range(3)]
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        (sealed,) = conn.execute("SELECT data FROM events WHERE seq = ?", (hers.seq,)).fetchone()
    assert erase_events(_journal_of(store), MEAL.name, _names_e1) == ErasedEvents(0, 1)
    for n in range(200):  # a busy spell: the WAL grows
        store.record(Event(SEEN, {"n": n, "pad": "z" * 200}))
    _deliver(store, others[0])
    _deliver(store, hers)
    store.checkpoint()  # what the checkpointer does within a second
    left = raw(store.path)
    assert not any(sealed[i : i + 32] in left for i in range(0, len(sealed) - 32, 32))
    store.record(Event(SOS, {"elder": "E3"}))  # the store writes on


def test_the_store_can_write_while_an_erasure_waits_to_empty_the_wal(
    make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup reading the journal keeps the WAL from being emptied: the erasure waits for
    it, but not holding the write lock, which made the store's writer, alarms and all, wait
    out the erasure's wait too."""
    monkeypatch.setattr(erasure, "WAL_WAIT_S", 5.0)
    store = make_store()
    _deliver(store, store.record(Event(MEAL, {"elder": "E1"})))
    backup = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    backup.execute("BEGIN")
    backup.execute("SELECT COUNT(*) FROM events").fetchone()
    erased: list[ErasedEvents] = []
    eraser = threading.Thread(
        target=lambda: erased.append(erase_events(_journal_of(store), MEAL.name, _names_e1))
    )
    eraser.start()
    try:
        eventually(lambda: not journal(store.path, MEAL.name))
        time.sleep(0.3)  # the erasure is on to emptying the WAL
        with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as writer:
            writer.execute("PRAGMA busy_timeout = 1000")
            writer.execute("BEGIN IMMEDIATE")  # "database is locked" while the erasure held it
            writer.execute("ROLLBACK")
        assert not erased, "the erasure is still waiting for the backup"
        assert store.record(Event(SOS, {"band": "A1"})).lane is Lane.P0
    finally:
        backup.execute("COMMIT")
        backup.close()
        eraser.join(10)
    assert erased == [ErasedEvents(1, 0)]


def test_an_event_that_may_have_been_hers_goes_and_is_sent_without_her(
    make_store: StoreFactory,
) -> None:
    """A face not told apart, with E1 among its candidates: delivered, it goes; still to be
    sent, the platform gets it without her and it goes at its delivery."""
    store = make_store()
    delivered, pending = (
        store.record(Event(MEAL, {"elder": None, "others": ["E1", "E2"]})) for _ in range(2)
    )
    _deliver(store, delivered)

    def undecided(data: Mapping[str, Any]) -> bool | Goes:
        if "E1" not in data["others"]:
            return False
        return Goes({**data, "others": [e for e in data["others"] if e != "E1"]})

    assert erase_events(_journal_of(store), MEAL.name, undecided) == ErasedEvents(1, 1)
    (sent,) = _pending(store, Lane.P1)
    assert sent.seq == pending.seq
    assert json.loads(sent.data_json) == {"elder": None, "others": ["E2"]}
    _deliver(store, sent)
    assert journal(store.path) == [] and _marks(store.path) == 0


def test_two_erasures_rewriting_one_event_at_once_put_neither_person_back(
    make_store: StoreFactory,
) -> None:
    """E3 is erased (the counter's pass) while E1's erasure (the platform's request) has read
    E2's meal naming both but not yet written it: E1's erasure works it out again from the
    row as it is now, rather than writing back the copy it read, which names E3."""
    store = make_store()
    store.record(Event(MEAL, {"elder": "E2", "others": ["E1", "E3"]}))

    def without_e3(data: Mapping[str, Any]) -> bool | dict[str, Any]:
        return {**data, "others": [e for e in data["others"] if e != "E3"]}

    def e3_erased_meanwhile(data: Mapping[str, Any]) -> bool | dict[str, Any]:
        if "E3" in data["others"]:
            assert erase_events(_journal_of(store), MEAL.name, without_e3).rewritten == 1
        return _without_e1(data)

    assert erase_events(_journal_of(store), MEAL.name, e3_erased_meanwhile).rewritten == 1
    assert [e.data for e in journal(store.path)] == [{"elder": "E2", "others": []}]


def test_stored_answers_that_name_her_keep_only_that_they_were_answered(
    make_store: StoreFactory,
) -> None:
    """A face.enrol answer lists her id and the names of the photos the platform sent (often
    a person's name): they go, overwritten; that the transaction was answered stays, so a
    repeat of it is still not applied again. An answer naming E10 is not hers."""
    store = make_store()
    cipher = store.cipher
    assert cipher is not None
    answers = {
        "t-1": {
            "transaction": "t-1",
            "op": "face.enrol",
            "status": "ok",
            "message": "",
            "data": {"elder_id": "E1", "photos": [{"name": "li-xiuying-2019.jpg"}]},
        },
        "t-2": {
            "transaction": "t-2",
            "op": "face.enrol",
            "status": "ok",
            "message": "",
            "data": {"elder_id": "E10", "conflicts": []},
        },
    }

    def store_answers(conn: sqlite3.Connection) -> None:
        for txn, answer in answers.items():
            conn.execute(
                "INSERT INTO requests (txn, op, response, steady_ms) VALUES (?, ?, ?, 0)",
                (txn, answer["op"], cipher.seal(answer_key(txn), json.dumps(answer))),
            )

    store.write(store_answers).result(10)
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        stored = dict(conn.execute("SELECT txn, response FROM requests").fetchall())
    assert erase_answers(_journal_of(store), "E1") == 1
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        now = dict(conn.execute("SELECT txn, response FROM requests").fetchall())
    assert json.loads(cipher.open(answer_key("t-1"), now["t-1"])) == {
        "transaction": "t-1",
        "op": "face.enrol",
        "status": "ok",
        "message": ANSWER_ERASED,
    }
    assert json.loads(cipher.open(answer_key("t-2"), now["t-2"])) == answers["t-2"]
    left = raw(store.path)
    old = stored["t-1"]
    assert not any(old[i : i + 32] in left for i in range(0, len(old) - 32, 32))
