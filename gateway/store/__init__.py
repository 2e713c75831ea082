"""SQLite store: the event journal and outbox, written by one thread in group commits."""

from gateway.store.db import StoreError, hold_exclusively
from gateway.store.outbox import OutboxReader, OutboxStats, read_stats
from gateway.store.writer import (
    Backlogged,
    Delivered,
    DomainWrite,
    Receipt,
    StorageFull,
    Store,
    StoreClosed,
    Withdrawn,
)

__all__ = [
    "Backlogged",
    "Delivered",
    "DomainWrite",
    "OutboxReader",
    "OutboxStats",
    "Receipt",
    "StorageFull",
    "Store",
    "StoreClosed",
    "StoreError",
    "Withdrawn",
    "hold_exclusively",
    "read_stats",
]
