"""How long a kept decision frame may stay, and the service that deletes it after that.

Kept apart from audit.py (which encrypts frames and needs OpenCV) and from the counter
service: frames already kept must still go when a site turns the audit option off, removes its
camera, or the face stage cannot start (a model missing), and deleting needs no key.

A frame is deleted once it is older than the retention period by either clock: the wall clock
(file time), which also counts time switched off, or the gateway's running time (the store's
steady clock, stamped into the file), which a wall clock set back cannot stretch.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from gateway.vision.config import AuditSection

log = logging.getLogger(__name__)

SUFFIX = ".frame"
PARTIAL = ".partial"
MAGIC = b"GAF2"  # frames kept before they named their elders
MAGIC_NAMED = b"GAF3"
STAMP = struct.Struct(">q")  # running time in ms when kept; -1 without a running clock
HEADER = len(MAGIC) + STAMP.size
NAMES = struct.Struct(">H")  # GAF3: then the byte length of the elder ids, NUL-separated
PURGE_EVERY_S = 3600.0


class ExpiredFrames:
    """Deletes kept frames past their retention period; needs neither the key nor the option."""

    def __init__(
        self,
        folder: Path,
        retention_days: float,
        running_ms: Callable[[], int] | None = None,
    ) -> None:
        self.folder = folder
        self.retention_s = retention_days * 86_400
        self._running_ms = running_ms
        self.purged = 0
        self.purge_failures = 0

    def expired(self, path: Path, now: float | None = None) -> bool:
        """Older than the retention period by either clock."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        running_cutoff = self._running_ms() - self.retention_s * 1000 if self._running_ms else None
        return path.stat().st_mtime < cutoff or self._kept_before(path, running_cutoff)

    def purge(self, now: float | None = None) -> int:
        """Delete frames older than the retention period by either clock; returns how many.
        A frame that cannot be deleted is counted and logged, and the others still go."""
        removed = 0
        failed: list[OSError] = []
        try:
            # a .partial is a frame whose writing was cut short (power loss): it ages the same
            for path in [*self.folder.glob(f"*{SUFFIX}"), *self.folder.glob(f"*{PARTIAL}")]:
                try:
                    if self.expired(path, now):
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    failed.append(exc)
        except OSError as exc:  # the folder itself cannot be listed
            failed.append(exc)
        if removed:
            log.info("audit: %d frames past retention deleted", removed)
        if failed:
            log.warning("audit: %d frames past retention not deleted: %s", len(failed), failed[0])
        self.purged += removed
        self.purge_failures += len(failed)
        return removed

    def erase_elder(self, elder: str, until_ms: int | None = None) -> int:
        """Consent withdrawn: the frames of decisions that named the elder (accepted, or a
        candidate) go now, not after their retention. Needs no key: the ids are in the header.
        ``until_ms``: only frames kept by then (store running time), so none of hers enrolled
        again since. A frame that cannot be read or deleted (a failing card) does not keep the
        others: they all go, then the first such error is raised, so the erasure says it is
        not complete."""
        removed = 0
        failed: list[OSError] = []
        try:  # a frame cut short by a power cut names her too
            frames = [*self.folder.glob(f"*{SUFFIX}"), *self.folder.glob(f"*{PARTIAL}")]
        except FileNotFoundError:
            frames = []
        except OSError as exc:
            failed.append(exc)
            frames = []
        for path in frames:
            try:
                with path.open("rb") as fh:
                    head = _read_header(fh)
                if elder in read_names(head) and (until_ms is None or _stamp(head) <= until_ms):
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                failed.append(exc)
        if removed:
            log.info("audit: %d frames of an erased elder deleted", removed)
        if failed:
            raise failed[0]
        return removed

    @staticmethod
    def _kept_before(path: Path, running_cutoff: float | None) -> bool:
        if running_cutoff is None:
            return False
        with path.open("rb") as fh:
            header = fh.read(HEADER)
        if len(header) < HEADER or not header.startswith((MAGIC, MAGIC_NAMED)):
            return False
        return 0 <= _stamp(header) < running_cutoff


# a decision names its elder or candidates, and the closest matches of its track's frames
# (three each): some 900 ids of the longest kind, far more than a track sees
MAX_NAMES = 60_000


def _read_header(fh: BinaryIO) -> bytes:
    """A frame's header and no more (the names' length says where it ends)."""
    head = fh.read(HEADER + NAMES.size)
    if head.startswith(MAGIC_NAMED) and len(head) == HEADER + NAMES.size:
        (size,) = NAMES.unpack_from(head, HEADER)
        head += fh.read(size)
    return head


def _stamp(header: bytes) -> int:
    """The running time (ms) a frame was kept at, from its header; -1 if kept without one."""
    return int(STAMP.unpack(header[len(MAGIC) : HEADER])[0])


def header_for(running_ms: int, elders: Iterable[str]) -> bytes:
    """Every elder named, or no header at all: a name cut off would leave the frame to her
    erasure's miss."""
    names = "\0".join(elders).encode()
    if len(names) > MAX_NAMES:
        raise ValueError(f"a frame can name elders in {MAX_NAMES} bytes, not {len(names)}")
    return MAGIC_NAMED + STAMP.pack(running_ms) + NAMES.pack(len(names)) + names


def split_header(blob: bytes) -> tuple[bytes, bytes] | None:
    """(header, rest) of a kept frame; None if it is not one."""
    if blob.startswith(MAGIC):
        return blob[:HEADER], blob[HEADER:]
    if blob.startswith(MAGIC_NAMED) and len(blob) >= HEADER + NAMES.size:
        (size,) = NAMES.unpack_from(blob, HEADER)
        end = HEADER + NAMES.size + size
        return blob[:end], blob[end:]
    return None


def read_names(head: bytes) -> set[str]:
    """The elder ids a frame's header names (none in frames kept before they did)."""
    parts = split_header(head)
    if parts is None or not parts[0].startswith(MAGIC_NAMED):
        return set()
    names = parts[0][HEADER + NAMES.size :]
    return set(names.decode(errors="replace").split("\0")) - {""}


class AuditRetention:
    """Deletes decision frames past their retention at start and then hourly. A service of its
    own, so it runs with or without a camera and whether or not the face stage starts."""

    name = "audit-retention"
    essential = False

    def __init__(self, frames: ExpiredFrames, every_s: float = PURGE_EVERY_S) -> None:
        self.frames = frames
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def configured(
        cls, cfg: AuditSection, data_dir: Path, running_ms: Callable[[], int] | None
    ) -> AuditRetention:
        return cls(ExpiredFrames(cfg.path(data_dir), cfg.retention_days, running_ms))

    def start(self) -> None:
        self._purge()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="audit-retention")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._purge()

    def _purge(self) -> None:
        """Never fatal: a frame that stays is counted and tried again within the hour."""
        try:
            self.frames.purge()
        except Exception as exc:
            self.frames.purge_failures += 1
            log.warning("audit: frames past retention not purged: %s", exc)

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> dict[str, Any]:
        return {"purged": self.frames.purged, "failures": self.frames.purge_failures}
