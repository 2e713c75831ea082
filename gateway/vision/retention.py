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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.vision.config import AuditSection

log = logging.getLogger(__name__)

SUFFIX = ".frame"
PARTIAL = ".partial"
MAGIC = b"GAF2"
STAMP = struct.Struct(">q")  # running time in ms when kept; -1 without a running clock
HEADER = len(MAGIC) + STAMP.size
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

    def purge(self, now: float | None = None) -> int:
        """Delete frames older than the retention period by either clock; returns how many.
        A frame that cannot be deleted is counted and logged, and the others still go."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        running_cutoff = self._running_ms() - self.retention_s * 1000 if self._running_ms else None
        removed = 0
        failed: list[OSError] = []
        try:
            # a .partial is a frame whose writing was cut short (power loss): it ages the same
            for path in [*self.folder.glob(f"*{SUFFIX}"), *self.folder.glob(f"*{PARTIAL}")]:
                try:
                    if path.stat().st_mtime < cutoff or self._kept_before(path, running_cutoff):
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

    @staticmethod
    def _kept_before(path: Path, running_cutoff: float | None) -> bool:
        if running_cutoff is None:
            return False
        with path.open("rb") as fh:
            header = fh.read(HEADER)
        if len(header) < HEADER or not header.startswith(MAGIC):
            return False
        stamp = int(STAMP.unpack(header[len(MAGIC) :])[0])
        return 0 <= stamp < running_cutoff


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
