"""Another gateway using this one's identity: a copied SD card or config.

Both connect with one client id, so the broker closes one connection whenever the other
connects, for ever, and mosquitto names no reason. Each process marks its status messages
with an ``instance`` of its own and reads its own status topic back.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from gateway import jsonin

CONFLICT_WINDOW_S = 600  # the health flag stays up, and the log line quiet, this long


def new_instance() -> str:
    """Random per process start: two gateways, or two runs of one, never share it."""
    return secrets.token_hex(4)


def parse_status(payload: bytes) -> Mapping[str, Any] | None:
    try:
        body = jsonin.parse(payload.decode("utf-8"))
    except ValueError:  # not UTF-8, not JSON, or "[[[[..."
        return None
    return body if isinstance(body, dict) else None


def is_conflict(status: Mapping[str, Any], instance: str, session: int, echoed: bool) -> bool:
    """A status that another process wrote with a session at least ours. Earlier runs of this
    gateway wrote lower ones (the session is persisted and raised at every start), so their
    births and wills never count, nor does anything before our own birth came back once: the
    retained status found then may be from an installation this disk replaced, whose counter
    was higher."""
    other = status.get("session")
    return (
        echoed
        and status.get("instance") != instance
        and isinstance(other, int)
        and not isinstance(other, bool)
        and other >= session
    )


class IdentityWatch:
    """Reads this gateway's status topic. Called from the connection's thread only."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.conflicts = 0
        self.echoed = False  # our own status came back: the retained one is no longer older
        self._last_s: float | None = None

    def observe(self, payload: bytes, session: int, now_s: float) -> bool:
        """True for a status that shows another gateway with this identity."""
        status = parse_status(payload)
        if status is None:
            return False
        if status.get("instance") == self.instance:
            self.echoed = True
            return False
        if not is_conflict(status, self.instance, session, self.echoed):
            return False
        self.conflicts += 1
        self._last_s = now_s
        return True

    def health(self, now_s: float) -> dict[str, Any]:
        last = self._last_s
        return {
            "identity_conflict": last is not None and now_s - last < CONFLICT_WINDOW_S,
            "identity_conflicts": self.conflicts,
        }
