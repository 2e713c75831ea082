"""Events that name an erased person, taken out of the journal: the delivered ones at the
erasure, those still to be delivered as soon as they are; or, for an event that is another
person's record and merely mentions her, rewritten without her.

An event still in the outbox is the platform's record (a meal, an alarm) and must still reach
it, so it stays as it is, sent in its turn like any other; its outbox row is marked
(``outbox.erased``, by ``seq``, naming no one) and the writer deletes the event at its delivery
instead of keeping it ``delivered_retention_days`` for review on site. The mark is in the
database, so a restart before the delivery keeps it, and it goes with its outbox row however
the event leaves (delivered, expired, evicted). One that is not her record but may have been
about her (``Goes``: a face not told apart, with her among its candidates) is marked the same
way, and sent without her.

An event rewritten without her is sealed again and replaces the old one, overwritten where it
was (``secure_delete``), delivered or not: one still pending is then sent without her (unless
the publisher had read it just before), and is kept after its delivery like any other. Its
outbox row keeps the size it was counted at, a few bytes over.

Works on a connection of its own, from the gateway's process or from a command run beside the
running gateway. The events are read and opened first; then one short write transaction
deletes those delivered, marks those still pending and rewrites the others'. The writer
cannot deliver an event between the two, so each is either deleted now or marked, whatever it
delivered meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

from gateway.events import compact_json
from gateway.keys import KeyFileError, read_key
from gateway.store.cipher import CHECK_KEY, EventCipher, Undecryptable, answer_key
from gateway.store.db import StoreError, connect, emptied_wal, immediate, overwriting
from gateway.store.schema import SchemaTooNew, migrate
from gateway.store.writer import SQL_VARS

log = logging.getLogger(__name__)
_NO_LIMIT = (1 << 63) - 1
WAL_WAIT_S = 10.0  # for the running gateway's commits and readers, to empty the WAL


class Journal(NamedTuple):
    path: Path
    key: Path


class ErasedEvents(NamedTuple):
    deleted: int  # delivered, deleted now
    at_delivery: int  # still to be delivered: sent in their turn, then deleted
    rewritten: int = 0  # another person's, rewritten without her (delivered or not)


class Goes(NamedTuple):
    """It goes like an event of hers, but one still to be sent is sent as ``pending_as``
    (without her): it is not her record, only one that may have been hers."""

    pending_as: Mapping[str, Any]


# An event's data -> False: leave it; True: it goes (sent as it is if still pending); Goes: it
# goes, sent without her if still pending; new data: it stays, rewritten so.
Erasure = Callable[[Mapping[str, Any]], bool | Goes | Mapping[str, Any]]


def erase_events(
    journal: Journal, event_type: str, erasing: Erasure, *, until_ms: int | None = None
) -> ErasedEvents:
    """Delete the delivered events of ``event_type`` that ``erasing`` says go, and mark those
    still pending to be deleted at their delivery (sent as ``Goes.pending_as`` where it says
    so); rewrite those it gives new data for. The rows deleted or replaced are overwritten
    (``secure_delete``). ``until_ms``: only events recorded by then (store running time), so
    none of a person enrolled again since. No database: nothing. Raises StoreError when the
    key does not open the journal."""
    if not journal.path.exists():
        return ErasedEvents(0, 0)
    with contextlib.closing(connect(journal.path)) as conn:
        _up_to_date(conn, journal.path)
        cipher = _cipher(conn, journal.key)
        doomed: list[int] = []
        rewrites: list[_Rewrite] = []
        sent_without: list[_Rewrite] = []  # Goes: rewritten if still pending
        unreadable = 0
        rows = conn.execute(
            "SELECT seq, event_id, data FROM events WHERE type = ? AND steady_ms <= ?",
            (event_type, _NO_LIMIT if until_ms is None else until_ms),
        )
        for seq, event_id, data in rows:
            try:
                verdict = erasing(json.loads(cipher.open(event_id, data)))
            except (Undecryptable, ValueError):
                unreadable += 1
                continue
            if verdict is True:
                doomed.append(int(seq))
            elif isinstance(verdict, Goes):
                doomed.append(int(seq))
                sealed = cipher.seal(event_id, compact_json(verdict.pending_as))
                sent_without.append(_Rewrite(int(seq), event_id, data, sealed))
            elif verdict is not False:
                sealed = cipher.seal(event_id, compact_json(verdict))
                rewrites.append(_Rewrite(int(seq), event_id, data, sealed))
        if unreadable:
            log.warning("store: %d %s events could not be read", unreadable, event_type)
        deleted = marked = rewritten = 0
        with overwriting(conn), immediate(conn):
            for start in range(0, len(doomed), SQL_VARS):
                chunk = doomed[start : start + SQL_VARS]
                marks = ",".join("?" * len(chunk))
                deleted += conn.execute(
                    f"DELETE FROM events WHERE seq IN ({marks}) "
                    "AND delivered_steady_ms IS NOT NULL",
                    chunk,
                ).rowcount
                marked += conn.execute(
                    f"UPDATE outbox SET erased = 1 WHERE seq IN ({marks})", chunk
                ).rowcount
            rewritten = sum(_rewrite(conn, cipher, erasing, r) for r in rewrites)
            for r in sent_without:
                if conn.execute("SELECT 1 FROM outbox WHERE seq = ?", (r.seq,)).fetchone():
                    _rewrite(conn, cipher, erasing, r)
        if (deleted or marked or rewritten) and not emptied_wal(conn, WAL_WAIT_S):
            log.warning(
                "store %s: the erased events are overwritten, but the WAL still holds their "
                "earlier copies: the gateway's commits and readers kept it from being emptied "
                "for %.0f s; it is emptied at the next clean stop",
                journal.path,
                WAL_WAIT_S,
            )
    return ErasedEvents(deleted, marked, rewritten)


ANSWER_ERASED = "answered; the answer named an erased person and was taken out"


def erase_answers(journal: Journal, person: str) -> int:
    """The stored answers to platform requests that name ``person`` (a ``face.enrol`` answer
    lists her id, the names of the photos sent for her, the elders she resembles) keep only
    that the transaction was answered, and how: a repeat of it is still not applied again.
    Rewritten where they were (``secure_delete``), and the WAL emptied. Returns how many."""
    if not journal.path.exists():
        return 0
    with contextlib.closing(connect(journal.path)) as conn:
        _up_to_date(conn, journal.path)
        cipher = _cipher(conn, journal.key)
        rewrites: list[tuple[bytes, str]] = []
        for txn, stored in conn.execute("SELECT txn, response FROM requests"):
            try:
                answer = json.loads(cipher.open(answer_key(txn), stored))
            except (Undecryptable, ValueError):
                continue
            if _names(answer, person):
                kept = {k: answer.get(k) for k in ("transaction", "op", "status")}
                erased = compact_json({**kept, "message": ANSWER_ERASED})
                rewrites.append((cipher.seal(answer_key(txn), erased), txn))
        if not rewrites:
            return 0
        with overwriting(conn), immediate(conn):
            conn.executemany("UPDATE requests SET response = ? WHERE txn = ?", rewrites)
        if not emptied_wal(conn, WAL_WAIT_S):
            log.warning(
                "store %s: erased answers still in the WAL until it is emptied", journal.path
            )
    return len(rewrites)


def _names(value: Any, person: str) -> bool:
    """Whether any string in the JSON value is ``person``'s id (as a whole: E1 is not E10)."""
    if isinstance(value, str):
        return value == person
    if isinstance(value, dict):
        return any(_names(v, person) for v in value.values())
    if isinstance(value, list):
        return any(_names(v, person) for v in value)
    return False


