"""A small real file system filled to the last byte by another program."""

from __future__ import annotations

import errno
from pathlib import Path

DISK_MB = 8  # the size of the ``small_disk`` fixture's file system


def fill(disk: Path) -> Path:
    """Another program takes every free byte."""
    filler = disk / "runaway.log"
    with filler.open("wb", buffering=0) as f:  # nothing left in a buffer to fail at close
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler
