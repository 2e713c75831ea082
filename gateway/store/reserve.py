"""Disk space kept back for the moment the disk is full.

The free-disk floor keeps the gateway itself from filling the disk, but another program (a
runaway log, a full audit folder) can take the last byte. SQLite then cannot write at all: not
an alarm, and not the checkpoint that would let its write-ahead log start over. So the store
holds a file of real, allocated blocks beside the database, gives it up when a write fails for
want of space, and takes it back once the disk has room again.

It is given up in two halves. Records (meals at the counter, restores) may spend the first:
on a long day with the disk full they would otherwise spend it all, and the next alarm would
find no room. The second half is given up only for alarms, and from then on only alarms are
written until the reserve is taken back; a start on a full disk also opens the database from
it (nothing can be written without that), while a checkpoint or a stop waits for room.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.logs import size_text
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
    # an error of Python's sqlite3 module itself (text that is not UTF-8) has no code
    code = getattr(exc, "sqlite_errorcode", None)
    return "full" in str(exc).lower() or code == SQLITE_IOERR_SHMSIZE


class Reserve:
    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        # given up and not yet taken back: the disk was full. A file of exactly the alarms'
        # share, or empty, is what giving it up leaves (the records' half, then all of it), so
        # that a restart carries on where the run before left off. (One cut short some other
        # way, by a power cut or from a smaller reserve_mb, is only completed.)
        left = self._left()
        self.released = bool(size_bytes) and left in (0, self.alarm_share)
        # the records' half is spent: the rest is for alarms
        self.alarms_only = self.released and left == 0
        # housekeeping takes it back while the writer (or the checkpointer) may give it up: a
        # take that found the file held must not then mark as held a file released meanwhile
        self._lock = threading.Lock()

    @property
    def alarm_share(self) -> int:
        """Bytes of the reserve that only alarms may use."""
        return self.size_bytes // 2

    @property
    def state(self) -> str:
        """off; held; released (the disk was full); waiting (never yet room enough to take)."""
        if not self.size_bytes:
            return "off"
        if self.released:
            return "released"
        return "held" if self._allocated() >= self.size_bytes else "waiting"

    @property
    def kept(self) -> bool:
        """Some of the reserve is there to be given up for alarms and records, or was given up
        for them: held, released, or a part left on the disk by the run before (records spent
        their half, then a restart) that there is no room yet to complete."""
        return self.released or self._allocated() > 0

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

    def _left(self) -> int | None:
        """What the file holds, if there is one and it is a regular file."""
        try:
            st = os.lstat(self.path)
        except OSError:  # none, or no directory to hold one (the start says why)
            return None
        return self._allocated() if stat.S_ISREG(st.st_mode) else None

    def _open(self) -> int:
        """The file, created 0600, never through a link: one planted in the data directory
        would have the gateway (perhaps run as root) extend or cut short any file it names."""
        return open_private(self.path, os.O_WRONLY)

    def take(self, free_bytes: int, floor_bytes: int) -> bool:
        """Allocate the file, or what it lacks, if the disk can spare that without going under
        the floor; True if it is held afterwards. A file larger than the reserve (``reserve_mb``
        lowered, or set to 0) gives the difference back to the disk."""
        with self._lock:
            return self._take(free_bytes, floor_bytes)

    def _take(self, free_bytes: int, floor_bytes: int) -> bool:
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
                log.info("disk reserve reduced to %s", size_text(self.size_bytes))
                allocated = self.size_bytes
        if not self.size_bytes:
            return False
        if allocated >= self.size_bytes:
            self.released = self.alarms_only = False
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
        self.released = self.alarms_only = False
        log.info("disk reserve held: %s in %s", size_text(self.size_bytes), self.path)
        return True

    def release(self, *, alarms: bool = True) -> bool:
        """Give space back to the disk; True if there was any to give. For ``alarms`` all that
        is left, otherwise only what is above the alarms' share: records that find that spent
        are refused from then on (``alarms_only``)."""
        with self._lock:
            return self._release(alarms)

    def _release(self, alarms: bool) -> bool:
        allocated = self._allocated()
        if not alarms:
            if allocated <= self.alarm_share:
                self.alarms_only = self.alarms_only or self.released
                return False
            try:
                fd = self._open()
                try:
                    os.ftruncate(fd, self.alarm_share)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.error("disk reserve %s could not be released: %s", self.path, exc.strerror)
                return False
            self._released(allocated - self.alarm_share, "alarms and records", "telemetry is")
            return True
        if allocated == 0:
            return False
        try:
            fd = self._open()
            try:
                os.ftruncate(fd, 0)  # kept, empty: a restart knows it was given up
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("disk reserve %s could not be released: %s", self.path, exc.strerror)
            return False
        self.alarms_only = True
        self._released(allocated, "alarms", "telemetry and records are")
        return True

    def _released(self, freed: int, written: str, refused: str) -> None:
        self.released = True
        log.error(
            "disk full: released %s of the reserve so %s can still be written; %s "
            "refused until there is room again; free space on the disk of %s",
            size_text(freed),
            written,
            refused,
            self.path.parent,
        )

    def with_room(self, fn: Callable[[], T], *, alarms: bool = True) -> T:
        """Run ``fn``; each time it fails for want of space, give up the next part of the
        reserve (the records' half, then the rest: only for ``alarms``) and run it again."""
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not (
                    disk_full(exc) and (self.release(alarms=False) or (alarms and self.release()))
                ):
                    raise
