"""Opening the database file safely.

The worst thing a gateway can do with a damaged database is quietly start a fresh one: the
undelivered backlog (alarms, meal records) would be gone without anyone noticing. So a file
that exists but cannot be read is a hard, explained error, never a new empty store.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from gateway.keys import emptied_beside_key
from gateway.private import (
    ExposedDirectory,
    narrow_private,
    open_private,
    private_dir,
    refuse_link,
    touch_private,
)
from gateway.store.reserve import MB, disk_full
from gateway.store.schema import SchemaTooNew, migrate

log = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 5000  # how long a statement waits for a lock another connection holds
# Every commit writes each page it touches whole to the WAL, and a second's sightings touch a
# dozen pages (events, outbox, their indexes, meta, counters, the freelist) with a few hundred
# bytes each: with 1 KiB pages it writes less than half of what SQLite's default 4 KiB pages
# cost (README, storage writes).
PAGE_SIZE = 1024
# A database made with other pages is rebuilt with these at start (VACUUM), if no more than this
# is in use: the rebuild writes it twice (its journal, then the copy), and the gateway takes no
# event meanwhile. A larger one (an outage's backlog) is rebuilt at a later start.
REPAGE_MAX_BYTES = 32 * MB
REPAGE_SPARE_BYTES = 64 * MB  # left free on the disk beyond two copies of the file
# Not ON (this build's default): that also writes every page a deletion frees, zeroed, to the
# WAL, a delivered second of sightings' worth each commit. FAST still zeroes what is deleted in
# the pages a commit writes anyway.
SECURE_DELETE = "FAST"


class StoreError(Exception):
    """A store that must not be used; the message says what to do."""


def _damaged(path: Path, key: Path, detail: str) -> StoreError:
    return StoreError(
        f"database {path} is damaged or not a gateway database ({detail}). It may hold "
        "undelivered events, so the gateway will not replace it. Stop the gateway, move the file "
        f"aside together with {path.name}-wal, {path.name}-shm and its key {key} (keep them "
        f"together: 'sqlite3 {path} .recover' can often rescue the rows, which only that key "
        "opens), then start again with an empty store."
    )


def locked(exc: BaseException) -> bool:
    """Another connection held a lock this one needs for longer than ``BUSY_TIMEOUT_MS``."""
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorname.startswith(
        ("SQLITE_BUSY", "SQLITE_LOCKED")
    )


def held_elsewhere(path: Path, exc: BaseException) -> StoreError | None:
    """The error to stop the start with when another connection holds a lock the opening
    needs (an sqlite3 shell in the middle of an edit; or, after a crash left the database in
    rollback-journal mode, a reader keeping the switch to WAL waiting); None for any other
    error. A lock says nothing about the file, and moving it aside as for damage would strand
    its events."""
    if not locked(exc):
        return None
    return StoreError(
        f"database {path} is held by another program ({exc}); it is not damaged. "
        "Close what has it open (an sqlite3 shell, a backup reading it); the gateway "
        "tries again when it is restarted"
    )


def hold_exclusively(path: Path) -> int:
    """Lock the database while this gateway runs (the OS lets go at exit, even a kill -9).
    Two gateways on one database would hand out the same sequence numbers and split the
    serial lines' bytes between them: the second is refused. Returns the lock's descriptor."""
    check_writable_dir(path.parent)
    lock = path.with_name(path.name + ".lock")
    try:
        fd = open_private(lock, os.O_RDWR)
    except OSError as exc:
        raise StoreError(f"cannot open {lock}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(
            f"another gateway is running on {path} (see {lock}); stop it first "
            "(systemctl stop eldercare-gateway)"
        ) from None
    return fd


def check_writable_dir(directory: Path) -> None:
    try:
        private_dir(directory)
    except ExposedDirectory as exc:
        raise StoreError(f"data directory {exc.strerror}") from None
    except OSError as exc:
        raise StoreError(f"cannot create data directory {directory}: {exc.strerror}") from None
    try:  # a file of its own: a name known beforehand could be a link planted to any file
        fd, probe = tempfile.mkstemp(prefix=".write-test", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StoreError(
            f"data directory {directory} is not writable ({exc.strerror}); give the gateway's "
            "user write access or point gateway.data_dir elsewhere"
        ) from None


def saved_running_ms(path: Path) -> int | None:
    """The running time the store last saved (minutes old at most while it runs), read
    without opening the store: for a command beside it that must age what the gateway
    stamped in running time. None when there is no store or it cannot be read."""
    if not path.exists():
        return None
    try:
        value = meta_value(path, "steady_ms")
    except sqlite3.Error:
        return None
    return value if isinstance(value, int) else None


def meta_value(path: Path, key: str, *, immutable: bool = False) -> object:
    """One value of the store's meta table (None when absent), read-only; ``immutable``
    for a file with no WAL beside it, which then needs no -shm file either (a full disk has
    no room for one). Raises sqlite3.Error."""
    uri = f"file:{path}?mode=ro{'&immutable=1' if immutable else ''}"
    conn = sqlite3.connect(uri, uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    finally:
        conn.close()
    return None if row is None else row[0]


def connect(path: Path, *, synchronous: str = "full", readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        conn.execute("PRAGMA query_only = ON")
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # takes effect on a new file only
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        # Checkpoints run on their own connection (Store's checkpointer), so a commit never
        # stalls to copy the WAL into the database: that stall was an alarm's worst latency.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA secure_delete = {SECURE_DELETE}")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction on a connection in autocommit mode: committed, or rolled back
    whatever ends it early."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


WAL_RETRY_S = 0.05


def emptied_wal(conn: sqlite3.Connection, wait_s: float) -> bool:
    """Copy the WAL into the file and empty it, trying for up to ``wait_s``: rows overwritten
    for an erasure are otherwise still in the WAL's older frames. False if that could not be
    done in time (a reader holding an old snapshot: a backup, an sqlite3 shell).

    Tried every ``WAL_RETRY_S`` rather than left to SQLite's busy handler: a TRUNCATE
    checkpoint holds the write lock while the handler waits for readers, and the gateway's
    writer, alarms and all, would wait behind it."""
    (timeout_ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute("PRAGMA busy_timeout = 0")
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                busy = 1
            if int(busy) == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(WAL_RETRY_S)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")


@contextlib.contextmanager
def overwriting(conn: sqlite3.Connection) -> Iterator[None]:
    """Rows deleted or replaced meanwhile are overwritten in every page they leave, even one
    the change frees (an overflow page of a row longer than a page), which SECURE_DELETE
    leaves as it was: for the rows that name someone or held data in plain text."""
    conn.execute("PRAGMA secure_delete = ON")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA secure_delete = {SECURE_DELETE}")


def open_database(path: Path, *, key: Path, synchronous: str, check: bool) -> sqlite3.Connection:
    """Open (or create) the gateway database, migrate it, and verify it when asked.

    ``check`` runs ``PRAGMA quick_check``; the store asks for it after an unclean stop.
    ``key`` is the database's key file, made only once the database holds its schema: an
    empty database beside it was emptied.
    """
    check_writable_dir(path.parent)
    try:
        refuse_link(path)
    except OSError as exc:
        raise StoreError(f"database {path} {exc.strerror}") from None
    key_age = emptied_beside_key(path, key, created_within_s=0.0)
    if key_age is not None:
        gone = not path.exists()
        raise StoreError(
            f"database {path} is {'missing' if gone else 'empty'}, but its key {key} is there "
            f"(made {key_age / 86400:.1f} days ago): the file was "
            f"{'lost (fsck moves such files to lost+found, ' if gone else 'emptied ('}"
            "a bad copy or restore, a full disk), and the events it held are gone with it. The "
            "gateway will not start it anew, which would number events from 1 again. Restore "
            f"it from a backup; or, to start with an empty store, stop the gateway and move "
            f"{key} aside, and {path.name} with its -wal file where they are there"
        )
    if path.exists() and path.stat().st_size > 0:
        try:
            with path.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise StoreError(f"cannot read database {path}: {exc.strerror}") from None
        if head != SQLITE_MAGIC:
            raise _damaged(path, key, "no SQLite header")
        for part in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
            narrow_private(part)  # elder ids, decisions, nurse-call texts
    elif path.exists() and not os.access(path, os.W_OK):
        raise StoreError(f"database {path} is not writable")
    else:
        try:
            touch_private(path)  # elder ids, decisions, nurse-call texts
        except OSError as exc:  # a link left dangling in its place, say
            raise StoreError(f"cannot create database {path}: {exc.strerror}") from None
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(path, synchronous=synchronous)
        if check:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise _damaged(path, key, f"quick_check: {result}")
        repage(conn, path)
        migrate(sqlite_utils.Database(conn))
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, SchemaTooNew):
            raise StoreError(f"database {path}: {exc}") from None
        held = held_elsewhere(path, exc)
        if held is not None:
            raise held from None
        if isinstance(exc, sqlite3.DatabaseError) and not disk_full(exc):
            raise _damaged(path, key, str(exc)) from None
        raise  # no room to open it in (the caller's to handle) says nothing about the file
    return conn


def repage(conn: sqlite3.Connection, path: Path) -> None:
    """Rebuild a database made with pages of another size (SQLite's default 4 KiB, before
    PAGE_SIZE) with PAGE_SIZE pages, when it is small enough and the disk has room for the
    copies; otherwise leave it as it is, to be tried at the next start. The rebuild is one
    transaction: a power cut leaves the database as it was."""
    size, pages, free = (
        int(conn.execute(f"PRAGMA {name}").fetchone()[0])
        for name in ("page_size", "page_count", "freelist_count")
    )
    if size == PAGE_SIZE:
        return
    used = (pages - free) * size
    room = shutil.disk_usage(path.parent).free
    if used > REPAGE_MAX_BYTES or room < 2 * pages * size + REPAGE_SPARE_BYTES:
        log.info(
            "database %s keeps its %d-byte pages for now (%d MiB in use, %d MiB free on its "
            "disk); it is rebuilt with %d-byte pages at a start with at most %d MiB in use",
            path,
            size,
            used // MB,
            room // MB,
            PAGE_SIZE,
            REPAGE_MAX_BYTES // MB,
        )
        return
    try:
        conn.execute("PRAGMA journal_mode = DELETE")  # the page size of a WAL database is fixed
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA temp_store = MEMORY")  # the copy it builds: not on the card too
        conn.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        log.warning("database %s not rebuilt with %d-byte pages: %s", path, PAGE_SIZE, exc)
        return
    finally:
        conn.execute("PRAGMA temp_store = DEFAULT")
        conn.execute("PRAGMA journal_mode = WAL")
    log.info(
        "database %s rebuilt with %d-byte pages (%d KiB in use)", path, PAGE_SIZE, used // 1024
    )


def disk_full_error(path: Path, free_bytes: int) -> StoreError:
    return StoreError(
        f"the disk of {path.parent} is full ({free_bytes // 1024} KiB free): database {path} "
        "cannot be opened, and nothing in it is lost. Free space on that disk (df -h, "
        "du -sh /var/log); the gateway starts once there is room"
    )