class _Rewrite(NamedTuple):
    seq: int
    event_id: str
    read: bytes | str  # the data as read
    sealed: bytes  # the new data


def _rewrite(conn: sqlite3.Connection, cipher: EventCipher, erasing: Erasure, r: _Rewrite) -> int:
    """The new data, unless the row changed since it was read (another erasure, of another
    person it names, rewrote it meanwhile; the writer sealed a row from before encryption):
    then worked out again from what it holds now, under the write lock, so neither erasure
    puts back the person the other took out."""
    update = "UPDATE events SET data = ? WHERE seq = ?"
    if conn.execute(f"{update} AND data = ?", (r.sealed, r.seq, r.read)).rowcount:
        return 1
    row = conn.execute("SELECT data FROM events WHERE seq = ?", (r.seq,)).fetchone()
    if row is None:  # deleted meanwhile (its retention ended)
        return 0
    try:
        verdict = erasing(json.loads(cipher.open(r.event_id, row[0])))
    except (Undecryptable, ValueError):
        return 0
    if isinstance(verdict, bool):  # it names her no more
        return 0
    data = verdict.pending_as if isinstance(verdict, Goes) else verdict
    sealed = cipher.seal(r.event_id, compact_json(data))
    return int(conn.execute(update, (sealed, r.seq)).rowcount)


def _up_to_date(conn: sqlite3.Connection, path: Path) -> None:
    """A command run after an upgrade, before the new gateway first opened the journal, finds
    it of the old schema (without ``outbox.erased``): it migrates it as the gateway would."""
    try:
        migrate(sqlite_utils.Database(conn))
    except SchemaTooNew as exc:
        raise StoreError(f"database {path}: {exc}") from None


def _cipher(conn: sqlite3.Connection, key_path: Path) -> EventCipher:
    """The journal's own key, checked: a wrong one would open nothing and find nobody."""
    try:
        cipher = EventCipher(read_key(key_path))
    except KeyFileError as exc:
        raise StoreError(str(exc)) from None
    check = conn.execute("SELECT value FROM meta WHERE key = ?", (CHECK_KEY,)).fetchone()
    if check is not None and not cipher.opens(CHECK_KEY, check[0]):
        raise StoreError(f"{key_path} is not the key the journal was written with")
    return cipher
