"""Event data encrypted at rest: location sightings, alarms and face decisions are sensitive
personal information (PIPL Art. 28), and the journal keeps them for weeks.

Each event's ``data`` is sealed with AES-256-GCM, bound to its event id (a row copied onto
another event does not open). The key is a file of its own, ``<db>.key`` by default (mode 0600,
never in the database); the database holds a check value so that a wrong key is refused at
start instead of leaving every pending event unsendable. The nonce is 8 random bytes, chosen at
each start and again every 2**32 events, followed by a 4-byte counter: unique without a system
call per event (two starts share a prefix with odds of 2**-64; a prefix of 4 bytes, tried
first, could be drawn twice within the restarts of a crash loop).

Rows written before this existed are plain text; they are read as they are, and sealed in
the background after the next start, a batch per commit of the store's writer.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.keys import KeyFileError, create_key, derive, read_key
from gateway.store.db import StoreError, overwriting

PURPOSE = "journal-event-data-v1"
VERSION = b"\x01"
NONCE = 12
CHECK = b"eldercare-gateway journal key check"
CHECK_KEY = "data_key_check"
ALL_SEALED = "data_all_sealed"  # no row from before encryption left: no scan for them at start
SEAL_BATCH = 500
COUNTER_LIMIT = 1 << 32


class Undecryptable(StoreError):
    """One row's data does not open: damaged, or written under another key."""


def answer_key(txn: str) -> str:
    """Stored answers to platform requests are sealed with the journal's key (they name
    elders and the photos sent for them), bound to their transaction, in a namespace apart
    from the events' ids."""
    return f"request:{txn}"


class EventCipher:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(derive(key, PURPOSE))
        self._new_prefix()

    def _new_prefix(self) -> None:
        self._prefix = os.urandom(8)
        self._counter = itertools.count()

    @classmethod
    def for_database(cls, db: sqlite3.Connection, key_path: Path) -> EventCipher:
        """The database's key: made with a new database, checked against an existing one."""
        check = db.execute("SELECT value FROM meta WHERE key = ?", (CHECK_KEY,)).fetchone()
        if not key_path.exists() and (check is not None or _any_sealed(db)):
            raise StoreError(
                f"the key of this database, {key_path}, is missing: its events cannot be read "
                "or sent without it. Put it back (from the backup it was kept with), or move the "
                "database aside to start an empty one"
            )
        try:
            if not key_path.exists():
                create_key(key_path)
            cipher = cls(read_key(key_path))
        except KeyFileError as exc:
            raise StoreError(str(exc)) from None
        if check is None:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    (CHECK_KEY, cipher.seal(CHECK_KEY, CHECK.decode())),
                )
                if db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is None:
                    mark_all_sealed(db)  # a new database: nothing from before
        elif not cipher.opens(CHECK_KEY, check[0]):
            raise StoreError(
                f"{key_path} is not the key this database was written with: its events cannot "
                "be read or sent. Put the right key back"
            )
        return cipher

    def seal(self, event_id: str, data_json: str) -> bytes:
        """Called by one thread at a time (the store's writer, or its start)."""
        n = next(self._counter)
        if n >= COUNTER_LIMIT:
            self._new_prefix()
            n = next(self._counter)
        nonce = self._prefix + n.to_bytes(4, "big")
        return VERSION + nonce + self._aead.encrypt(nonce, data_json.encode(), event_id.encode())

    def open(self, event_id: str, stored: bytes | str) -> str:
        """The data as JSON text; a row from before encryption is text already."""
        if isinstance(stored, str):
            return stored
        if not isinstance(stored, bytes) or not stored.startswith(VERSION):
            raise Undecryptable(f"event {event_id}: data is neither text nor sealed")
        nonce, body = stored[1 : 1 + NONCE], stored[1 + NONCE :]
        try:
            return self._aead.decrypt(nonce, body, event_id.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise Undecryptable(f"event {event_id}: data does not open ({exc!r})") from None

    def opens(self, event_id: str, stored: bytes | str) -> bool:
        try:
            self.open(event_id, stored)
        except Undecryptable:
            return False
        return not isinstance(stored, str)

    def seal_batch(self, db: sqlite3.Connection, after_seq: int) -> tuple[int, int] | None:
        """Seal the next rows written before encryption, after ``after_seq``, inside the
        caller's transaction: (the last seq sealed, how many), or None when none are left."""
        rows = db.execute(
            "SELECT seq, event_id, data FROM events WHERE seq > ? AND typeof(data) = 'text' "
            "ORDER BY seq LIMIT ?",
            (after_seq, SEAL_BATCH),
        ).fetchall()
        if not rows:
            mark_all_sealed(db)
            return None
        with overwriting(db):  # the plain text, not left on the pages it frees
            db.executemany(
                "UPDATE events SET data = ? WHERE seq = ?",
                [(self.seal(event_id, data), seq) for seq, event_id, data in rows],
            )
        return int(rows[-1][0]), len(rows)


def has_plain_rows(db: sqlite3.Connection) -> bool:
    """Only until they have all been sealed once: the scan reads the whole journal."""
    if db.execute("SELECT 1 FROM meta WHERE key = ?", (ALL_SEALED,)).fetchone() is not None:
        return False
    row = db.execute("SELECT 1 FROM events WHERE typeof(data) = 'text' LIMIT 1").fetchone()
    return row is not None


def mark_all_sealed(db: sqlite3.Connection) -> None:
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, 1)", (ALL_SEALED,))


def _any_sealed(db: sqlite3.Connection) -> bool:
    return (
        db.execute("SELECT 1 FROM events WHERE typeof(data) = 'blob' LIMIT 1").fetchone()
        is not None
    )
