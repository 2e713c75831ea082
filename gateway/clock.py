"""Time sources.

A Pi has no RTC: until NTP has set the clock, the wall time may be days off. Events therefore
say whether the clock was synchronised when they were stamped (those still waiting are dated
again once it is: see ``Store.check_clock``), and nothing in the gateway orders or keeps data
by the wall clock: ordering uses ``seq``, ages use a steady clock (see Store), lengthened only
by the time switched off that synchronised clocks prove (``Store.time_off_ms``).
Audit frames also consult the wall clock, and only ever to delete earlier.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import subprocess
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)


class Clock(Protocol):
    def wall_ms(self) -> int: ...

    def monotonic_ms(self) -> int: ...


class SystemClock:
    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux, LP64): we only read ``status`` and the return value.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    ]


_TIME_ERROR = 5


@functools.cache
def _libc() -> ctypes.CDLL:
    """Found once: ``find_library`` runs ``ldconfig -p``, a process, at every call."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def kernel_synced() -> bool:
    """adjtimex(2) returns TIME_ERROR while the kernel considers the clock unsynchronised;
    timesyncd and chrony both clear it once they have a good source."""
    tx = _Timex()
    state = _libc().adjtimex(ctypes.byref(tx))
    return bool(state >= 0 and state != _TIME_ERROR)


def _command_says(args: list[str], expect: str) -> bool:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return expect in out.stdout


def probe(source: str) -> bool:
    if source == "assume_synced":
        return True
    if source == "never":
        return False
    if source == "timedatectl":
        return _command_says(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], "yes")
    if source == "chrony":
        return _command_says(["chronyc", "-n", "tracking"], "Leap status     : Normal")
    return kernel_synced()


class ClockSync:
    """Caches the last answer so recording an event never waits on a subprocess."""

    def __init__(self, source: str, interval_s: float) -> None:
        self.source = source
        self.interval_s = interval_s
        self._synced = False
        self._lock = threading.Lock()

    @property
    def synced(self) -> bool:
        return self._synced

    def refresh(self) -> bool:
        value = probe(self.source)
        with self._lock:
            if value != self._synced:
                log.info("wall clock synchronised: %s (source %s)", value, self.source)
            self._synced = value
        return value
