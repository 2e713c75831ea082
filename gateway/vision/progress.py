"""A progress bar for long enrolments and evaluations: a few lines, no dependency.

On a terminal it redraws one line; into a file or pipe it prints a line every tenth, so logs
of an installer's bulk enrolment stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30):
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_tenth = -1

    def __call__(self, done: int) -> None:
        fraction = min(done / self.total, 1.0)
        elapsed = time.monotonic() - self.started
        if self.tty:
            filled = round(fraction * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            end = "\n" if done >= self.total else ""
            self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {elapsed:5.0f} s{end}")
            self.stream.flush()
            return
        tenth = int(fraction * 10)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(f"{self.label}: {done}/{self.total} ({elapsed:.0f} s)\n")
