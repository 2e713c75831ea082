"""The single writer: every change to the database goes through one thread, in group commits.

Why one writer: SQLite allows one writer at a time anyway; doing it on one thread turns lock
contention into batching, so a burst of events from several ports and the counter costs one
fsync, not one each. ``record()`` returns only after the commit that holds the event, so a
producer may acknowledge its source (serial ACK, DC-09 ACK, counter screen) once it returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from gateway.clock import Clock, ClockSync
from gateway.config import StoreSection
from gateway.events import LANES, Event, Lane, StoredEvent, compact_json
from gateway.lifecycle import Periodic
from gateway.logs import RateLimitedLog, raised_at
from gateway.store.cipher import EventCipher, has_plain_rows
from gateway.store.db import (
    StoreError,
    connect,
    disk_full_error,
    emptied_wal,
    held_elsewhere,
    locked,
    meta_value,
    open_database,
    overwriting,
)
from gateway.store.limits import admit, event_bytes, pressured_lanes, quota_excess
from gateway.store.outbox import OutboxReader
from gateway.store.reserve import MB, Reserve, disk_full

log = logging.getLogger(__name__)
# Housekeeping runs in the writer, so an alarm waits for it: both statements read only the rows
# they remove (an index range per lane; expiry stops at the first row not yet expired), at most
# a batch of them (batch_max_rows) per commit, never the whole backlog of an outage.
EXPIRE_SQL = "SELECT seq, steady_ms, bytes FROM outbox WHERE lane = ? ORDER BY seq LIMIT ?"
PURGE_SQL = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE lane IN "
    f"({','.join(str(int(lane)) for lane in Lane)}) AND delivered_steady_ms < ? LIMIT ?)"
)
T = TypeVar("T")
CHECKPOINT_INTERVAL_S = 1.0  # how often the checkpointer looks
REDATE_SEQS = 2000  # events dated again per commit once the clock is set
# A checkpoint copies every page changed since the last one into the database file: once a
# second, a trickle of sightings had each page written twice. Now once the rows since the last
# checkpoint could make the WAL a few MB (a backlog, a burst), otherwise every 30 s.
CHECKPOINT_ROWS = 2000
CHECKPOINT_MAX_S = 30.0
# The running time is saved with every commit that writes. A commit that would write nothing
# else (housekeeping that found nothing to do, every 10 s on a quiet site) saves it only this
# often: a power cut loses at most this much running time, and a quiet site writes little.
STEADY_SAVE_MS = 300_000
OFFSET_MOVED_MS = 1_000  # the wall clock's lead over running time saved again past this
SQL_VARS = 500
# While another program holds the database's lock, everything waits in memory for it to let
# go; past this many waiting, telemetry nobody waits for is refused (about 1 KB each): a shell
# left open overnight must not take the Pi's memory. Alarms and waited-for events still wait.
WAITING_MAX_WHILE_LOCKED = 20_000
# Meanwhile each try waits this long for the lock, not the whole busy timeout: a write whose
# caller gives up during a try can be taken back only once that try is over.
LOCKED_RETRY_MS = 1000
# How much longer than the busy timeout a write given up on may take to be settled: the commit
# it is part of is waiting for a lock (the busy timeout at most) or writing to the card.
SETTLE_GRACE_S = 5.0
WITHDRAWN = "the store did not commit in time; not written"


class StorageFull(Exception):
    """The event was not written: the disk is at its floor and no telemetry could make room,
    or it is full."""


class StoreClosed(Exception):
    """The store is stopped or its writer has failed; nothing more can be recorded."""


class Withdrawn(TimeoutError):
    """The store did not commit in time, and the write was taken back before its commit
    began: it is not on disk and never will be, so its source may be told so."""


class Backlogged(Exception):
    """Telemetry refused: another program holds the database's lock, and enough already
    waits in memory for it to let go."""


class Receipt(Generic[T]):
    """The promise of one write: ``result()`` returns once the commit that holds it is done.

    Lighter than ``concurrent.futures.Future`` (no lock per receipt): the writer settles a
    whole commit's receipts in ``resolve()`` under one lock and wakes every waiter once.
    The writer's queued ops are receipts themselves, and the list of callbacks is made only
    for the first one: one object per event handed over, not three, which the garbage
    collector would otherwise scan again and again while a burst waits in the queue.
    Callbacks run on the writer thread and must be quick.
    """

    __slots__ = ("_callbacks", "_claimed", "_cond", "_done", "_error", "_value", "_withdrawn")

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._done = False
        self._claimed = False  # in a commit being tried: to be waited for, not taken back
        self._withdrawn = False  # its caller gave up: not to be committed after all
        self._value: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Receipt[T]], None]] | None = None

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> T:
        if not self._done:
            with self._cond:
                if not self._cond.wait_for(self.done, timeout):
                    raise TimeoutError("the store did not commit in time")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def exception(self) -> BaseException | None:
        return self._error

    def add_done_callback(self, fn: Callable[[Receipt[T]], None]) -> None:
        with self._cond:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        fn(self)


def resolve(cond: threading.Condition, outcomes: Iterable[tuple[Receipt[Any], Any]]) -> None:
    """Settle receipts (a value or an exception each), wake their waiters, run callbacks."""
    callbacks: list[tuple[Callable[[Receipt[Any]], None], Receipt[Any]]] = []
    with cond:
        for receipt, outcome in outcomes:
            if receipt._done:
                continue
            if isinstance(outcome, BaseException):
                receipt._error = outcome
            else:
                receipt._value = outcome
            receipt._done = True
            if receipt._callbacks:
                callbacks.extend((fn, receipt) for fn in receipt._callbacks)
                receipt._callbacks = None
        cond.notify_all()
    for fn, receipt in callbacks:
        try:
            fn(receipt)
        except Exception:
            log.exception("store callback failed")


@dataclass(frozen=True)
class DomainWrite:
    """A statement committed in the same transaction as an event (e.g. the meal row)."""

    sql: str
    params: Sequence[Any] = ()


class LockedOut(NamedTuple):
    """Another program has held the database's lock since ``since_ms`` (the store clock's
    monotonic time), and ``waiting`` writes waited for it at the last try."""

    since_ms: int
    waiting: int


class Delivered(NamedTuple):
    """(A NamedTuple: the publisher makes one for every event delivered.)"""

    seq: int
    lane: Lane


class _Record(Receipt[StoredEvent]):
    """An event handed to the writer, and the receipt its producer holds. The writer sets its
    ``seq`` and ``session`` when committing it; the StoredEvent is made when asked for, so a
    burst's receipts hold no objects of their own for the garbage collector to scan."""

    __slots__ = (
        "clock_synced",
        "data_json",
        "domain",
        "event",
        "group",
        "seq",
        "session",
        "steady_ms",
        "ts_ms",
        "waited",
    )

    def __init__(
        self,
        cond: threading.Condition,
        event: Event,
        *,
        data_json: str,
        ts_ms: int,
        clock_synced: bool,
        steady_ms: int,
        domain: Sequence[DomainWrite],
        waited: bool,
    ) -> None:
        super().__init__(cond)
        self.event = event
        self.data_json = data_json
        self.ts_ms = ts_ms
        self.clock_synced = clock_synced
        self.steady_ms = steady_ms
        self.domain = domain
        self.waited = waited  # a source waits for the commit (to acknowledge a device)
        # the events of one message from a source (see ``submit_all``): one commit for all
        self.group: tuple[_Record, ...] | None = None
        self.seq = 0
        self.session = 0

    @property
    def lane(self) -> Lane:
        return self.event.type.lane

    def result(self, timeout: float | None = None) -> StoredEvent:
        super().result(timeout)  # raises what refused it
        event = self.event
        etype = event.type
        return StoredEvent(
            self.seq,
            event.event_id,
            etype.name,
            etype.schema,
            etype.lane,
            self.session,
            self.ts_ms,
            self.clock_synced,
            self.steady_ms,
            self.data_json,
        )


