"""Events that name an erased person, taken out of the journal: the delivered ones at the
erasure, those still to be delivered as soon as they are.

An event still in the outbox is the platform's record (a meal, an alarm) and must still reach
it, so it stays as it is, sent in its turn like any other; its outbox row is marked
(``outbox.erased``, by ``seq``, naming no one) and the writer deletes the event at its delivery
instead of keeping it ``delivered_retention_days`` for review on site. The mark is in the
database, so a restart before the delivery keeps it, and it goes with its outbox row however
the event leaves (delivered, expired, evicted).

Works on a connection of its own, from the gateway's process or from a command run beside the
running gateway. The events are read and opened first; then one short write transaction
deletes those delivered and marks those still pending. The writer cannot deliver an event
between the two, so each is either deleted now or marked, whatever it delivered meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from gateway.keys import KeyFileError, read_key
from gateway.store.cipher import CHECK_KEY, EventCipher, Undecryptable
from gateway.store.db import StoreError, connect, overwriting
from gateway.store.writer import SQL_VARS

log = logging.getLogger(__name__)
_NO_LIMIT = (1 << 63) - 1


class Journal(NamedTuple):
    path: Path
    key: Path


class ErasedEvents(NamedTuple):
    deleted: int  # delivered, deleted now
    at_delivery: int  # still to be delivered: sent in their turn, then deleted


def erase_events(
    journal: Journal,
    event_type: str,
    names: Callable[[Mapping[str, Any]], bool],
    *,
    until_ms: int | None = None,
) -> ErasedEvents:
    """Delete the delivered events of ``event_type`` whose data ``names`` says name the
    person, and mark those still pending to be deleted at their delivery. The deleted rows are
    overwritten (``secure_delete``). ``until_ms``: only events recorded by then (store running
    time), so none of a person enrolled again since. No database: nothing. Raises StoreError
    when the key does not open the journal."""
    if not journal.path.exists():
        return ErasedEvents(0, 0)
    with contextlib.closing(connect(journal.path)) as conn:
        cipher = _cipher(conn, journal.key)
        doomed: list[int] = []
        unreadable = 0
        rows = conn.execute(
            "SELECT seq, event_id, data FROM events WHERE type = ? AND steady_ms <= ?",
            (event_type, _NO_LIMIT if until_ms is None else until_ms),
        )
        for seq, event_id, data in rows:
            try:
                if names(json.loads(cipher.open(event_id, data))):
                    doomed.append(int(seq))
            except (Undecryptable, ValueError):
                unreadable += 1
        if unreadable:
            log.warning("store: %d %s events could not be read", unreadable, event_type)
        deleted = marked = 0
        with overwriting(conn):
            conn.execute("BEGIN IMMEDIATE")
            try:
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
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    return ErasedEvents(deleted, marked)


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
