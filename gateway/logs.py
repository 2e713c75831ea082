"""Logging set-up with redaction.

Code logs ids, never names, photos or secrets. As a second line of defence, any secret the
config holds (the MQTT password) is masked if it ever reaches a log line anyway.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

MASK = "***"


class RedactFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, MASK)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


class OneLineFilter(logging.Filter):
    """Text from outside (a request's fields, a device's bytes) may hold line breaks and other
    control characters: they are escaped, so that nobody can forge a log line or a terminal
    sequence. A traceback, added after this, keeps its lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if CONTROL.search(message):
            record.msg = CONTROL.sub(_escape, message)
            record.args = None
        return True


CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactFilter(secrets))
    handler.addFilter(OneLineFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class RateLimitedLog:
    """Log a recurring problem at most once per interval, with how many were suppressed.

    Bad input arrives in floods (a noisy RS-485 line); the log must stay readable and the SD
    card must not be worn out by it. Everything is still counted elsewhere.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval_s
        self._now = now
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: object) -> None:
        self._emit(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> None:
        self._emit(logging.ERROR, key, msg, *args)

    def _emit(self, level: int, key: str, msg: str, *args: object) -> None:
        """Safe from several threads at once (one limiter serves every port and the store's
        writer): the interpreter may switch threads between reading a count and writing it
        back, and without the lock a suppressed line would go uncounted."""
        now = self._now()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            suppressed = self._suppressed.pop(key, 0)
            self._last[key] = now
        if suppressed:
            self._log.log(level, msg + " (%d similar suppressed)", *args, suppressed)
        else:
            self._log.log(level, msg, *args)


def raised_at(exc: BaseException) -> str:
    """The exception's type and the line that raised it, not its message, which could quote
    the data in hand."""
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}"


def size_text(n: int) -> str:
    """Bytes for people: 512 B, 700.0 KiB, 64.0 MiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
