"""The read side of the outbox: what is pending, per lane, in ``seq`` order.

Readers use their own connection (WAL lets them run beside the writer) and keep each read
short, so a reader never holds back checkpoints and lets the WAL file grow.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.events import LANES, Lane, StoredEvent
from gateway.logs import RateLimitedLog
from gateway.store.cipher import EventCipher, Undecryptable
from gateway.store.db import StoreError, connect

_flood = RateLimitedLog(logging.getLogger(__name__), 60.0)

_SELECT = (
    "SELECT e.seq, e.event_id, e.type, e.schema, e.lane, e.session, e.ts_ms, e.clock_synced,"
    " e.steady_ms, e.data FROM outbox o JOIN events e ON e.seq = o.seq"
)


def _row(r: tuple[Any, ...], data_json: str) -> StoredEvent:
    return StoredEvent(
        seq=r[0],
        event_id=r[1],
        type=r[2],
        schema=r[3],
        lane=LANES[r[4]],
        session=r[5],
        ts_ms=r[6],
        clock_synced=bool(r[7]),
        steady_ms=r[8],
        data_json=data_json,
    )


@dataclass(frozen=True)
class Page:
    """One read of a lane: the events that open, and how far the read got (``last_seq``, and
    ``full`` when it stopped at its limit), rows that do not open included."""

    events: list[StoredEvent]
    last_seq: int | None
    full: bool


class OutboxReader:
    def __init__(self, path: Path, cipher: EventCipher) -> None:
        self._conn = connect(path)
        self._conn.execute("PRAGMA query_only = ON")
        self._cipher = cipher
        self._unopened: set[int] = set()

    def read(self, lane: Lane, after_seq: int, limit: int) -> Page:
        """A row whose data does not open (a damaged file) is logged, counted and passed
        over: it cannot be sent, and it must not hold up the alarms behind it, so the page
        says how far the read got past it."""
        rows = self._conn.execute(
            f"{_SELECT} WHERE o.lane = ? AND o.seq > ? ORDER BY o.seq LIMIT ?",
            (int(lane), after_seq, limit),
        ).fetchall()
        out = []
        for r in rows:
            try:
                out.append(_row(r, self._cipher.open(r[1], r[9])))
            except Undecryptable as exc:
                self._unopened.add(r[0])
                _flood.warning("undecryptable", "outbox: seq %d not sent: %s", r[0], exc)
        return Page(out, rows[-1][0] if rows else None, len(rows) == limit)

    def pending(self, lane: Lane, after_seq: int, limit: int) -> list[StoredEvent]:
        return self.read(lane, after_seq, limit).events

    @property
    def undecryptable(self) -> int:
        """Pending rows passed over because their data does not open (each counted once)."""
        return len(self._unopened)

    def oldest_steady_ms(self) -> dict[Lane, int | None]:
        out: dict[Lane, int | None] = {}
        for lane in Lane:
            row = self._conn.execute(
                "SELECT steady_ms FROM outbox WHERE lane = ? ORDER BY seq LIMIT 1", (int(lane),)
            ).fetchone()
            out[lane] = None if row is None else int(row[0])
        return out

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class LaneStats:
    lane: Lane
    pending: int
    pending_bytes: int
    oldest_age_s: float | None
    evicted: int
    expired: int
    refused: int


@dataclass(frozen=True)
class OutboxStats:
    path: str
    session: int
    next_seq: int
    delivered: int
    lanes: tuple[LaneStats, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "session": self.session,
            "next_seq": self.next_seq,
            "delivered": self.delivered,
            "lanes": {
                s.lane.label: {
                    "pending": s.pending,
                    "pending_bytes": s.pending_bytes,
                    "oldest_age_s": s.oldest_age_s,
                    "evicted": s.evicted,
                    "expired": s.expired,
                    "refused": s.refused,
                }
                for s in self.lanes
            },
        }


def read_stats(path: Path) -> OutboxStats:
    """Figures for ``gateway outbox stats``; safe while the gateway runs (read-only).

    Ages are measured on the store's steady clock as last persisted by the writer.
    """
    try:
        found = path.exists()
    except OSError as exc:  # the service's own data directory (0700), read by another account
        raise StoreError(
            f"cannot read {path}: {exc.strerror}; run this as the user the gateway runs as"
        ) from None
    if not found:
        raise StoreError(f"no database at {path} (has the gateway run with this config?)")
    try:
        conn = connect(path, readonly=True)
        try:
            return _stats(conn, path)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from None


def _stats(conn: sqlite3.Connection, path: Path) -> OutboxStats:
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    now = int(meta.get("steady_ms", 0))
    lanes = []
    for lane in Lane:
        count, nbytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox WHERE lane = ?", (int(lane),)
        ).fetchone()
        oldest = conn.execute(
            "SELECT steady_ms FROM outbox WHERE lane = ? ORDER BY seq LIMIT 1", (int(lane),)
        ).fetchone()
        lanes.append(
            LaneStats(
                lane=lane,
                pending=int(count),
                pending_bytes=int(nbytes),
                oldest_age_s=None if oldest is None else max(0, now - oldest[0]) / 1000,
                evicted=sum(
                    int(v)
                    for k, v in counters.items()
                    if k.startswith("evicted_") and k.endswith(lane.label)
                ),
                expired=int(counters.get(f"expired_{lane.label}", 0)),
                refused=int(counters.get(f"refused_{lane.label}", 0)),
            )
        )
    return OutboxStats(
        path=str(path),
        session=int(meta.get("session", 0)),
        next_seq=int(meta.get("next_seq", 1)),
        delivered=int(counters.get("delivered", 0)),
        lanes=tuple(lanes),
    )
