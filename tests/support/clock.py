"""A clock tests can move by hand (TTL, ages), instead of sleeping."""

from __future__ import annotations

import threading


class ManualClock:
    def __init__(self, wall_ms: int = 1_790_000_000_000, mono_ms: int = 1_000) -> None:
        self._wall = wall_ms
        self._mono = mono_ms
        self._lock = threading.Lock()

    def wall_ms(self) -> int:
        with self._lock:
            return self._wall

    def monotonic_ms(self) -> int:
        with self._lock:
            return self._mono

    def advance(self, ms: int) -> None:
        with self._lock:
            self._wall += ms
            self._mono += ms

    def step_wall(self, ms: int) -> None:
        """NTP setting the wall clock: running time goes on as it was."""
        with self._lock:
            self._wall += ms
