"""The counter camera as a gateway service: a pipeline thread that records every decision.

Start fails loudly (model files altered or missing, no usable gallery key) instead of running
a face stage that cannot be trusted; the gateway then runs on without it (alarms, wristbands)
and says so in health. Once running, nothing a camera or a photo does stops it:
bad frames and lost cameras are counted and shown in health, and the thread goes on.
A lost camera does not make the gateway unhealthy: the watchdog would then restart the whole
process, alarms included, and a restart does not bring a camera back.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.lifecycle import StartupError
from gateway.logs import RateLimitedLog
from gateway.store import StorageFull, Store, StoreClosed
from gateway.vision.analyze import Analyzer, AnalyzerSettings
from gateway.vision.audit import AuditFrames
from gateway.vision.calibrate import beyond_calibration
from gateway.vision.camera import FrameFeed, open_feed
from gateway.vision.config import VisionSection
from gateway.vision.confirm import Confirmations
from gateway.vision.decide import Policy
from gateway.vision.errors import VisionError
from gateway.vision.gallery import Gallery
from gateway.vision.models import Models, load_manifest, resolve_models_dir
from gateway.vision.pipeline import CounterPipeline, DecisionEvent

log = logging.getLogger(__name__)

Listener = Callable[[DecisionEvent], None]
AUDIT_PURGE_S = 3600.0


class VisionService:
    name = "vision"
    essential = False  # a face stage that cannot start must not stop the alarms

    def __init__(
        self,
        cfg: VisionSection,
        data_dir: Path,
        store: Store | None,
        *,
        realtime: bool = True,
        listeners: list[Listener] | None = None,
        confirmations: Confirmations | None = None,
    ) -> None:
        self.cfg = cfg
        # none given (gateway identify): no platform could confirm, so nothing is held
        self.confirmations = Confirmations(0) if confirmations is None else confirmations
        self.data_dir = data_dir
        self.store = store
        self.realtime = realtime
        self.listeners = list(listeners or [])
        self.pipeline: CounterPipeline | None = None
        self.gallery: Gallery | None = None
        self.feed: FrameFeed | None = None
        self.audit: AuditFrames | None = None
        self.errors = 0
        self.unrecorded = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ratelimited = RateLimitedLog(log, 60.0)

    def start(self) -> None:
        try:
            self._start()
        except VisionError as exc:
            raise StartupError(f"face stage: {exc}") from exc

    def _start(self) -> None:
        cfg = self.cfg
        manifest = load_manifest(cfg.manifest)
        models = Models.open(resolve_models_dir(cfg.models_dir), manifest, cfg.threads)
        self.gallery = Gallery.configured(cfg, self.data_dir, create=True)
        if cfg.audit.enabled:
            self.audit = AuditFrames(
                cfg.audit.path(self.data_dir),
                cfg.gallery.key_path(self.data_dir),
                cfg.audit.retention_days,
                self.store.steady_ms if self.store is not None else None,
            )
        self.pipeline = CounterPipeline(
            Analyzer(models, AnalyzerSettings.from_config(cfg)),
            self.gallery,
            Policy.from_config(cfg.decision),
            cfg.camera.id,
            models.model_ids(),
            audit=self.audit,
            confirmations=self.confirmations,
        )
        self.feed = open_feed(cfg.camera, realtime=self.realtime)
        self.feed.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vision-pipeline")
        self._thread.start()
        log.info(
            "face stage running: camera %s, %d elders enrolled",
            cfg.camera.id,
            len(self.gallery.snapshot.elders),
        )
        self._check_calibration()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.feed is not None:
            self.feed.stop()
        if self.pipeline is not None:
            self.pipeline.analyzer.close()

    def wait(self, timeout: float | None = None) -> bool:
        """For replays: block until the source has ended and every decision is recorded."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def healthy(self) -> bool:
        """The pipeline thread runs, or a finite source (a replay) came to its end."""
        if self._thread is not None and self._thread.is_alive():
            return True
        return self.feed is not None and self.feed.ended and self._thread is not None

    def health(self) -> dict[str, Any]:
        gallery = self.gallery
        return {
            "camera": self.feed.health() if self.feed else None,
            "pipeline": dict(self.pipeline.counts) if self.pipeline else {},
            "frame_ms_median": (
                round(statistics.median(self.pipeline.recent_ms), 1)
                if self.pipeline and self.pipeline.recent_ms
                else None
            ),
            "decider": dict(self.pipeline.decider.counters) if self.pipeline else {},
            "gallery": self._gallery_health(gallery) if gallery else None,
            "frame_errors": self.errors,
            "unrecorded_decisions": self.unrecorded,
            "audit_frames_kept": self.audit.kept if self.audit else 0,
            "confirmable_decisions": len(self.confirmations),
        }

    def _gallery_health(self, gallery: Gallery) -> dict[str, Any]:
        calibrated = self.cfg.decision.calibrated_for_elders
        return {
            **vars(gallery.report),
            "calibrated_for_elders": calibrated,
            "beyond_calibration": gallery.report.elders > calibrated,
        }

    def _check_calibration(self) -> None:
        """Warn (at start and after each enrolment) while the gallery has outgrown the N the
        thresholds were calibrated for: strangers then match elders more often than configured."""
        assert self.gallery is not None
        problem = beyond_calibration(
            len(self.gallery.snapshot.elders), self.cfg.decision.calibrated_for_elders
        )
        if problem is not None:
            log.warning("face stage: %s", problem)

    # ---- the pipeline thread ----------------------------------------------------------------

    def _run(self) -> None:
        assert self.pipeline is not None and self.feed is not None and self.gallery is not None
        pipeline, feed = self.pipeline, self.feed
        next_refresh = time.monotonic() + self.cfg.gallery.refresh_s
        next_purge = time.monotonic()
        while not self._stop.is_set():
            frame = feed.next_frame(timeout=0.2)
            try:
                if frame is not None:
                    events = pipeline.process(frame)
                elif feed.ended:
                    break
                else:
                    events = pipeline.idle(feed.now())
            except Exception as exc:  # one bad frame must not end the counter
                self.errors += 1
                self._ratelimited.warning("frame", "frame could not be analysed: %s", exc)
                continue
            for event in events:
                self._emit(event)
            now = time.monotonic()
            if now >= next_refresh:
                next_refresh = now + self.cfg.gallery.refresh_s
                if self.gallery.refresh_if_changed():
                    self._check_calibration()
            if self.audit is not None and now >= next_purge:
                next_purge = now + AUDIT_PURGE_S
                self.audit.purge()
        for event in pipeline.flush():
            self._emit(event)

    def _emit(self, decision: DecisionEvent) -> None:
        if self.store is not None:
            try:
                self.store.record(decision.event)
            except (StoreClosed, StorageFull, TimeoutError) as exc:
                self.unrecorded += 1
                self._ratelimited.warning("record", "decision not recorded: %s", exc)
        for listener in self.listeners:
            listener(decision)