class _Ack(Receipt[int]):
    __slots__ = ("items", "telemetry")

    def __init__(self, cond: threading.Condition, items: Sequence[Delivered]) -> None:
        super().__init__(cond)
        self.items = items
        self.telemetry = all(d.lane is Lane.P2 for d in items)


class _Upkeep:
    """The writer's own work waiting its turn (deliveries, housekeeping), in order. While a
    backlog drains, deliveries of telemetry arrive a few at a time and each wakes the writer
    to ask whether they may wait longer: the answer is kept up to date as ops come and go, so
    asking costs nothing however many are waiting."""

    def __init__(self) -> None:
        self._ops: deque[_Op] = deque()
        self.rows = 0
        self.urgent = 0  # ops that are not deliveries of telemetry

    def append(self, op: _Op) -> None:
        self._ops.append(op)
        self.rows += _rows(op)
        self.urgent += not _may_linger(op)

    def popleft(self) -> _Op:
        op = self._ops.popleft()
        self.rows -= _rows(op)
        self.urgent -= not _may_linger(op)
        return op

    def first(self) -> _Op:
        return self._ops[0]

    def __bool__(self) -> bool:
        return bool(self._ops)

    def __iter__(self) -> Iterator[_Op]:
        return iter(self._ops)


class _Write(Receipt[T]):
    __slots__ = ("fn",)

    def __init__(self, cond: threading.Condition, fn: Callable[[sqlite3.Connection], T]) -> None:
        super().__init__(cond)
        self.fn = fn


@dataclass(frozen=True)
class _Chores:
    """What one batch of housekeeping did."""

    expired: int
    evicted: int
    more: bool  # the batch was full: a chore may have more to do


class _Housekeep(Receipt[_Chores]):
    __slots__ = ()


_Op = _Record | _Ack | _Write[Any] | _Housekeep


@dataclass
class LaneUsage:
    count: int = 0
    bytes: int = 0


@dataclass
class _Delta:
    """Changes to in-memory accounting, applied only after the commit succeeds."""

    usage: dict[Lane, LaneUsage] = field(default_factory=lambda: {ln: LaneUsage() for ln in Lane})
    counters: dict[str, int] = field(default_factory=dict)
    new_lanes: set[Lane] = field(default_factory=set)
    p2_added_bytes: int = 0  # by new events, whatever was deleted beside them
    erased_deleted: bool = False  # events naming an erased person, deleted at their delivery

    def add(self, lane: Lane, count: int, nbytes: int) -> None:
        u = self.usage[lane]
        u.count += count
        u.bytes += nbytes

    def count(self, name: str, n: int = 1) -> None:
        if n:
            self.counters[name] = self.counters.get(name, 0) + n


def disk_free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


_STOP = object()


