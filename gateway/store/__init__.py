"""SQLite store: the event journal and outbox, written by one thread in group commits."""

from gateway.store.db import StoreError
from gateway.store.outbox import OutboxReader, OutboxStats, read_stats
from gateway.store.writer import Delivered, DomainWrite, StorageFull, Store, StoreClosed

__all__ = [
    "Delivered",
    "DomainWrite",
    "OutboxReader",
    "OutboxStats",
    "StorageFull",
    "Store",
    "StoreClosed",
    "StoreError",
    "read_stats",
]
