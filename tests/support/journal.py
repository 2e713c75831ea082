"""The journal's events read back from the file with its key, as the publisher reads them."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

from gateway.keys import read_key
from gateway.store.cipher import EventCipher


class Journalled(NamedTuple):
    seq: int
    event_id: str
    type: str
    data: dict[str, Any]


def journal(db: Path, type_prefix: str = "") -> list[Journalled]:
    """Committed events whose type starts with ``type_prefix``, in seq order."""
    cipher = EventCipher(read_key(db.with_name(db.name + ".key")))
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT seq, event_id, type, data FROM events WHERE type LIKE ? ORDER BY seq",
            (f"{type_prefix}%",),
        ).fetchall()
    return [Journalled(s, e, t, json.loads(cipher.open(e, d))) for s, e, t, d in rows]
