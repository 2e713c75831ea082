"""SQLite store: the event journal and outbox, written by one thread in group commits."""

from gateway.store.db import StoreError, hold_exclusively
from gateway.store.outbox import OutboxReader, OutboxStats, read_stats
from gateway.store.writer import (
    Delivered,
    DomainWrite,
    Receipt,
    StorageFull,
    Store,
    StoreClosed,
)

__all__ = [
    "Delivered",
    "DomainWrite",
    "OutboxReader",
    "OutboxStats",
    "Receipt",
    "StorageFull",
    "Store",
    "StoreClosed",
    "StoreError",
    "hold_exclusively",
    "read_stats",
]
