"""Audit frames: off by default. When a site turns the option on, the frame each decision was
made on is kept, encrypted with a key derived from the face data key, for a limited time.

Nothing else of the camera stream is ever written. Frames are named by the decision's event id
so staff reviewing a disputed meal can find exactly one picture, and nothing more.

A frame is deleted once it is older than the retention period by either clock: the wall clock
(file time), which also counts time switched off, or the gateway's running time (the store's
steady clock, stamped into the file), which a wall clock set back cannot stretch. A Pi without
RTC boots with the time it was switched off at: frames this run keeps before NTP sets the clock
are filed that much early, and are dated again once it is set (``redate``), as the events are.
Deleting needs no key, so frames already kept still go when a site turns the option off or the
face stage cannot start.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.keys import KeyFileError, derive, read_key
from gateway.private import private_dir, replace_private
from gateway.store.writer import disk_free_bytes
from gateway.vision.errors import GalleryError
from gateway.vision.retention import PARTIAL, SUFFIX, ExpiredFrames, header_for, split_header

log = logging.getLogger(__name__)

PURPOSE = "audit-frames-v1"
NONCE = 12


class AuditFrames(ExpiredFrames):
    def __init__(
        self,
        folder: Path,
        key_path: Path,
        retention_days: float,
        running_ms: Callable[[], int] | None = None,
        *,
        min_free_bytes: int = 0,
        clock_synced: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(folder, retention_days, running_ms)
        self.min_free_bytes = min_free_bytes
        self._clock_synced = clock_synced
        self._undated: list[tuple[Path, int]] = []  # kept while the clock was not set
        self._undated_lock = threading.Lock()
        try:
            self._aead = AESGCM(derive(read_key(key_path), PURPOSE))
        except KeyFileError as exc:
            raise GalleryError(str(exc)) from None
        private_dir(folder)
        self.kept = 0

    def _path(self, event_id: str) -> Path:
        if not event_id.replace("-", "").isalnum():
            raise ValueError(f"not an event id: {event_id!r}")
        return self.folder / f"{event_id}{SUFFIX}"

    def keep(self, event_id: str, image: np.ndarray, elders: Sequence[str] = ()) -> None:
        """Not below the store's free-disk floor: a month of pictures must not take the room
        the alarms need. ``elders``: those the decision named, whose erasure takes the frame."""
        if self.min_free_bytes and disk_free_bytes(self.folder) < self.min_free_bytes:
            raise OSError(
                errno.ENOSPC,
                f"free disk below the store's floor ({self.min_free_bytes // 2**20} MiB), "
                "kept for alarms",
            )
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ValueError("frame could not be encoded")
        stamp = self._running_ms() if self._running_ms else -1
        header = header_for(stamp, elders)
        nonce = os.urandom(NONCE)
        blob = (
            header + nonce + self._aead.encrypt(nonce, jpeg.tobytes(), self._aad(event_id, header))
        )
        target = self._path(event_id)
        # a full disk leaves no piece of her face behind to wait for retention
        replace_private(target, blob, aside=target.with_suffix(PARTIAL))
        self.kept += 1
        if self._clock_synced is not None and stamp >= 0 and not self._clock_synced():
            with self._undated_lock:
                self._undated.append((target, stamp))

    def redate(self, offset_ms: int) -> int:
        """The wall clock was just set (``Store.when_clock_set``): the frames this object kept
        before are dated from their running-time stamps (never later than now); only those,
        since a frame of an earlier run, or of a store begun anew, has a stamp of another
        running time. Returns how many were dated again."""
        with self._undated_lock:
            undated, self._undated = self._undated, []
        dated = 0
        for path, stamp in undated:
            kept_at = min((stamp + offset_ms) / 1000, time.time())
            try:
                os.utime(path, (kept_at, kept_at))
                dated += 1
            except OSError:  # gone meanwhile (past retention, an erasure): nothing to date
                continue
        if dated:
            log.info("audit: %d frames kept before the clock was set dated again", dated)
        return dated

    def export(self, event_id: str) -> bytes:
        """The JPEG of one decision, for a person entitled to review it; never one past its
        retention (deleted then: the gateway purges only hourly, and only while it runs)."""
        path = self._path(event_id)
        try:
            if self.expired(path):
                path.unlink()
                raise FileNotFoundError(path)
            parts = split_header(path.read_bytes())
        except FileNotFoundError:
            days = self.retention_s / 86_400
            raise GalleryError(
                f"audit frame {event_id}: none kept (the audit option was off for that "
                f"decision, its {days:g} days of retention are over, or an elder it named was "
                "erased)"
            ) from None
        if parts is None:
            raise GalleryError(f"audit frame {event_id}: not a frame this gateway kept")
        header, body = parts
        try:
            return self._aead.decrypt(body[:NONCE], body[NONCE:], self._aad(event_id, header))
        except InvalidTag:
            raise GalleryError(f"audit frame {event_id}: wrong key or damaged file") from None

    @staticmethod
    def _aad(event_id: str, header: bytes) -> bytes:
        """Binds the frame to its decision and its stamp: neither can be swapped unnoticed."""
        return event_id.encode() + header
