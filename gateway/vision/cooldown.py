"""The per-elder cooldown, kept across a restart of the gateway.

The decider holds it in memory, in the frames' clock; a restart (systemd brings the gateway
back within seconds) would forget an elder who is still at the counter and settle her meal
again. So the pipeline thread writes, every few seconds while it changes, when each elder in
cooldown was last seen, in the store's running time (which carries across restarts and
ignores wall-clock jumps), and the next start reads it back. The file holds opaque elder ids
and times only, is private like the rest of the data directory, and is replaced whole.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

FILE = "face-cooldown.json"


def save(path: Path, last_seen_ms: dict[str, int]) -> None:
    """Replace the file with elder -> running time (ms) last seen; a failure is logged, the
    counter goes on (the journal's acceptances still cover a restart)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(last_seen_ms, out)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("face stage: cooldown not saved: %s", exc)


def load(path: Path, now_ms: int, within_ms: int) -> list[tuple[str, float]]:
    """(elder, seconds since last seen) for those seen within ``within_ms``; a missing or
    damaged file gives nothing, logged when damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("face stage: cooldown file %s not read: %s", path, exc)
        return []
    if not isinstance(data, dict):
        return []
    out = []
    for elder, seen in data.items():
        if isinstance(seen, int) and not isinstance(seen, bool) and 0 <= now_ms - seen <= within_ms:
            out.append((str(elder), (now_ms - seen) / 1000))
    return out


def forget(path: Path, elder: str) -> None:
    """An erased elder leaves no trace here either (a running counter's next save agrees)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        data = {}  # damaged: nothing in it worth keeping
    if isinstance(data, dict):
        data.pop(elder, None)
    save(path, data if isinstance(data, dict) else {})
