"""Delivered events that name an erased person, taken out of the journal at the erasure.

An event still in the outbox stays as it is: it is the platform's record (a meal, an alarm)
and must still reach it. Once delivered the platform holds it, and the journal's copy, kept
``delivered_retention_days`` for review on site, would name the person for weeks more.

Works on a connection of its own, from the gateway's process or from a command run beside the
running gateway: it deletes only delivered rows, which nothing else changes but retention,
and takes the write lock for one short DELETE (the events are read and opened before).
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
from gateway.store.db import StoreError, connect
from gateway.store.writer import SQL_VARS

log = logging.getLogger(__name__)


class Journal(NamedTuple):
    path: Path
    key: Path


def purge_delivered(
    journal: Journal, event_type: str, names: Callable[[Mapping[str, Any]], bool]
) -> int:
    """Delete the delivered events of ``event_type`` whose data ``names`` says name the
    person; returns how many. The deleted rows are overwritten (``secure_delete``). No
    database: 0. Raises StoreError when the key does not open the journal."""
    if not journal.path.exists():
        return 0
    with contextlib.closing(connect(journal.path)) as conn:
        cipher = _cipher(conn, journal.key)
        doomed: list[int] = []
        unreadable = 0
        rows = conn.execute(
            "SELECT seq, event_id, data FROM events "
            "WHERE type = ? AND delivered_steady_ms IS NOT NULL",
            (event_type,),
        )
        for seq, event_id, data in rows:
            try:
                if names(json.loads(cipher.open(event_id, data))):
                    doomed.append(int(seq))
            except (Undecryptable, ValueError):
                unreadable += 1
        if unreadable:
            log.warning("store: %d delivered %s events could not be read", unreadable, event_type)
        conn.execute("PRAGMA secure_delete = ON")
        removed = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(doomed), SQL_VARS):
                chunk = doomed[start : start + SQL_VARS]
                removed += conn.execute(
                    f"DELETE FROM events WHERE seq IN ({','.join('?' * len(chunk))}) "
                    "AND delivered_steady_ms IS NOT NULL",
                    chunk,
                ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return removed


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
