"""Disk space kept back for the moment the disk is full.

The free-disk floor keeps the gateway itself from filling the disk, but another program (a
runaway log, a full audit folder) can take the last byte. SQLite then cannot write at all: not
an alarm, and not the checkpoint that would let its write-ahead log start over. So the store
holds a file of real, allocated blocks beside the database, gives it up when a write fails for
want of space, and takes it back once the disk has room again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.private import open_private

log = logging.getLogger(__name__)
MB = 1024 * 1024
T = TypeVar("T")


SQLITE_IOERR_SHMSIZE = 4874


def disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL: the disk (or the database's size limit) has no room left. Also
    SQLITE_IOERR_SHMSIZE, the -shm file that opening a database sizes and cannot grow on a
    full disk (reported as a mere "disk I/O error")."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    return "full" in str(exc).lower() or exc.sqlite_errorcode == SQLITE_IOERR_SHMSIZE


class Reserve:
    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.released = False  # given up and not yet taken back: the disk was full

    @property
    def state(self) -> str:
        """off; held; released (the disk was full); waiting (never yet room enough to take)."""
        if not self.size_bytes:
            return "off"
        if self.released:
            return "released"
        return "held" if self._allocated() >= self.size_bytes else "waiting"

    def _allocated(self) -> int:
        """Bytes the file really holds on the disk: a file cut short while it was allocated (a
        power cut), or one from when `reserve_mb` was smaller, holds less than it should. A
        link in its place holds nothing of ours: it is never followed (see ``_open``)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return 0
        if not stat.S_ISREG(st.st_mode):
            return 0
        return min(st.st_size, st.st_blocks * 512)

    def _open(self) -> int:
        """The file, created 0600, never through a link: one planted in the data directory
        would have the gateway (perhaps run as root) extend or cut short any file it names."""
        return open_private(self.path, os.O_WRONLY)

    def take(self, free_bytes: int, floor_bytes: int) -> bool:
        """Allocate the file, or what it lacks, if the disk can spare that without going under
        the floor; True if it is held afterwards. A file larger than the reserve (``reserve_mb``
        lowered, or set to 0) gives the difference back to the disk."""
        allocated = self._allocated()
        if allocated > self.size_bytes:
            try:
                if self.size_bytes:
                    fd = self._open()
                    try:
                        os.ftruncate(fd, self.size_bytes)
                    finally:
                        os.close(fd)
                else:
                    self.path.unlink()
            except OSError as exc:
                log.warning("disk reserve %s not reduced: %s", self.path, exc.strerror)
            else:
                log.info("disk reserve reduced to %d MiB", self.size_bytes // MB)
                allocated = self.size_bytes
        if not self.size_bytes:
            return False
        if allocated >= self.size_bytes:
            self.released = False
            return True
        if free_bytes < floor_bytes + self.size_bytes - allocated:
            return False
        try:
            fd = self._open()
        except OSError as exc:
            log.warning("disk reserve %s not created: %s", self.path, exc.strerror)
            return False
        try:
            os.posix_fallocate(fd, 0, self.size_bytes)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            log.warning("disk reserve %s not allocated: %s", self.path, exc.strerror)
            return False
        os.close(fd)
        self.released = False
        log.info("disk reserve held: %d MiB in %s", self.size_bytes // MB, self.path)
        return True

    def release(self) -> bool:
        """Give the space back to the disk; True if there was any to give."""
        freed = self._allocated()
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("disk reserve %s could not be released: %s", self.path, exc.strerror)
            return False
        self.released = True
        log.error(
            "disk full: released the %.1f MiB reserve so alarms can still be written; telemetry "
            "is refused until there is room again; free space on the disk of %s",
            freed / MB,
            self.path.parent,
        )
        return True

    def with_room(self, fn: Callable[[], T]) -> T:
        """Run ``fn``; if it fails for want of space, give up the reserve and run it once
        more (there is no second reserve to give)."""
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not (disk_full(exc) and self.release()):
                raise
        return fn()
