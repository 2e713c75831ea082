"""Database schema as an ordered list of migrations, tracked in ``PRAGMA user_version``.

A migration only moves forward (it adds, or replaces an index), in one transaction with the
version it brings; released migrations are never edited. A database written by a newer gateway
is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]


def _m1_journal_and_outbox(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": int}, pk="key")
    db.table("events").create(
        {
            "seq": int,
            "event_id": str,
            "type": str,
            "schema": int,
            "lane": int,
            "session": int,
            "ts_ms": int,
            "clock_synced": int,
            "steady_ms": int,
            "data": str,
            "delivered_steady_ms": int,
        },
        pk="seq",
        not_null={
            "event_id",
            "type",
            "schema",
            "lane",
            "session",
            "ts_ms",
            "clock_synced",
            "steady_ms",
            "data",
        },
    )
    db.table("events").create_index(["event_id"], unique=True)
    db.table("events").create_index(["lane", "delivered_steady_ms"])
    db.table("outbox").create(
        {"seq": int, "lane": int, "bytes": int, "steady_ms": int},
        pk="seq",
        not_null={"lane", "bytes", "steady_ms"},
        foreign_keys=[("seq", "events", "seq")],
    )
    db.table("outbox").create_index(["lane", "seq"])
    db.table("counters").create({"name": str, "value": int}, pk="name", not_null={"value"})
    db.table("requests").create(
        {"txn": str, "op": str, "response": str, "steady_ms": int},
        pk="txn",
        not_null={"op", "response", "steady_ms"},
    )
    db.table("requests").create_index(["steady_ms"])


def _m2_housekeeping_indexes(db: sqlite_utils.Database) -> None:
    """TTL expiry finds the expired rows of a lane by age, not by reading every pending row
    of a backlog while an alarm waits for the writer."""
    db.table("outbox").create_index(["lane", "steady_ms"], if_not_exists=True)


def _m3_sealed_event_data(db: sqlite_utils.Database) -> None:
    """Nothing to add: the version itself is the change. Since encryption at rest an event's
    ``data`` may be sealed bytes (gateway/store/cipher.py); a gateway of schema 2 or older
    reads it as JSON text and, put back onto such a journal, published the ciphertext to the
    platform as every pending event's data and counted the events delivered. At version 3
    those gateways refuse the database as newer than they support."""


def _m4_fewer_index_writes(db: sqlite_utils.Database) -> None:
    """Each new event wrote an entry in two indexes that only housekeeping reads, and each
    commit of them a page of each to the SD card. Telemetry expires by reading the outbox in
    ``seq`` order (that of its running time), and only delivered events, the ones retention
    purges, are indexed by delivery time."""
    db.execute("DROP INDEX IF EXISTS idx_outbox_lane_steady_ms")
    db.execute("DROP INDEX IF EXISTS idx_events_lane_delivered_steady_ms")
    db.execute(
        "CREATE INDEX idx_events_delivered ON events (lane, delivered_steady_ms) "
        "WHERE delivered_steady_ms IS NOT NULL"
    )


def _m5_erased_on_delivery(db: sqlite_utils.Database) -> None:
    """An event still to be delivered that names an erased person is marked on its outbox
    row, by ``seq``: the writer deletes it at its delivery rather than keeping it for review
    (gateway/store/erasure.py). On the outbox row, the mark goes with it whichever way the
    event leaves, and costs the path of new events nothing but a NULL."""
    db.execute("ALTER TABLE outbox ADD COLUMN erased INTEGER")


MIGRATIONS: tuple[Migration, ...] = (
    _m1_journal_and_outbox,
    _m2_housekeeping_indexes,
    _m3_sealed_event_data,
    _m4_fewer_index_writes,
    _m5_erased_on_delivery,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the schema up to date; return the version found before migrating."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(found)
    for version in range(found, SCHEMA_VERSION):
        # One transaction with its version: on the store's autocommit connection each
        # statement was its own, and a power cut between a migration and the version left it
        # done but to be run again, failing (a column or index already there) at every start.
        with db.atomic():
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
    return found


class SchemaTooNew(Exception):
    def __init__(self, found: int) -> None:
        self.found = found
        super().__init__(
            f"database schema version {found} is newer than this gateway supports "
            f"({SCHEMA_VERSION}); install the gateway version that wrote it or newer"
        )
