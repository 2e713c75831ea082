"""Frame sources and the reader that keeps only the newest frame.

Sources: a V4L2 device (USB camera), an RTSP URL, a video file, or a folder of photos replayed
as frames (each photo held in view for a while, then an empty scene, as if people stepped up
to the counter one after another). The reader thread drains the source continuously and keeps
only the latest frame: when analysis is slower than the camera, old frames are dropped rather
than queued, so a decision is never made on what happened seconds ago. A lost camera (unplugged,
network down, driver hang) is reopened with exponential backoff; the state goes to health.

``Lockstep`` is the deterministic alternative for replays: every frame is analysed and frame
times are synthetic (frame number / fps), so the same photos give the same decisions.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np

from gateway.vision.config import CameraSection, shown_source
from gateway.vision.errors import BadImage, VisionError
from gateway.vision.images import IMAGE_SUFFIXES, as_bgr8, fit_within, read_image

log = logging.getLogger(__name__)

EMPTY_GREY = 96
# failed reads in a row inside a video file before it is taken to have ended: a container
# that claims more frames than it holds must not keep the reader trying them for hours
MOST_DAMAGED_IN_A_ROW = 100
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https"})


class CameraError(VisionError):
    """The source cannot be opened (now); the reader will try again."""


class EndOfStream(Exception):
    """A finite source (video file, photo folder without loop) has no more frames."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    t: float
    seq: int
    decode_s: float = 0.0


class FrameSource(Protocol):
    name: str
    paced: bool  # the reader must wait 1/fps between reads (files); live cameras block instead

    def open(self) -> None: ...

    def read(self) -> tuple[np.ndarray | None, float]:
        """(frame or None on a failed read, seconds spent decoding)."""
        ...

    def close(self) -> None: ...


