"""Drop radio repeats: bands send each event several times with the same sequence number.

A repeat is the same (device, kind, code, seq) seen again within the window. An event without
a sequence is never dropped, and a new seq never is: sequences are small counters that wrap,
so only the window decides what counts as the same transmission.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

MAX_KEYS = 50_000  # per port: some 1,600 bands' sightings within a 30 s window


class Dedup:
    def __init__(
        self, window_s: float, now: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS
    ) -> None:
        self.window_s = window_s
        self._now = now
        self._max = max_keys
        self._seen: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()  # the store's thread forgets what it could not store

    def is_repeat(self, key: Hashable) -> bool:
        """True if ``key`` was seen within the window; otherwise remember it."""
        if self.window_s <= 0:
            return False
        now = self._now()
        with self._lock:
            self._expire(now)
            if key in self._seen:
                return True
            self._seen[key] = now
            if len(self._seen) > self._max:
                self._seen.popitem(last=False)
            return False

    def forget(self, key: Hashable) -> None:
        """Un-see a key whose event could not be stored, so the source's retry is not a repeat."""
        with self._lock:
            self._seen.pop(key, None)

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._seen:
            key, at = next(iter(self._seen.items()))
            if at >= cutoff:
                return
            del self._seen[key]
