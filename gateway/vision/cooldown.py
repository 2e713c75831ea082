"""The per-elder cooldown, kept across a restart of the gateway.

The decider holds it in memory, in the frames' clock; a restart (systemd brings the gateway
back within seconds) would forget an elder who is still at the counter and settle her meal
again. So the pipeline thread writes, every few seconds while it changes, when each elder in
cooldown was last seen, in the store's running time (which carries across restarts and
ignores wall-clock jumps), and the next start reads it back. Running time stands still while
the gateway is off: the time off that synchronised clocks prove (``Store.time_off_ms``) is
added to what was seen before this session, so a night switched off does not keep her from
the next day's meals. The file holds opaque elder ids and times only, is private like the
rest of the data directory, and is replaced whole.

An erasure rewrites it from what it read: the process's writers take turns (a save between
that read and that write would be lost), and the counter rewrites a file another process
replaced since its last save (``stamp``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TypeGuard

from gateway.private import remove_leftovers, replace_private

log = logging.getLogger(__name__)

FILE = "face-cooldown.json"
MAX_BYTES = 1 << 20  # some 20,000 elders in cooldown at once; a site has far fewer
_turns = threading.Lock()  # the pipeline thread's saves and an erasure's read-and-rewrite

Stamp = tuple[int, int, int]


def stamp(path: Path) -> Stamp | None:
    """Which file is there now (inode, modification time, size); None: none, or no telling."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def save(path: Path, last_seen_ms: dict[str, int]) -> Stamp | None:
    """Replace the file with elder -> running time (ms) last seen, durably: a staff
    confirmation saved just before a power cut must be there after it; returns the file's
    ``stamp``. Raises OSError (a full disk) with the file as it was: the caller counts it and
    tries again. Copies a crash left go too: one left just before a restart is too young to go
    at that start, and would otherwise name its elders until the next one."""
    with _turns:
        return _save(path, last_seen_ms)


def _save(path: Path, entries: Mapping[str, object]) -> Stamp | None:
    replace_private(path, json.dumps(entries).encode())
    written = stamp(path)
    _remove_leftovers(path)
    return written


def _remove_leftovers(path: Path) -> None:
    """Besides this version's copies aside, those that the versions of 2026-12-05 and early
    12-06 left (``face-cooldown.json.tmp``, then ``face-cooldown.json`` and mkstemp's random
    letters), which an upgraded site may hold."""
    remove_leftovers(path, f"{path.name}?*")


def _read(path: Path) -> dict[str, object] | None:
    """The file's entries; None when there is no file. Damage (bad JSON, nesting deep enough
    to overflow the parser, a file far larger than a site's elders need) gives {}, logged.
    A file that cannot be read (an I/O error of the card) raises OSError."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"over {MAX_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError) as exc:
        log.warning("face stage: cooldown file %s not read: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def load(
    path: Path, now_ms: int, within_ms: int, off_ms: int = 0, off_before_ms: int = 0
) -> list[tuple[str, float]]:
    """(elder, seconds since last seen) for those seen within ``within_ms``: by running time,
    plus ``off_ms`` (the time the gateway was off before this session, ``Store.time_off_ms``)
    for those seen before ``off_before_ms`` (running time, ``Store.off_before_ms``): a face
    stage started again within a session adds nothing. A running time ahead of ``now_ms`` counts as
    just now: after a crash the store's running time resumes from its last commit, which may
    be before the last save."""
    _remove_leftovers(path)
    try:
        entries = _read(path) or {}
    except OSError as exc:
        log.warning("face stage: cooldown file %s not read: %s", path, exc)
        entries = {}
    out = []
    for elder, value in entries.items():
        if not _is_time(value):
            continue
        age = max(0, now_ms - value) + (off_ms if value < off_before_ms else 0)
        if age <= within_ms:
            out.append((elder, age / 1000))
    return out


def forget(path: Path, elder: str) -> None:
    """An erased elder leaves no trace here either, nor in copies a crash left (a running
    counter writes only elders still in its gallery, which it reloads within
    ``gallery.refresh_s``); a damaged file is written again empty. Raises OSError when the
    file cannot be read or written (an I/O error, a full disk): her id may still be in it,
    and the erasure must say so."""
    with _turns:
        _remove_leftovers(path)
        data = _read(path)
        if data is None:
            return
        data.pop(elder, None)
        _save(path, {e: v for e, v in data.items() if _is_time(v)})


def _is_time(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