class Store:
    """Durable journal + outbox. Owns the only write connection."""

    name = "store"

    def __init__(
        self,
        cfg: StoreSection,
        path: Path,
        clock: Clock,
        clock_sync: ClockSync,
        *,
        free_disk: Callable[[Path], int] = disk_free_bytes,
    ) -> None:
        self.cfg = cfg
        self.path = path
        self._clock = clock
        self._sync = clock_sync
        self._free_disk = free_disk
        self._queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._listeners: list[Callable[[set[Lane]], None]] = []
        self._listener_log = RateLimitedLog(log, 30.0)
        # what recurs with each commit for as long as an outage or a full disk lasts
        self._flood_log = RateLimitedLog(log, 60.0)
        self._lock = threading.Lock()
        self._settled = threading.Condition()
        self._closed = True
        self._failed: BaseException | None = None
        self._busy_ms = 0  # the write connection's busy timeout
        self.locked: LockedOut | None = None  # another program held it at the last try
        self._refused_locked = 0  # telemetry refused meanwhile, for the writer to count
        self._housekeeping = Periodic(
            "store-housekeeping", cfg.housekeeping_interval_s, self.housekeep
        )
        self._checkpointer = Periodic("store-checkpoint", CHECKPOINT_INTERVAL_S, self.checkpoint)
        # every event says whether the clock was synchronised: asked at [clock] check_interval_s
        self._clock_check = Periodic("clock-check", clock_sync.interval_s, self.check_clock)
        self._first_seq = 1  # of this session
        self._clock_set: list[Callable[[int], object]] = []
        self.redated = 0  # re-dating commits: a reader holding rows in memory reads them again
        self._checkpoint_conn: sqlite3.Connection | None = None
        self.checkpoints = 0
        # set by the writer after a commit, cleared by the checkpointer once the WAL is empty
        self._wal_holds_erased = False
        self._rows_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.quotas = {
            Lane.P0: int(cfg.lanes.p0.quota_mb * MB),
            Lane.P1: int(cfg.lanes.p1.quota_mb * MB),
            Lane.P2: int(cfg.lanes.p2.quota_mb * MB),
        }
        ttl_s = cfg.lanes.p2.ttl_s  # only telemetry expires
        self.ttl_ms = {Lane.P2: int(ttl_s * 1000)} if ttl_s > 0 else {}
        self.keep_delivered_ms = int(cfg.delivered_retention_days * 86_400_000)
        self.usage = {lane: LaneUsage() for lane in Lane}
        self.counters: dict[str, int] = {}
        # counted after a commit failed, so not yet in the database: added by the next commit
        self._unsaved: Counter[str] = Counter()
        self.session = 0
        self.previous_stop_clean = True
        self.pressure: list[Lane] = []
        self.disk_free = 0
        self.reserve = Reserve(path.with_name(path.name + ".reserve"), int(cfg.reserve_mb * MB))
        self.key_path = cfg.key_path(path)
        self.cipher: EventCipher | None = None
        self._sealer_thread: threading.Thread | None = None
        self.commits = 0
        self._next_seq = 1
        self._steady_base = 0
        # wall time minus running time at the last session's last save while synchronised
        self._offset_before: int | None = None
        self._offset_saved: int | None = None  # ... and at this session's last save
        self._time_off: int | None = None  # time_off_ms, once known
        self._mono_at_open = 0
        self._steady_saved = 0  # the running time last saved in meta

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Open, verify after an unclean stop, bump the session, start the writer."""
        clean = self._read_clean_flag()
        try:  # a restart on a disk another program filled: what the reserve is kept for
            conn, unsealed = self.reserve.with_room(lambda: self._open(clean))
        except sqlite3.OperationalError:  # full even without the reserve
            raise disk_full_error(self.path, self._free_disk(self.path.parent)) from None
        self._conn = conn
        self._busy_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        self.previous_stop_clean = clean
        for lane, count, nbytes in conn.execute(
            "SELECT lane, COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox GROUP BY lane"
        ):
            self.usage[Lane(lane)] = LaneUsage(count, nbytes)
        self.counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        self._take_reserve()
        self.pressure = pressured_lanes(self._bytes_by_lane(), self.quotas)
        try:  # before any thread: a start that fails here must leave none to keep it alive
            self._checkpoint_conn = connect(self.path, synchronous=self.cfg.synchronous)
        except sqlite3.Error as exc:
            conn.close()
            self._conn = None
            raise StoreError(f"cannot open database {self.path} a second time: {exc}") from None
        self._closed = False
        self._failed = None
        self._sync.refresh()
        self._thread = threading.Thread(target=self._run, name="store-writer")
        self._thread.start()
        if unsealed:  # an upgrade: alarms are taken meanwhile, and old rows read as they are
            self._sealer_thread = threading.Thread(target=self._seal_old_rows, name="store-seal")
            self._sealer_thread.start()
        self._checkpointer.start()
        self._housekeeping.start()
        self._clock_check.start()
        log.info(
            "store open: %s, session %d, pending %s%s",
            self.path,
            self.session,
            {ln.label: u.count for ln, u in self.usage.items()},
            "" if clean else " (previous run did not stop cleanly; database verified)",
        )

    def _open(self, clean: bool) -> tuple[sqlite3.Connection, bool]:
        """The database opened and its session begun; and whether rows from before encryption
        are left. Raises StoreError, or sqlite3.OperationalError when the disk has no room."""
        conn = open_database(
            self.path, key=self.key_path, synchronous=self.cfg.synchronous, check=not clean
        )
        try:
            self.cipher = EventCipher.for_database(conn, self.key_path)
            unsealed = has_plain_rows(conn)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            max_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            self._next_seq = max(int(meta.get("next_seq", 1)), int(max_seq) + 1)
            self._first_seq = self._next_seq
            self._steady_base = int(meta.get("steady_ms", 0))
            self._steady_saved = self._steady_base
            before = meta.get("wall_offset_ms")
            self._offset_before = None if before is None else int(before)
            self._offset_saved = self._offset_before
            # saved with it since it was saved at all; a journal from before, at the stop
            self._off_before = int(meta.get("wall_offset_steady_ms", self._steady_base))
            self._mono_at_open = self._clock.monotonic_ms()
            self.session = int(meta.get("session", 0)) + 1
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                self._set_meta(conn, session=self.session, clean_stop=0, next_seq=self._next_seq)
        except (StoreError, sqlite3.Error) as exc:
            conn.close()
            if disk_full(exc):
                raise
            raise held_elsewhere(self.path, exc) or StoreError(f"{self.path}: {exc}") from None
        return conn, unsealed

    def _seal_old_rows(self) -> None:
        """Events written before encryption, sealed a batch per writer commit."""
        cipher = self.cipher
        assert cipher is not None

        def batch(conn: sqlite3.Connection, after: int) -> tuple[int, int] | None:
            done = cipher.seal_batch(conn, after)
            if done is not None:
                self._rows_since_checkpoint += done[1]  # the writer's thread, like commits
            return done

        after, sealed = 0, 0
        log.info("store: sealing the events written before encryption, in the background")
        while True:
            try:
                done = self.write(partial(batch, after=after)).result(120)
            except StoreClosed:
                return  # the next start goes on from where this one stopped
            except Exception as exc:
                log.warning("store: events from before encryption not all sealed: %s", exc)
                return
            if done is None:
                log.info("store: %d events written before encryption sealed", sealed)
                return
            after, sealed = done[0], sealed + done[1]

    def _read_clean_flag(self) -> bool:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return True
        # A clean stop leaves no write-ahead log: the file alone is then read, as it is, without
        # the -shm file that reading a WAL database makes, which a full disk has no room for.
        wal = self.path.with_name(self.path.name + "-wal")
        whole = not wal.exists() or wal.stat().st_size == 0
        try:
            return bool(meta_value(self.path, "clean_stop", immutable=whole))
        except sqlite3.DatabaseError:
            return False

    def stop(self) -> None:
        # closed first: a housekeeping pass waiting behind another program's lock is then
        # refused (see ``_given_up_on_lock``), not waited for until the lock goes
        with self._lock:
            self._closed = True
        self._clock_check.stop()
        self._housekeeping.stop()
        self._checkpointer.stop()
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        if self._sealer_thread is not None:
            self._sealer_thread.join()
            self._sealer_thread = None
        conn = self._conn
        if conn is not None:
            try:
                # not with the alarms' half: the next start, on a disk still full, opens from it
                if self._failed is None:
                    self.reserve.with_room(lambda: self._mark_clean(conn), alarms=False)
                self.reserve.with_room(
                    lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"), alarms=False
                )
            except sqlite3.Error as exc:
                log.error("store: stop not marked clean (%s); the next start verifies it", exc)
            finally:
                conn.close()
            self._conn = None
        log.info("store closed: %s", self.path)

    def _mark_clean(self, conn: sqlite3.Connection) -> None:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            steady = self.steady_ms()
            self._set_meta(conn, clean_stop=1, steady_ms=steady)
            offset = self._wall_offset()
            if offset is not None:
                self._set_meta(conn, wall_offset_ms=offset, wall_offset_steady_ms=steady)
            self._bump_counters(conn, dict(self._unsaved))
        self._unsaved = Counter()  # saved: the store started again must not add them twice

    def _take_reserve(self) -> None:
        self.reserve.take(self._free_disk(self.path.parent), self.floor_bytes)
        self.disk_free = self._free_disk(self.path.parent)

    @property
    def floor_bytes(self) -> int:
        """Free disk below which events must make room for themselves (others writing to this
        disk for the gateway keep off it too)."""
        return int(self.cfg.min_free_disk_mb * MB)

    def healthy(self) -> bool:
        return self._failed is None and self._thread is not None and self._thread.is_alive()

    def health(self) -> dict[str, Any]:
        return {
            "pending": {ln.label: u.count for ln, u in self.usage.items()},
            "pending_bytes": {ln.label: u.bytes for ln, u in self.usage.items()},
            "storage_pressure": [ln.label for ln in self.pressure],
            "disk_free_bytes": self.disk_free,
            "disk_reserve": self.reserve.state,
            "counters": dict(self.counters),
        }

    def lock_wait(self) -> dict[str, Any] | None:
        """For the health message: how long another program has held the database's lock and
        how many writes (alarms among them, perhaps) wait for it; None while none does."""
        held = self.locked
        if held is None:
            return None
        held_s = max(0, self._clock.monotonic_ms() - held.since_ms) / 1000
        return {"for_s": round(held_s, 1), "waiting": held.waiting}

    def subscribe(self, listener: Callable[[set[Lane]], None]) -> None:
        """Call ``listener(lanes)`` after each commit that added pending events."""
        self._listeners.append(listener)

    # ---- clocks -----------------------------------------------------------------------------

    def steady_ms(self) -> int:
        """Milliseconds of gateway running time, carried across restarts.

        Ages and TTLs use this instead of the wall clock, which on a Pi without RTC can jump by
        days when NTP first syncs. Time while powered off does not count.
        """
        return self._steady_base + self._clock.monotonic_ms() - self._mono_at_open

    def check_clock(self) -> None:
        """Ask whether the wall clock is synchronised. When it has just become so, the events
        this session stamped before are dated again, from the running time since each: a Pi
        that booted with yesterday's time (fake-hwclock) and NTP late would otherwise send the
        morning's meals dated yesterday evening, and they may wait hours in the outbox, so
        the platform cannot date them by arrival either. Rows of earlier sessions stay as
        they are: the time the gateway was off is not known."""
        was = self._sync.synced
        if self._sync.refresh() and not was:
            offset = self._clock.wall_ms() - self.steady_ms()
            self._redate_from(self._first_seq, self._next_seq, offset, 0)
            for listener in self._clock_set:
                try:
                    listener(offset)
                except Exception:
                    log.exception("store: dating again after the clock was set failed")

    @property
    def clock_synced(self) -> bool:
        return self._sync.synced

    @property
    def off_before_ms(self) -> int:
        """What was stamped before this running time was followed by the time off
        (``time_off_ms``): the running time of the last save while the clock was synchronised
        in an earlier session, normally this session's start. What a later session stamped
        with its clock never synchronised (the router down) is not: its own time off is not
        known, and the whole gap since that save would make an elder settled a minute before
        a restart look settled hours ago."""
        return self._off_before

    def time_off_ms(self) -> int:
        """How long the gateway was off before this session, as far as synchronised clocks
        prove it: the wall clock's lead over running time now, less its lead at the last
        session's last save while synchronised (running time stands still while the gateway
        is off). 0 when either is unknown, and with ``assume_synced``, which proves nothing.
        A clock stepped while the gateway ran shows in neither: a restart seconds after NTP
        moved a wrong clock forward adds nothing."""
        if self._time_off is None:
            if self._offset_before is None:
                self._time_off = 0  # nothing saved before: nothing to prove it with
            elif (now := self._wall_offset()) is not None:
                # once known it stays: a clock stepped later, while running, is no time off
                self._time_off = max(0, now - self._offset_before)
        return self._time_off or 0

    def _offset_moved(self, offset: int | None) -> bool:
        """Whether the wall clock's lead over running time is to be saved: known now and not
        yet, or moved (NTP stepped the clock) since it was. Saved at the next commit (within
        the housekeeping interval on a quiet site), so a restart after a step does not take
        the step for time switched off; a crash inside that window still would."""
        if offset is None:
            return False
        return self._offset_saved is None or abs(offset - self._offset_saved) > OFFSET_MOVED_MS

    def _wall_offset(self) -> int | None:
        """Wall time minus running time, while the clock is known to be synchronised."""
        if not self._sync.synced or self._sync.source == "assume_synced":
            return None
        return self._clock.wall_ms() - self.steady_ms()

    def when_clock_set(self, listener: Callable[[int], object]) -> None:
        """``listener(offset_ms)`` each time the wall clock is found synchronised after it was
        not, on the clock check's thread: what this session stamped in running time since
        happened at wall time running time + ``offset_ms``. For what others stamp in running
        time while the clock is not set (kept frames), to date it as the events are."""
        self._clock_set.append(listener)

    def _redate_from(self, first: int, end: int, offset: int, done: int) -> None:
        """Seqs ``first`` to ``end`` (excluded), ``REDATE_SEQS`` a commit: hours offline can
        leave hundreds of thousands of rows, and an alarm must not wait for them all."""
        last = min(end, first + REDATE_SEQS)

        def redate(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE events SET ts_ms = steady_ms + ?, clock_synced = 1"
                " WHERE seq >= ? AND seq < ? AND clock_synced = 0",
                (offset, first, last),
            ).rowcount

        def then(receipt: Receipt[int]) -> None:
            failed = receipt.exception()
            if failed is not None:
                log.warning("store: events stamped before the clock was set keep it: %s", failed)
            elif last < end:
                self._redate_from(last, end, offset, done + receipt.result())
            elif done + receipt.result():
                log.info(
                    "store: %d events stamped before the clock was set dated again",
                    done + receipt.result(),
                )
                self.redated += 1

        try:
            self.write(redate).add_done_callback(then)
        except StoreClosed:
            return

    # ---- reading back -----------------------------------------------------------------------

    def recent(self, event_type: str, within_ms: int) -> list[tuple[int, dict[str, Any]]]:
        """(age, data) of the events of one type recorded in the last ``within_ms``, newest
        first: what a stage must remember across a restart (an elder settled a minute ago).
        The age is in running time, and for an event stamped before ``off_before_ms`` the
        time the gateway was off since (``time_off_ms``). Reads back from the newest event and stops
        at the first older one in running time, so the journal's length does not matter; a
        journal that cannot be read gives nothing, logged; an event that cannot be read is
        passed over, logged, and the older ones are still read (one damaged row must not
        hide an elder settled before it)."""
        now, off, before = self.steady_ms(), self.time_off_ms(), self._off_before
        out: list[tuple[int, dict[str, Any]]] = []
        cipher = self.cipher
        if cipher is None:
            return out
        try:
            conn = connect(self.path, readonly=True)
        except sqlite3.Error as exc:
            log.warning("store: cannot read recent %s events: %s", event_type, exc)
            return out
        unreadable = 0
        try:
            rows = conn.execute(
                "SELECT steady_ms, type, event_id, data FROM events ORDER BY seq DESC"
            )
            for steady, etype, event_id, data in rows:
                if now - steady > within_ms:
                    break
                age = max(0, now - steady) + (off if steady < before else 0)
                if etype != event_type or age > within_ms:
                    continue
                try:
                    out.append((age, json.loads(cipher.open(event_id, data))))
                except (ValueError, StoreError):
                    unreadable += 1
        except sqlite3.Error as exc:
            log.warning("store: cannot read recent %s events: %s", event_type, exc)
        finally:
            conn.close()
        if unreadable:
            log.warning("store: %d recent %s events could not be read", unreadable, event_type)
        return out

    # ---- producers --------------------------------------------------------------------------

    def submit(
        self, event: Event, domain: Sequence[DomainWrite] = (), *, waited: bool = False
    ) -> Receipt[StoredEvent]:
        """Hand the event to the writer; the receipt settles when its commit is done.
        ``waited``: the caller waits for it (to acknowledge its source), so telemetry too is
        committed without lingering."""
        op = self._record_op(event, domain, waited)
        self._enqueue(op)
        return op

    def submit_all(self, events: Sequence[Event]) -> list[Receipt[StoredEvent]]:
        """The events of one message from a source, which is acknowledged for all or none:
        committed together, in one commit, and taken back together (see ``wait``). Apart,
        some could be on disk when the source is NAKed, and recorded again when it resends."""
        ops = [self._record_op(event, (), True) for event in events]
        if len(ops) > 1:
            group = tuple(ops)
            for op in ops:
                op.group = group
        self._enqueue(*ops)
        return list(ops)

    def _record_op(self, event: Event, domain: Sequence[DomainWrite], waited: bool) -> _Record:
        data = event.data
        clock = self._clock
        return _Record(
            self._settled,
            event,
            data_json=compact_json(data if type(data) is dict else dict(data)),
            ts_ms=clock.wall_ms(),
            clock_synced=self._sync.synced,
            steady_ms=self._steady_base + clock.monotonic_ms() - self._mono_at_open,
            domain=domain,
            waited=waited,
        )

    def record(
        self, event: Event, domain: Sequence[DomainWrite] = (), timeout: float = 30.0
    ) -> StoredEvent:
        """Commit the event (and its domain rows); return only once it is on disk. Raises
        ``Withdrawn`` when it was not committed in time (see ``wait``)."""
        return self.wait([self.submit(event, domain, waited=True)], timeout)[0]

    def wait(self, receipts: Sequence[Receipt[T]], timeout: float) -> list[T]:
        """The receipts' values, waited for up to ``timeout`` in all.

        When the time runs out, the writes whose commit has not begun are taken back and raise
        ``Withdrawn``: a caller that gives up (a NAKed call, a counter's "not recorded") is
        never contradicted by a commit afterwards, which would record a call twice or charge
        a meal staff settled by hand. A commit already under way is waited for (a lock for the
        busy timeout at most); a writer stuck beyond that leaves TimeoutError: not known.
        """
        deadline = time.monotonic() + timeout
        try:
            return [r.result(max(0.0, deadline - time.monotonic())) for r in receipts]
        except TimeoutError:
            pass
        with self._settled:
            for r in receipts:
                r._withdrawn = True
            taken_back = [r for r in receipts if not r._done and not r._claimed]
        resolve(self._settled, [(r, Withdrawn(WITHDRAWN)) for r in taken_back])
        deadline = time.monotonic() + self._busy_ms / 1000 + SETTLE_GRACE_S
        return [r.result(max(0.0, deadline - time.monotonic())) for r in receipts]

    def mark_delivered(self, items: Sequence[Delivered]) -> Receipt[int]:
        op = _Ack(self._settled, items)
        self._enqueue(op)
        return op

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> Receipt[T]:
        """Run ``fn(conn)`` inside the writer's next transaction."""
        op = _Write(self._settled, fn)
        self._enqueue(op)
        return op

    def _enqueue(self, *ops: _Op) -> None:
        """Queue the ops one after the other (a group's are not split by another producer's)."""
        refused: list[_Op] = []
        with self._lock:
            if self._closed:
                raise StoreClosed(f"store {self.path} is not open")
            if self._failed is not None:
                raise StoreClosed(f"store writer failed: {self._failed}")
            for op in ops:
                if (
                    self.locked is not None
                    and _is_background(op)
                    and self._queue.qsize() >= WAITING_MAX_WHILE_LOCKED
                ):
                    refused.append(op)
                else:
                    self._queue.put(op)
            self._refused_locked += len(refused)
        if refused:
            error = Backlogged(f"{self.path} is locked by another program; telemetry refused")
            resolve(self._settled, [(op, error) for op in refused])

    # ---- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        records: deque[_Op] = deque()
        others = _Upkeep()
        try:
            self._loop(records, others)
        except BaseException as exc:
            log.critical("store writer failed: %s", exc, exc_info=True)
            self._fail(exc, [*records, *others])

    def _loop(self, records: deque[_Op], others: _Upkeep) -> None:
        """Producers' writes first: each turn commits the waiting events and write() calls,
        in their order (up to batch_max_rows), then at most one bounded batch of the store's
        own maintenance (deleting delivered events, housekeeping). An alarm so waits for one
        short commit at most, not for a queue of acknowledgements, which cannot starve either.

        The deletions of delivered telemetry wait up to ``telemetry_linger_ms`` for the next
        commit of events and ride along in it: the two touch the same pages, and the SD card
        is then written once for both. Never beside an alarm, whose commit stays short.
        """
        stopping = False
        deliveries_since: float | None = None  # when telemetry deliveries began to wait
        while True:
            if not records and not others:
                if stopping:
                    return
                stopping = self._take(self._queue.get(), records, others)
            stopping = self._drain(records, others) or stopping
            if records:
                taken, stopping = self._records_batch(records, others, stopping)
                if others and not any(map(_is_p0, taken)):
                    self._ride_along(taken, others)
                self._commit(taken)
                stopping = self._drain(records, others) or stopping
            if not others:
                deliveries_since = None
                continue
            if not stopping and self._deliveries_may_wait(others):
                now = time.monotonic()
                deliveries_since = deliveries_since or now
                left = deliveries_since + self.cfg.telemetry_linger_ms / 1000 - now
                if left > 0:
                    if records:  # taken during the commit (an alarm, say): committed first
                        continue
                    try:
                        item = self._queue.get(timeout=left)
                    except queue.Empty:
                        continue  # the wait is over: committed on their own next turn
                    stopping = self._take(item, records, others) or stopping
                    continue
            deliveries_since = None
            if others:
                batch: list[_Op] = [others.popleft()]
                rows = _rows(batch[0])
                while others and rows + _rows(others.first()) <= self.cfg.batch_max_rows:
                    rows += _rows(others.first())
                    batch.append(others.popleft())
                self._commit(batch)

    def _records_batch(
        self, records: deque[_Op], others: _Upkeep, stopping: bool
    ) -> tuple[list[_Op], bool]:
        """The next commit's records (see ``_lingered``), a group never cut off at its end: a
        group's members follow each other in the queue, the rest of one this moment."""
        batch, stopping = self._lingered(records, others, stopping)
        last = batch[-1]
        while isinstance(last, _Record) and last.group is not None and last is not last.group[-1]:
            if not records:
                stopping = self._take(self._queue.get(), records, others) or stopping
                continue
            last = records.popleft()
            batch.append(last)
        return batch, stopping

    def _lingered(
        self, records: deque[_Op], others: _Upkeep, stopping: bool
    ) -> tuple[list[_Op], bool]:
        """The next commit's records, lingering for more if configured, and whether the writer
        is stopping: the stop signal may be taken off the queue while it lingers, and must not
        then be waited for again. Telemetry nobody waits for lingers longest: each commit
        writes several pages to the SD card whatever it holds, and so does the deletion after
        delivery, so one commit for a second's sightings instead of one for each spares it."""
        batch: list[_Op] = []
        started = time.monotonic()
        while True:
            while records and len(batch) < self.cfg.batch_max_rows:
                batch.append(records.popleft())
            if stopping or len(batch) >= self.cfg.batch_max_rows:
                return batch, stopping
            linger_s = self._linger_s(batch)  # only for a batch not yet full: a backlog's are
            if not linger_s:
                return batch, stopping
            left = started + linger_s - time.monotonic()
            if left <= 0:
                return batch, False
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return batch, False
            if self._take(item, records, others):
                return batch, True

    def _ride_along(self, batch: list[_Op], others: _Upkeep) -> None:
        """Deliveries waiting at the head of ``others`` join a commit of events."""
        rows = sum(map(_rows, batch))
        while others and isinstance(others.first(), _Ack):
            if rows + _rows(others.first()) > self.cfg.batch_max_rows:
                return
            rows += _rows(others.first())
            batch.append(others.popleft())

    def _deliveries_may_wait(self, others: _Upkeep) -> bool:
        """Only deliveries of telemetry, and fewer than a commit holds."""
        if not self.cfg.telemetry_linger_ms:
            return False
        return not others.urgent and others.rows < self.cfg.batch_max_rows

    def _linger_s(self, batch: list[_Op]) -> float:
        if any(map(_is_p0, batch)):
            return 0.0
        linger_ms = self.cfg.batch_linger_ms
        if all(map(_is_background, batch)):
            linger_ms = max(linger_ms, self.cfg.telemetry_linger_ms)
        return linger_ms / 1000

    def _take(self, item: object, records: deque[_Op], others: _Upkeep) -> bool:
        """File one queued item; True when it is the stop signal."""
        if item is _STOP:
            return True
        if isinstance(item, _Record | _Write):
            records.append(item)
        else:
            others.append(item)  # type: ignore[arg-type]
        return False

    def _drain(self, records: deque[_Op], others: _Upkeep) -> bool:
        stop = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return stop
            stop = self._take(item, records, others) or stop

    def _fail(self, exc: BaseException, held: Iterable[_Op]) -> None:
        """The writer has failed: refuse what it ``held`` (taken off the queue, not committed)
        and what is queued, and from now on any write (see ``_enqueue``)."""
        with self._lock:  # a write being queued now is in the queue, or refused
            self._failed = self._failed or exc
        items: list[object] = list(held)
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        resolve(
            self._settled,
            [
                (it, StoreClosed(f"store writer failed: {exc}"))
                for it in items
                if isinstance(it, Receipt)
            ],
        )

    def _commit(self, batch: list[_Op]) -> None:
        """Commit the batch, but for what its callers took back meanwhile (see ``wait``);
        tried whole again while another program holds the lock. A failure that ends the
        writer (see ``_run``) leaves nothing of it half written nor waiting: it is refused,
        and its transaction rolled back."""
        try:
            while batch := self._claim(batch):
                if self._commit_or_isolate(batch):
                    return
        except BaseException as exc:
            conn = self._conn
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._fail(exc, batch)
            raise

    def _claim(self, batch: list[_Op]) -> list[_Op]:
        """The ops of the batch still wanted, marked as being committed: from now on a
        caller who gives up waits for the outcome instead of taking them back."""
        with self._settled:
            claimed = [op for op in batch if not op._withdrawn]
            for op in claimed:
                op._claimed = True
        if len(claimed) < len(batch):
            resolve(self._settled, [(op, Withdrawn(WITHDRAWN)) for op in batch if op._withdrawn])
        return claimed

    def _commit_or_isolate(self, batch: list[_Op]) -> bool:
        """Commit the batch, or settle each op of it with its own error; False when another
        program held the database's lock past the busy timeout, for the batch to be tried
        again whole: split, each op would wait out the timeout in turn, and be refused."""
        conn = self._conn
        assert conn is not None
        seq_before = self._next_seq
        if self._refused_locked:  # only after another program's lock: no lock taken per commit
            with self._lock:
                refused, self._refused_locked = self._refused_locked, 0
            self._count_unsaved(f"refused_{Lane.P2.label}", refused)
        delta = _Delta()
        results: list[Any] = []
        steady, offset = self.steady_ms(), self._wall_offset()
        try:
            conn.execute("BEGIN IMMEDIATE")
            changes = conn.total_changes
            results = self._apply(conn, batch, delta)
            counters = self._unsaved + Counter(delta.counters)
            writes = (
                conn.total_changes != changes
                or bool(counters)
                or steady - self._steady_saved >= STEADY_SAVE_MS
                or self._offset_moved(offset)
            )
            if writes:
                self._set_meta(conn, next_seq=self._next_seq, steady_ms=steady)
                if offset is not None:
                    self._set_meta(conn, wall_offset_ms=offset, wall_offset_steady_ms=steady)
                self._bump_counters(conn, dict(counters))
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._next_seq = seq_before
            if disk_full(exc) and self._give_room(batch):
                self._commit(batch)  # once for each part of the reserve given up
                return True
            if locked(exc) and not self._given_up_on_lock():
                waiting = len(batch) + self._queue.qsize()
                if self.locked is None:
                    conn.execute(f"PRAGMA busy_timeout = {LOCKED_RETRY_MS}")
                    self.locked = LockedOut(self._clock.monotonic_ms() - self._busy_ms, waiting)
                else:
                    self.locked = self.locked._replace(waiting=waiting)
                self._flood_log.error(
                    "locked",
                    "store: %s is locked by another program (%s); %d writes wait for it, "
                    "alarms too: find it with 'fuser -v %s'",
                    self.path,
                    exc,
                    waiting,
                    self.path,
                )
                return False
            units = _units(batch)
            if len(units) > 1:
                # Isolate the op (or group) that failed so it cannot take the rest of the
                # batch with it. Each waits its turn: until then it may be taken back.
                with self._settled:
                    for op in batch:
                        op._claimed = False
                for unit in units:
                    self._commit(unit)
                return True
            err: BaseException = exc
            if disk_full(exc):
                err = StorageFull(f"disk full writing {self.path}")
                for op in batch:
                    if isinstance(op, _Record):
                        # refused like any event the full disk has no room for, and counted so
                        self._count_unsaved(f"refused_{op.lane.label}")
            resolve(self._settled, [(op, err) for op in batch])
            self._flood_log.error("write-failed", "store write failed: %s", exc)
            return True
        if self.locked is not None:
            self.locked = None
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        self.commits += 1
        if writes:
            self._unsaved = Counter()
            self._steady_saved = steady
            self._offset_saved = offset if offset is not None else self._offset_saved
            self._rows_since_checkpoint += sum(map(_rows, batch))
        self._apply_delta(delta)
        resolve(self._settled, zip(batch, results, strict=True))
        if delta.new_lanes:
            self._notify(delta.new_lanes)
        return True

    def _count_unsaved(self, name: str, n: int = 1) -> None:
        """Counted outside a commit: saved by the next one that writes (or at the stop)."""
        if n:
            self.counters[name] = self.counters.get(name, 0) + n
            self._unsaved[name] += n

    def _given_up_on_lock(self) -> bool:
        """Once the store is stopping, a lock is waited for no longer: what is still queued
        is refused at once, not after a timeout each, so the stop ends in time."""
        with self._lock:
            closed = self._closed
        if closed and self._conn is not None:
            self._conn.execute("PRAGMA busy_timeout = 0")
        return closed

    def _notify(self, lanes: set[Lane]) -> None:
        """Tell each listener what a commit added. One that fails must not end the writer,
        which would then refuse every event, nor keep the others from hearing (the publisher
        waits for its word): it is logged, by type and line only, at most every 30 s."""
        for listener in self._listeners:
            try:
                listener(lanes)
            except Exception as exc:
                name = getattr(listener, "__qualname__", type(listener).__name__)
                self._listener_log.warning(
                    name,
                    "store commit listener %s failed: %s; events are still stored",
                    name,
                    raised_at(exc),
                )

    def _give_room(self, batch: list[_Op]) -> bool:
        """The next part of the reserve given up for a write the full disk refused: the
        records' half, and the alarms' half only for a commit that holds an alarm."""
        reserve = self.reserve
        return reserve.release(alarms=False) or (any(map(_is_p0, batch)) and reserve.release())

    def _apply(self, conn: sqlite3.Connection, batch: list[_Op], delta: _Delta) -> list[Any]:
        """Apply the ops in their order; each run of consecutive events is inserted together,
        so an event whose domain row needs an earlier write() call sees it applied."""
        results: list[Any] = [None] * len(batch)
        run: list[tuple[int, _Record]] = []
        for i, op in enumerate(batch):
            if isinstance(op, _Record):
                run.append((i, op))
                continue
            if run:
                self._insert_records(conn, run, results, delta)
                run = []
            if isinstance(op, _Ack):
                results[i] = self._delivered(conn, op.items, delta)
            elif isinstance(op, _Write):
                results[i] = op.fn(conn)
            elif isinstance(op, _Housekeep):
                results[i] = self._housekeep_batch(conn, delta)
        if run:
            self._insert_records(conn, run, results, delta)
        self._make_room(conn, delta)
        return results

    def _insert_records(
        self,
        conn: sqlite3.Connection,
        records: list[tuple[int, _Record]],
        results: list[Any],
        delta: _Delta,
    ) -> None:
        sizes = [event_bytes(op.data_json) for _, op in records]
        self.disk_free = self._free_disk(self.path.parent)
        floor = self.floor_bytes
        full = self.reserve.released
        alarms_only = self.reserve.alarms_only
        admitted: Sequence[bool] | None = None  # None: above the floor, all admitted
        if self.disk_free < floor:
            # An event the reserve bars (refused below) claims no room: telemetry evicted for
            # it would be pending telemetry lost for nothing.
            barred = [
                (full and op.lane is Lane.P2) or (alarms_only and op.lane is Lane.P1)
                for _, op in records
            ]
            decision = admit(
                [op.lane for _, op in records],
                [0 if bar else size for bar, size in zip(barred, sizes, strict=True)],
                free_bytes=self.disk_free,
                floor_bytes=floor,
                p2_pending_bytes=self.usage[Lane.P2].bytes,
                reserve=self.reserve.kept,
            )
            if decision.evict_p2_bytes:
                self._evicted(conn, decision.evict_p2_bytes, delta, "evicted_disk")
            admitted = decision.admitted
        event_rows: list[tuple[int, str, str, int, int, int, int, int, int, bytes]] = []
        seal = self._sealer()
        outbox_rows: list[tuple[int, int, int, int]] = []
        added = dict.fromkeys(Lane, 0)
        added_bytes = dict.fromkeys(Lane, 0)
        session = self.session
        seq = self._next_seq
        refusals: list[StorageFull | None] = [None] * len(records)
        if full or alarms_only or admitted is not None:  # the disk is short: the rare case
            refusals = [
                self._refusal(op.lane, admitted is None or admitted[k], full, alarms_only)
                for k, (_, op) in enumerate(records)
            ]
            _share_lead(records, refusals)
        kept: list[_Record] = []  # a refused event's domain rows go with it
        for (i, op), size, refusal in zip(records, sizes, refusals, strict=True):
            lane = op.event.type.lane
            if refusal is not None:
                delta.count(f"refused_{lane.label}")
                results[i] = refusal
                continue
            etype = op.event.type
            event_id = op.event.event_id
            op.seq = seq
            op.session = session  # its receipt's result (``results[i]`` stays None)
            # Plain ints, not the enum and bool: sqlite3 binds exact ints markedly faster.
            event_rows.append(
                (
                    seq,
                    event_id,
                    etype.name,
                    etype.schema,
                    int(lane),
                    session,
                    op.ts_ms,
                    int(op.clock_synced),
                    op.steady_ms,
                    seal(event_id, op.data_json),
                )
            )
            outbox_rows.append((seq, int(lane), size, op.steady_ms))
            kept.append(op)
            added[lane] += 1
            added_bytes[lane] += size
            seq += 1
        self._next_seq = seq
        for lane in Lane:
            if added[lane]:
                delta.add(lane, added[lane], added_bytes[lane])
                delta.new_lanes.add(lane)
        delta.p2_added_bytes += added_bytes[Lane.P2]
        conn.executemany(
            "INSERT INTO events (seq, event_id, type, schema, lane, session, ts_ms, clock_synced,"
            " steady_ms, data) VALUES (?,?,?,?,?,?,?,?,?,?)",
            event_rows,
        )
        conn.executemany(
            "INSERT INTO outbox (seq, lane, bytes, steady_ms) VALUES (?,?,?,?)", outbox_rows
        )
        for op in kept:
            for write in op.domain:
                conn.execute(write.sql, write.params)

    def _refusal(
        self, lane: Lane, admitted: bool, full: bool, alarms_only: bool
    ) -> StorageFull | None:
        """Why an event cannot be written now, if it cannot."""
        if full and lane is Lane.P2:
            # what room the reserve gave is for alarms and records, not for telemetry
            return StorageFull("disk full: telemetry refused until there is room")
        if alarms_only and lane is Lane.P1:
            # the records spent their half of the reserve: the rest is kept for alarms
            return StorageFull(
                "disk full: records refused until there is room, the rest of the disk "
                "reserve is kept for alarms"
            )
        if not admitted:
            return StorageFull(
                f"free disk below {self.cfg.min_free_disk_mb} MB floor and no telemetry "
                "left to evict"
            )
        return None

    def _sealer(self) -> Callable[[str, str], bytes]:
        assert self.cipher is not None, "the writer runs only after start"
        return self.cipher.seal

    def reader(self) -> OutboxReader:
        """A read side of the outbox on its own connection, opening the events' data."""
        assert self.cipher is not None, "read only after start"
        return OutboxReader(self.path, self.cipher)

    def _delivered(
        self, conn: sqlite3.Connection, items: Sequence[Delivered], delta: _Delta
    ) -> int:
        now = self.steady_ms()
        done = 0
        for chunk in _chunks([d.seq for d in items], SQL_VARS):
            marks = ",".join("?" * len(chunk))
            removed = conn.execute(
                f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING seq, lane, bytes, erased",
                chunk,
            ).fetchall()
            gone, kept, doomed = [], [], []
            for seq, lane, nbytes, erased in removed:
                delta.add(LANES[lane], -1, -nbytes)
                if erased:
                    doomed.append(seq)
                elif lane == Lane.P2:
                    gone.append(seq)
                else:
                    kept.append(seq)
            if gone:
                conn.execute(f"DELETE FROM events WHERE seq IN ({','.join('?' * len(gone))})", gone)
            if doomed:
                _delete_erased(conn, doomed)
                delta.erased_deleted = True
            if kept:
                conn.execute(
                    f"UPDATE events SET delivered_steady_ms = ? "
                    f"WHERE seq IN ({','.join('?' * len(kept))})",
                    [now, *kept],
                )
            done += len(removed)
        delta.count("delivered", done)
        return done

    def _p2_excess(self, delta: _Delta) -> int:
        pending = self.usage[Lane.P2].bytes + delta.usage[Lane.P2].bytes
        return quota_excess(pending, self.quotas[Lane.P2])

    def _make_room(self, conn: sqlite3.Connection, delta: _Delta) -> None:
        """Telemetry over its quota makes room for what this commit adds, so the lane never
        grows past it. An older excess (the quota lowered over a large backlog) is evicted by
        housekeeping, a batch at a time: not in the next commit, which may be an alarm's."""
        excess = min(self._p2_excess(delta), delta.p2_added_bytes)
        if excess:
            self._evicted(conn, excess, delta, "evicted_quota")

    def _housekeep_batch(self, conn: sqlite3.Connection, delta: _Delta) -> _Chores:
        """At most ``batch_max_rows`` rows in all: expired telemetry first, then delivered
        events past retention, then telemetry over its quota."""
        budget = self.cfg.batch_max_rows
        expired = self._expire(conn, delta, budget)
        left = budget - expired
        if left:
            left -= self._purge_delivered(conn, left)
        evicted = 0
        excess = self._p2_excess(delta)
        if excess and left:
            evicted = self._evict_oldest_p2(conn, excess, delta, max_rows=left)
            delta.count("evicted_quota_p2", evicted)
            left -= evicted
        return _Chores(expired, evicted, more=not left)

    def _evict_oldest_p2(
        self, conn: sqlite3.Connection, nbytes: int, delta: _Delta, *, max_rows: int = -1
    ) -> int:
        """Evict the oldest pending telemetry until ``nbytes`` are freed or ``max_rows`` are
        gone (-1: no limit); returns how many."""
        freed = 0
        seqs = []
        for seq, size in conn.execute(
            "SELECT seq, bytes FROM outbox WHERE lane = ? ORDER BY seq LIMIT ?",
            (int(Lane.P2), max_rows),
        ):
            freed += size
            seqs.append(seq)
            if freed >= nbytes:
                break
        _delete_pending(conn, Lane.P2, seqs)
        delta.add(Lane.P2, -len(seqs), -freed)
        return len(seqs)

    def _evicted(self, conn: sqlite3.Connection, nbytes: int, delta: _Delta, reason: str) -> None:
        """Room made for the events of this commit, counted and logged."""
        count = self._evict_oldest_p2(conn, nbytes, delta)
        if count:
            delta.count(f"{reason}_p2", count)
            self._flood_log.warning(
                reason, "evicted %d oldest pending P2 events (%s)", count, reason
            )

    def _expire(self, conn: sqlite3.Connection, delta: _Delta, limit: int) -> int:
        """Up to ``limit`` expired events, oldest first: the outbox in ``seq`` order, which is
        that of running time, up to the first not yet expired; returns how many."""
        now = self.steady_ms()
        count = 0
        for lane, ttl in self.ttl_ms.items():
            cutoff = now - ttl
            expired: list[tuple[int, int]] = []
            rows = conn.execute(EXPIRE_SQL, (int(lane), limit - count))
            for seq, steady_ms, nbytes in rows:
                if steady_ms >= cutoff:
                    break
                expired.append((seq, nbytes))
            rows.close()
            if not expired:
                continue
            _delete_pending(conn, lane, [seq for seq, _ in expired])
            delta.add(lane, -len(expired), -sum(b for _, b in expired))
            delta.count(f"expired_{lane.label}", len(expired))
            count += len(expired)
        return count

    def _purge_delivered(self, conn: sqlite3.Connection, limit: int) -> int:
        """Up to ``limit`` delivered events past retention; returns how many."""
        purged = conn.execute(PURGE_SQL, (self.steady_ms() - self.keep_delivered_ms, limit))
        return purged.rowcount

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database without blocking the writer (PASSIVE);
        SQLite restarts the WAL from its beginning once it is fully copied.

        After events naming an erased person were deleted at their delivery, the WAL is
        emptied as well (tried once a look, never waited for): its older frames still hold
        their sealed copies, and the key that opens them lies beside it."""
        conn = self._checkpoint_conn
        if conn is not None and self._wal_holds_erased:
            self._wal_holds_erased = False
            emptied = False
            try:
                emptied = self.reserve.with_room(lambda: emptied_wal(conn, 0), alarms=False)
            finally:
                if not emptied:  # the next look tries again
                    self._wal_holds_erased = True
        now = time.monotonic()
        due = (
            self._rows_since_checkpoint >= CHECKPOINT_ROWS
            or now - self._last_checkpoint >= CHECKPOINT_MAX_S
        )
        if conn is not None and due and self._rows_since_checkpoint:
            self._rows_since_checkpoint = 0  # rows committed from here on count for the next
            self._last_checkpoint = now
            # not the alarms' half: given up here, what the checkpoint leaves of it goes to
            # whoever fills the disk, and while a reader keeps the WAL from starting over,
            # the next alarm needs room of its own
            self.reserve.with_room(
                lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)"), alarms=False
            )
            self.checkpoints += 1

    def housekeep(self) -> None:
        """Housekeeping: TTL expiry, journal retention and telemetry over its quota, through
        the writer like any write, a bounded batch per commit until done (producers' writes
        go between the batches); and the disk reserve taken back once there is room for it."""
        self._take_reserve()
        expired = evicted = 0
        more = True
        try:
            # not while another program holds the lock: passes would pile up behind it
            while more and not self._housekeeping.stopping.is_set() and self.locked is None:
                op = _Housekeep(self._settled)
                self._enqueue(op)
                [chores] = self.wait([op], 60)
                expired, evicted = expired + chores.expired, evicted + chores.evicted
                more = chores.more
        except (StoreClosed, Withdrawn):
            return
        finally:
            if expired:
                ttl_s = self.ttl_ms[Lane.P2] // 1000
                log.warning("expired %d pending P2 events older than %d s", expired, ttl_s)
            if evicted:
                log.warning("evicted %d oldest pending P2 events over the quota", evicted)

    # ---- accounting -------------------------------------------------------------------------

    def _apply_delta(self, delta: _Delta) -> None:
        for lane, change in delta.usage.items():
            u = self.usage[lane]
            u.count += change.count
            u.bytes += change.bytes
        for name, n in delta.counters.items():
            self.counters[name] = self.counters.get(name, 0) + n
        if delta.erased_deleted:
            self._wal_holds_erased = True
        pressure = pressured_lanes(self._bytes_by_lane(), self.quotas)
        if pressure != self.pressure:
            if pressure:
                log.warning(
                    "storage pressure: %s over quota (kept, never evicted)",
                    ", ".join(ln.name for ln in pressure),
                )
            else:
                log.info("storage pressure cleared")
        self.pressure = pressure

    def _bytes_by_lane(self) -> dict[Lane, int]:
        return {lane: u.bytes for lane, u in self.usage.items()}

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, **values: int) -> None:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            list(values.items()),
        )

    @staticmethod
    def _bump_counters(conn: sqlite3.Connection, counters: dict[str, int]) -> None:
        if counters:
            conn.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                list(counters.items()),
            )


def _is_p0(op: _Op) -> bool:
    return isinstance(op, _Record) and op.lane is Lane.P0


def _is_background(op: _Op) -> bool:
    """Telemetry that no source waits for."""
    return isinstance(op, _Record) and op.lane is Lane.P2 and not op.waited


def _may_linger(op: _Op) -> bool:
    """Deliveries of telemetry only: they may wait to ride along with the next events."""
    return isinstance(op, _Ack) and op.telemetry


def _share_lead(records: Sequence[tuple[int, _Record]], refusals: list[StorageFull | None]) -> None:
    """The events of one message share the fate of its most urgent one: they are answered
    together, so an alarm written while its status report is refused would be NAKed, resent,
    and written again under a new id each time. Its companions are written with it (a few
    hundred bytes from the reserve), or refused with it."""
    where = {id(op): k for k, (_, op) in enumerate(records)}
    for k, (_, op) in enumerate(records):
        if op.group is None:
            continue
        members = [where[id(m)] for m in op.group if id(m) in where]
        lead = min(members, key=lambda m: (records[m][1].lane, m))
        if lead != k:
            refusals[k] = refusals[lead]


def _units(batch: list[_Op]) -> list[list[_Op]]:
    """The batch cut into what may be committed apart: each op, but a group whole."""
    units: list[list[_Op]] = []
    for op in batch:
        group = op.group if isinstance(op, _Record) else None
        if group is not None and units and units[-1][-1] in group:
            units[-1].append(op)
        else:
            units.append([op])
    return units


def _rows(op: _Op) -> int:
    """Rows of work an op brings to a commit (what batch_max_rows bounds)."""
    return len(op.items) if isinstance(op, _Ack) else 1


def _delete_pending(conn: sqlite3.Connection, lane: Lane, seqs: Sequence[int]) -> None:
    """The oldest pending events of a lane, ``seqs`` (in order, none left out), gone with
    their outbox rows; the events by their keys, not by a range over the whole journal."""
    if not seqs:
        return
    conn.execute("DELETE FROM outbox WHERE lane = ? AND seq <= ?", (int(lane), seqs[-1]))
    for chunk in _chunks(seqs, SQL_VARS):
        conn.execute(f"DELETE FROM events WHERE seq IN ({','.join('?' * len(chunk))})", chunk)


def _delete_erased(conn: sqlite3.Connection, seqs: Sequence[int]) -> None:
    """Delivered events that name an erased person, overwritten where they were (all of the
    page, even one the deletion frees) like those the erasure itself deletes."""
    with overwriting(conn):
        conn.execute(f"DELETE FROM events WHERE seq IN ({','.join('?' * len(seqs))})", seqs)


def _chunks(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


__all__ = [
    "Backlogged",
    "Delivered",
    "DomainWrite",
    "Receipt",
    "StorageFull",
    "Store",
    "StoreClosed",
    "StoreError",
    "Withdrawn",
]