class OpenCVCapture:
    """V4L2 device, RTSP/HTTP stream or video file through ``cv2.VideoCapture``."""

    def __init__(self, target: str | int, backend: int, cfg: CameraSection, paced: bool) -> None:
        self.target = target
        self.backend = backend
        self.cfg = cfg
        self.paced = paced
        self.name = shown_source(target)
        self._cap: cv2.VideoCapture | None = None
        self.skipped = 0  # damaged frames of a video file, passed over

    def open(self) -> None:
        # OpenCV's and FFmpeg's own warnings repeat at every reopen of a camera that is
        # unplugged or not there yet (twice a minute, for days); our log says why, once.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read as the capture opens
        if self.backend == cv2.CAP_V4L2:
            # A USB camera that hangs keeps each read waiting this long, 10 s unless set (V4L2
            # has no read timeout property): bounded by stall_s, the loss is seen in time.
            # OpenCV reads it once per process, at the first read that has to wait.
            stall = str(math.ceil(self.cfg.stall_s))
            os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", stall)
        self.skipped = 0
        cap = cv2.VideoCapture(self.target, self.backend, self._params())
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"cannot open camera {self.name}")
        if isinstance(self.target, int) or str(self.target).startswith("/dev/"):
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
            cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap

    def _params(self) -> list[int]:
        """Bounded waits for network streams: without them FFmpeg blocks for 30 s on a camera
        that stopped sending, and the reader could not report it lost or reopen it."""
        if not is_stream(self.target):
            return []
        return [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            round(self.cfg.connect_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            round(self.cfg.stall_s * 1000),
        ]

    def read(self) -> tuple[np.ndarray | None, float]:
        cap = self._cap
        if cap is None:
            return None, 0.0
        asked = time.perf_counter()
        in_a_row = 0
        while not cap.grab():
            if not self.paced:
                return None, 0.0
            in_a_row += 1
            if in_a_row > MOST_DAMAGED_IN_A_ROW or not self._more_frames(cap, in_a_row):
                raise EndOfStream(self.name)
        if in_a_row:  # damaged frames inside the file, a good one after them
            if not self.skipped:
                log.warning("video %s: damaged frames in it are skipped", self.name)
            self.skipped += in_a_row
        if is_stream(self.target) and time.perf_counter() - asked >= self.cfg.stall_s:
            # FFmpeg's read timeout (stall_s) ended it mid-picture: what it hands over is the
            # part that came, decoded over the picture before (one person's face on another's
            # body). A frame that came sooner, however slow the camera, is a frame
            return None, 0.0
        start = time.perf_counter()
        ok, frame = cap.retrieve()
        return (frame if ok else None), time.perf_counter() - start

    def _more_frames(self, cap: cv2.VideoCapture, failed: int) -> bool:
        """Whether a video file holds more frames than were read, skipped before and failed
        just now: its position counts only the frames read. A file that does not say how many
        frames it holds ends at its first failed read."""
        read = cap.get(cv2.CAP_PROP_POS_FRAMES)
        return self.skipped + failed + read <= cap.get(cv2.CAP_PROP_FRAME_COUNT) - 1

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolder:
    """Photos replayed as frames: each held for ``hold_s``, then ``gap_s`` of empty scene.
    Photos larger than the camera's frame are shrunk to fit it, as a camera would show them."""

    paced = True

    def __init__(self, folder: Path, cfg: CameraSection) -> None:
        fps, hold_s, gap_s = cfg.fps, cfg.replay_hold_s, cfg.replay_gap_s
        self.max_side = max(cfg.width, cfg.height)
        self.folder = folder
        self.name = f"folder:{folder.name}"
        self.hold = max(1, round(hold_s * fps))
        self.gap = round(gap_s * fps)
        self.loop = cfg.replay_loop
        self.files: list[Path] = []
        self._plan: list[Path | None] = []
        self._pos = 0
        self._cache: tuple[Path, np.ndarray | None] | None = None
        self._shape: tuple[int, ...] = (480, 640, 3)
        self.bad_files = 0
        self._reported: set[Path] = set()  # unusable photos said once, not at every loop

    def open(self) -> None:
        self._list()

    def _list(self) -> None:
        """The folder's photos as they are now: also at each loop start, so photos added
        while a replay loops are shown and photos taken away are no longer asked for."""
        try:
            listed = list(self.folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            raise CameraError(f"{self.folder}: not a folder") from None
        except OSError as exc:
            raise CameraError(f"{self.folder}: cannot be listed: {exc.strerror}") from None
        self.files = sorted(p for p in listed if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise CameraError(f"{self.folder}: no photos")
        self._plan = []
        for f in self.files:
            self._plan += [f] * self.hold + [None] * self.gap
        self._pos = 0

    def read(self) -> tuple[np.ndarray | None, float]:
        if self._pos >= len(self._plan):
            if not self.loop:
                raise EndOfStream(self.name)
            self._list()
        item = self._plan[self._pos]
        self._pos += 1
        if item is None:
            return np.full(self._shape, EMPTY_GREY, dtype=np.uint8), 0.0
        if self._cache is not None and self._cache[0] == item:
            return self._cache[1], 0.0
        start = time.perf_counter()
        image: np.ndarray | None = None
        try:
            image = fit_within(read_image(item), self.max_side)
            self._shape = image.shape
        except BadImage as exc:
            # the folder was changed: lost, and listed again on reopening. A link whose photo
            # is gone is still there: an unusable photo like any other, or the replay would
            # start over at every pass and never show the photos after it
            if not os.path.lexists(item):
                gone = self.files.index(item) + 1
                raise CameraError(f"{self.folder}: photo {gone} is gone") from None
            self.bad_files += 1
            # one unusable read, not one per frame it would have been held for: a run of
            # them would otherwise last past stall_s, and the camera, lost and reopened,
            # would start the folder over before ever showing the photos after them
            while self._pos < len(self._plan) and self._plan[self._pos] == item:
                self._pos += 1
            if item not in self._reported:
                self._reported.add(item)
                # The position, not the file name: photo files are often named after the person.
                log.warning(
                    "replay: photo %d is not usable: %s", self.files.index(item) + 1, exc.reason
                )
        self._cache = (item, image)
        return image, time.perf_counter() - start

    def close(self) -> None:
        self._cache = None


def _reason(exc: Exception) -> str:
    """For health and the log: a CameraError says it all; anything else is named by type, and
    a URL in its text loses its credentials."""
    if isinstance(exc, CameraError):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}"
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda m: shown_source(m.group()), text)


def is_stream(target: str | int) -> bool:
    return isinstance(target, str) and urlsplit(target).scheme in STREAM_SCHEMES


def open_source(spec: str, cfg: CameraSection) -> FrameSource:
    """Pick the source kind from the spec: device, stream URL, folder, or video file.

    Any path under /dev/ is a V4L2 device, so the stable /dev/v4l/by-id/... links work, and a
    device not there yet is no error here: a USB camera enumerates late at boot, and the reader
    reports it lost and retries until it appears. A folder or file that does not exist is a
    typo, not something that comes later: said at once."""
    if not spec:
        raise CameraError("no camera source given")
    if spec.isdigit():
        return OpenCVCapture(int(spec), cv2.CAP_V4L2, cfg, paced=False)
    if spec.startswith("/dev/"):
        return OpenCVCapture(spec, cv2.CAP_V4L2, cfg, paced=False)
    if is_stream(spec):
        return OpenCVCapture(spec, cv2.CAP_FFMPEG, cfg, paced=False)
    path = Path(spec)
    if path.is_dir():
        return ImageFolder(path, cfg)
    if path.is_file():
        return OpenCVCapture(spec, cv2.CAP_FFMPEG, cfg, paced=True)
    # shown without what an address with an unknown scheme (a typo) may carry: a password
    raise CameraError(
        f"camera source {shown_source(spec)!r}: no such device, folder, file or stream URL"
    )


def open_feed(cfg: CameraSection, spec: str | None = None, realtime: bool = True) -> FrameFeed:
    """Live cameras always get a reader thread; files and folders may replay in lockstep."""
    source = open_source(spec or cfg.source or "", cfg)
    if not realtime and source.paced:
        return Lockstep(source, cfg.fps, cfg.stall_s)
    return CameraReader(source, cfg)


class FrameFeed(Protocol):
    ended: bool

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def next_frame(self, timeout: float) -> Frame | None: ...

    def now(self) -> float: ...

    def health(self) -> dict[str, Any]: ...


@dataclass
class CameraStats:
    frames: int = 0
    failed_reads: int = 0
    bad_frames: int = 0
    dropped: int = 0
    reopens: int = 0
    source_errors: int = 0  # unexpected exceptions from the source (driver, folder): reopened
    freezes: int = 0  # a live camera found sending one picture over and over: reopened

    def usable(self, raw: np.ndarray | None) -> np.ndarray | None:
        """The frame as 8-bit BGR, or None after counting why it is not usable."""
        if raw is None:
            self.failed_reads += 1
            return None
        try:
            image = as_bgr8(raw)
        except BadImage:
            self.bad_frames += 1
            return None
        self.frames += 1
        return image


class FreezeWatch:
    """Whether a live camera keeps sending one picture. A sensor's noise makes every real frame
    differ from the one before, so the same bytes for ``frozen_s`` are a stream stuck on its
    last picture (an RTSP encoder or a USB driver that hung), not a still scene. What it has
    seen is kept across reopens: a stuck camera whose stream also drops now and then is still
    found frozen, and one that comes back with the frozen picture is still frozen."""

    def __init__(self, frozen_s: float) -> None:
        self.frozen_s = frozen_s
        self.frozen: np.ndarray | None = None
        self._last: np.ndarray | None = None
        self._since = 0.0

    def still_frozen(self, image: np.ndarray) -> bool:
        """The frozen picture again (not a new frame); a different one ends the freeze."""
        if self.frozen is None:
            return False
        if np.array_equal(image, self.frozen):
            return True
        self.frozen = None
        return False

    def froze(self, image: np.ndarray, now: float) -> bool:
        """This frame makes ``frozen_s`` of one picture."""
        if self._last is None or not np.array_equal(image, self._last):
            self._last, self._since = image, now
            return False
        if now - self._since < self.frozen_s:
            return False
        self.frozen, self._last = image, None
        return True


class Lockstep:
    """Every frame of a (finite) source, in order, stamped at ``seq / fps``: for replays."""

    def __init__(self, source: FrameSource, fps: float, stall_s: float) -> None:
        self.source = source
        self.fps = fps
        self.stall_s = stall_s
        self.ended = False
        self.stats = CameraStats()
        self._seq = 0
        self.state = "stopped"

    def start(self) -> None:
        self.source.open()
        self.state = "streaming"

    def stop(self) -> None:
        self.source.close()
        if not self.ended:
            self.state = "stopped"

    def now(self) -> float:
        return self._seq / self.fps

    def next_frame(self, timeout: float) -> Frame | None:
        """The next usable frame; None at the end, or after ``stall_s`` of frame time without
        one (``lost``): a looping folder whose photos all went bad would otherwise be read
        round and round inside this call, and nothing could stop the replay."""
        unusable = 0
        while not self.ended:
            try:
                raw, decode_s = self.source.read()
            except EndOfStream:
                self.ended = True
                self.state = "ended"
                return None
            except CameraError:  # a photo gone from the folder: nothing to reopen, skipped
                raw, decode_s = None, 0.0
            self._seq += 1
            image = self.stats.usable(raw)
            if image is not None:
                self.state = "streaming"
                return Frame(image, self._seq / self.fps, self._seq, decode_s)
            unusable += 1
            if unusable >= self.stall_s * self.fps:
                self.state = "lost"
                return None
        return None

    def health(self) -> dict[str, Any]:
        return {"source": self.source.name, "state": self.state, **vars(self.stats)}


class CameraReader:
    """Reads on its own thread, keeps only the newest frame, reopens a lost camera."""

    # A working camera's read returns within a frame interval. One that does not answer (an
    # RTSP open waits connect_timeout_s, a read stall_s) is left to its daemon thread: waited
    # for longer, it would keep the whole stop past the service manager's timeout.
    stop_wait_s = 2.0

    def __init__(
        self,
        source: FrameSource,
        cfg: CameraSection,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.cfg = cfg
        self.clock = clock
        self.state = "stopped"
        self.ended = False
        self.stats = CameraStats()
        self.last_error: str | None = None
        self._latest: Frame | None = None
        self._taken = 0
        self._seq = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_frame_at = 0.0
        # a file or folder may hold one picture for long on purpose; only live cameras freeze
        live = cfg.frozen_s > 0 and not source.paced
        self._freeze = FreezeWatch(cfg.frozen_s) if live else None

    def start(self) -> None:
        self._stop.clear()
        # A daemon on purpose: it only reads frames (never SQLite), and a V4L2 or RTSP read
        # can block for good when a camera hangs; it must not hold the gateway's exit hostage.
        self._thread = threading.Thread(target=self._run, name="camera-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Releasing a capture while a read is inside it frees memory the driver still uses;
        a read stuck past ``stop_wait_s`` therefore keeps the source, and the reader closes
        it when the read returns."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.stop_wait_s)
            if thread.is_alive():
                log.warning(
                    "camera %s: an open or a read is still blocked after %g s; the camera is "
                    "closed when it returns",
                    self.source.name,
                    self.stop_wait_s,
                )
                self.state = "stopped"
                return
        self._close()
        if not self.ended:
            self.state = "stopped"

    def now(self) -> float:
        return self.clock()

    def next_frame(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken, waiting up to ``timeout``; older ones are dropped."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: (self._latest is not None and self._latest.seq > self._taken) or self.ended,
                timeout,
            ):
                return None
            frame = self._latest
            if frame is None or frame.seq <= self._taken:
                return None
            self.stats.dropped += frame.seq - self._taken - 1
            self._taken = frame.seq
            return frame

    def health(self) -> dict[str, Any]:
        age = self.clock() - self._last_frame_at if self._last_frame_at else None
        return {
            "source": self.source.name,
            "state": self.state,
            "last_frame_age_s": None if age is None else round(age, 2),
            "last_error": self.last_error,
            **vars(self.stats),
        }

    # ---- the reader thread ------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.cfg.reopen_min_s
        while not self._stop.is_set():
            if self.state != "lost":  # a lost camera stays lost until it streams again
                self.state = "opening"
            try:
                self.source.open()
            except Exception as exc:  # CameraError, or whatever a driver or a folder raises
                if not isinstance(exc, CameraError):
                    self.stats.source_errors += 1
                self._lost(_reason(exc))
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.cfg.reopen_max_s)
                self.stats.reopens += 1
                continue
            published = self._seq
            try:
                ended = self._stream()
            except Exception as exc:  # the thread must outlive any source: reopen it
                if not isinstance(exc, CameraError):
                    self.stats.source_errors += 1
                self._lost(_reason(exc))
                ended = False
            self._close()
            if ended:
                self.state = "ended"
                with self._cond:
                    self.ended = True
                    self._cond.notify_all()
                return
            if self._seq > published:  # it streamed: a new loss starts the backoff anew
                delay = self.cfg.reopen_min_s
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.cfg.reopen_max_s)
            self.stats.reopens += 1

    def _close(self) -> None:
        try:
            self.source.close()
        except Exception as exc:
            log.warning("camera %s: close failed: %s", self.source.name, _reason(exc))

    def _lost(self, why: str) -> None:
        if self._stop.is_set():  # an open or read that gave up after the stop: no camera lost
            return
        if self.state != "lost" or why != self.last_error:
            log.warning("camera %s lost: %s", self.source.name, why)
        self.state = "lost"
        self.last_error = why

    def _stream(self) -> bool:
        """Read until stopped, ended (True) or stalled. A frame that is unusable (zero-size,
        odd pixel type) counts as no frame: a driver sending only those is a stalled camera.
        An opened camera is ``streaming`` only once a frame arrives: one that connects and
        then sends nothing stays ``opening`` or ``lost`` in health. A frozen picture is no new
        frame either: it is not analysed, and a camera that keeps sending it stays ``lost``."""
        interval = 1.0 / self.cfg.fps
        waiting_since = self.clock()
        freeze = self._freeze
        while not self._stop.is_set():
            started = self.clock()
            try:
                raw, decode_s = self.source.read()
            except EndOfStream:
                return True
            if self._stop.is_set():  # a read that returned after the stop gave up on it
                break
            image = self.stats.usable(raw)
            if image is None or (freeze is not None and freeze.still_frozen(image)):
                if self.clock() - waiting_since > self.cfg.stall_s:
                    if image is None:
                        what = "frame" if raw is None else "usable frame"
                        self._lost(f"no {what} for {self.cfg.stall_s:g} s")
                    else:  # back from a reopen, or a failed one, with the frozen picture
                        self._lost(self._frozen_reason)
                    return False
                self._stop.wait(min(interval, 0.05))
                continue
            if freeze is not None and freeze.froze(image, self.clock()):
                self.stats.freezes += 1
                self._lost(self._frozen_reason)
                return False
            self._publish(image, decode_s)
            waiting_since = self._last_frame_at
            self.state = "streaming"
            if self.source.paced:
                self._stop.wait(max(0.0, interval - (self.clock() - started)))
        return False

    @property
    def _frozen_reason(self) -> str:
        return f"the picture has not changed for {self.cfg.frozen_s:g} s"

    def _publish(self, image: np.ndarray, decode_s: float) -> None:
        now = self.clock()
        with self._cond:
            self._seq += 1
            self._latest = Frame(image, now, self._seq, decode_s)
            self._last_frame_at = now
            self._cond.notify_all()
