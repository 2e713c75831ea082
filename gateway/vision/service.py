"""The counter camera as a gateway service: a pipeline thread that records every decision.

Start fails loudly (model files altered or missing, no usable gallery key, a damaged gallery
file) instead of running a face stage that cannot be trusted; the gateway then runs on without
it (alarms, wristbands) and says so in health. Whatever goes wrong while starting, even an
error nobody foresaw, is this stage's start failure and never the gateway's. Once running,
nothing a camera, a photo, the store or the gallery file does stops it: bad frames, lost
cameras, unrecorded decisions and failed gallery refreshes are counted and shown in health,
and the thread goes on. A lost camera does not make the gateway unhealthy: the watchdog would
then restart the whole process, alarms included, and a restart does not bring a camera back.

Audit frames past their retention are deleted by a service of their own (retention.py).
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
from gateway.store import Store
from gateway.store.erasure import Journal
from gateway.vision import cooldown, late_erasure
from gateway.vision.analyze import Analyzer, AnalyzerSettings
from gateway.vision.audit import AuditFrames
from gateway.vision.calibrate import beyond_calibration
from gateway.vision.camera import FrameFeed, open_feed
from gateway.vision.config import VisionSection, unreachable
from gateway.vision.confirm import Confirmations
from gateway.vision.decide import Policy
from gateway.vision.errors import VisionError
from gateway.vision.events import FACE_DECISION
from gateway.vision.gallery import Gallery
from gateway.vision.late_erasure import LateErasures
from gateway.vision.models import Models, load_manifest, resolve_models_dir
from gateway.vision.pipeline import CounterPipeline, DecisionEvent
from gateway.vision.retention import ExpiredFrames
from gateway.vision.still import StillGate

log = logging.getLogger(__name__)
COOLDOWN_SAVE_S = 5.0  # how often a changed cooldown is written (for a restart)
# How long the counter waits for a decision to be recorded (another program holding the
# journal's lock): an elder is waiting. Not recorded by then, it is taken back, never recorded
# later behind the back of staff who settled the meal by hand.
RECORD_TIMEOUT_S = 5.0

Listener = Callable[[DecisionEvent], None]


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
        self._running_ms = None if store is None else store.steady_ms
        if store is not None:  # once, however often the stage is started again
            store.when_clock_set(self._clock_set)
        self.errors = 0
        self.unrecorded = 0
        self.refresh_errors = 0
        self.cooldown_save_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._late: LateErasures | None = None
        self._erasures_due = True  # the gallery's list of erasures, read at the first turn
        self._ratelimited = RateLimitedLog(log, 60.0)
        self._cooldown_path = data_dir / cooldown.FILE
        self._cooldown_saved: dict[str, int] | None = None  # None: write at the first save
        self._cooldown_stamp: cooldown.Stamp | None = None  # the file as this counter wrote it
        # one moment on two clocks, the frames' and the store's running time (ms): the last
        # frame, or the last look for one; what the cooldown file is written against
        self._anchor: tuple[float, int] | None = None
        self.too_slow: str | None = None  # why nobody can be accepted at the counter's pace
        # the time switched off before this session, added at the start to the ages of those
        # seen before it (taken off again when they are saved: the file keeps running times)
        self._time_off_ms = 0

    def _store_clock_synced(self) -> bool:
        return self.store is not None and self.store.clock_synced

    def _clock_set(self, offset_ms: int) -> None:
        audit = self.audit
        if audit is not None:
            audit.redate(offset_ms)

    def start(self) -> None:
        try:
            self._start()
        except VisionError as exc:
            self._halt()
            raise StartupError(f"face stage: {exc}") from exc
        except Exception as exc:  # unforeseen: still this stage's failure, not the gateway's
            log.exception("face stage could not start")
            self._halt()
            raise StartupError(f"face stage: {type(exc).__name__}: {exc}") from exc

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
                self._running_ms,
                min_free_bytes=0 if self.store is None else self.store.floor_bytes,
                clock_synced=None if self.store is None else self._store_clock_synced,
            )
        self.pipeline = CounterPipeline(
            Analyzer(models, AnalyzerSettings.from_config(cfg)),
            self.gallery,
            Policy.from_config(cfg.decision),
            cfg.camera.id,
            models.model_ids(),
            audit=self.audit,
            confirmations=self.confirmations,
            still=StillGate.from_config(cfg),
            ignore=cfg.camera.ignore,
        )
        if self.store is not None:  # a restart must not settle the same elder twice
            within_ms = int(cfg.decision.cooldown_s * 1000)
            accepted = [
                (str(data["elder_id"]), age_ms / 1000)
                for age_ms, data in self.store.recent(FACE_DECISION.name, within_ms)
                if data.get("outcome") == "accepted" and data.get("elder_id")
            ]
            store = self.store
            self._time_off_ms = store.time_off_ms()
            seen = cooldown.load(
                self._cooldown_path,
                store.steady_ms(),
                within_ms,
                off_ms=self._time_off_ms,
                off_before_ms=store.off_before_ms,
            )
            self.pipeline.remember(accepted + seen)
            self._late = LateErasures(
                Journal(self.store.path, self.store.key_path),
                # kept while the option was on, whether or not it is now
                ExpiredFrames(cfg.audit.path(self.data_dir), cfg.audit.retention_days),
                self.data_dir / late_erasure.FILE,
                cfg.gallery.refresh_s,
                time.monotonic,
            )
        self.feed = open_feed(cfg.camera, realtime=self.realtime)
        self.feed.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vision-pipeline")
        self._thread.start()
        log.info(
            "face stage running: camera %s, %d elders enrolled%s",
            cfg.camera.id,
            len(self.gallery.snapshot.elders),
            f", faces ignored in {cfg.camera.ignore}" if cfg.camera.ignore else "",
        )
        self._check_calibration()

    def stop(self) -> None:
        self._halt()

    def _halt(self) -> None:
        """Pipeline thread, camera and liveness thread: at stop, or after a start that failed
        half-way (the supervisor never stops a service that did not start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._settle_late()
        if self._late is not None:
            self._late.stop()
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

    def model_versions(self) -> dict[str, str]:
        """Role -> model id of the models the counter runs (none until it has started)."""
        return dict(self.pipeline.model_ids) if self.pipeline is not None else {}

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
            "gallery_refresh_errors": self.refresh_errors,
            "cooldown_save_errors": self.cooldown_save_errors,
            "erasure_errors": self._late.errors if self._late else 0,
            "erasures_pending": self._late.pending if self._late else 0,
            "audit_frames_kept": self.audit.kept if self.audit else 0,
            "confirmable_decisions": len(self.confirmations),
            "face_frames_per_s": round(pace, 1) if (pace := self._pace()) else None,
            "too_slow": self.too_slow,
        }

    def _pace(self) -> float | None:
        return self.pipeline.pace.per_s() if self.pipeline else None

    def _check_pace(self) -> None:
        """Said once when the counter turns too slow to accept anyone, and once when it is
        fast enough again: staff otherwise see only that every elder is left uncertain."""
        pace = self._pace()
        if pace is None:
            return
        problem = unreachable(
            self.cfg.decision, pace, f"the {pace:.1f} frames a second the counter gets of a face"
        )
        if problem is not None and self.too_slow is None:
            log.warning(
                "face stage: too slow to accept anyone: %s; or make the frames come faster "
                "(more light for a USB camera, a higher frame rate set in a network camera, "
                "a smaller camera.width and height)",
                problem,
            )
        elif problem is None and self.too_slow is not None:
            log.info("face stage: fast enough again (%.1f frames a second)", pace)
        self.too_slow = problem

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
        next_save = time.monotonic() + COOLDOWN_SAVE_S
        settlements = pipeline.decider.settlements
        while not self._stop.is_set():
            try:
                frame = feed.next_frame(timeout=0.2)
                if frame is not None:
                    events = pipeline.process(frame)
                    self._mark(frame.t)
                elif feed.ended:
                    break
                else:
                    now = feed.now()
                    events = pipeline.idle(now)
                    self._mark(now)
            except Exception as exc:  # one bad frame must not end the counter
                self.errors += 1
                self._ratelimited.warning("frame", "frame could not be analysed: %s", exc)
                continue
            for event in events:
                self._emit(event)
            now = time.monotonic()
            if now >= next_refresh:
                next_refresh = now + self.cfg.gallery.refresh_s
                self._refresh()
                self._check_pace()
            if now >= next_save or pipeline.decider.settlements != settlements:
                # a staff confirmation is in no journal event: saved at once, not within 5 s
                settlements = pipeline.decider.settlements
                next_save = now + COOLDOWN_SAVE_S
                self._save_cooldown()
        # an erasure since the last reload: its decisions made meanwhile leave the journal
        # now rather than after the next start; and the last track is decided without her
        self._refresh()
        try:
            events = pipeline.flush()
        except Exception as exc:
            self.errors += 1
            self._ratelimited.warning("frame", "last track could not be decided: %s", exc)
            return
        for event in events:
            self._emit(event)
        self._save_cooldown()

    def _mark(self, t: float) -> None:
        if self.store is not None:
            self._anchor = (t, self.store.steady_ms())

    def _settle_late(self) -> None:
        """Staff confirmations that came after the pipeline thread's last turn (a replay that
        had ended): into the cooldown file all the same."""
        if self.pipeline is None or self._anchor is None:
            return
        try:
            self.pipeline.catch_up(self._anchor[0])
            self._save_cooldown()
        except Exception as exc:
            self.errors += 1
            log.warning("face stage: cooldown not saved at stop: %s", exc)

    def _save_cooldown(self) -> None:
        """When each elder in cooldown was last seen, in running time, when it has changed."""
        pipeline, gallery, anchor = self.pipeline, self.gallery, self._anchor
        if pipeline is None or gallery is None or anchor is None:
            return
        rewritten = cooldown.stamp(self._cooldown_path) != self._cooldown_stamp
        if rewritten and self._cooldown_saved is not None:
            # most likely an erasure, which took her rows out of the gallery first: reloaded
            # now, or her id would be written back from memory until the next reload
            self._refresh()
        # ages as of the anchor, in the running time of that moment: a camera lost since the
        # last frame must not keep everyone "just seen"; erased elders are left out
        t, at_ms = anchor
        # a row that fails to decrypt hides her, but she was not erased (as at a reload)
        enrolled = set(gallery.snapshot.elders) | set(gallery.damaged)
        ages = pipeline.decider.cooldowns(t)
        seen = {e: at_ms - int(age * 1000) for e, age in ages.items() if e in enrolled}
        if self.store is not None and self._time_off_ms:
            # seen before this session: her age held the time switched off, which the next
            # start adds again; saved as it was, or a start within the session adds it twice
            started, off = self.store.off_before_ms, self._time_off_ms
            seen = {e: ms + off if ms + off < started else ms for e, ms in seen.items()}
        saved = self._cooldown_saved
        if (
            saved is not None
            and seen.keys() == saved.keys()
            and all(abs(seen[e] - saved[e]) < 1000 for e in seen)
            # an erasure in another process (the CLI) rewrote it from what it read before
            # this counter's last save: written again, or that save is lost
            and not rewritten
        ):
            return
        try:
            self._cooldown_stamp = cooldown.save(self._cooldown_path, seen)
        except OSError as exc:  # not marked saved: tried again at the next turn, not forgotten
            self.cooldown_save_errors += 1
            self._ratelimited.warning("cooldown", "face stage: cooldown not saved: %s", exc)
            return
        self._cooldown_saved = seen

    def _refresh(self) -> None:
        """New enrolments, and erasures: the faces held for staff that named only erased
        elders go, and the frames of the track in view stop naming them. A gallery file that
        cannot be read now leaves the last one in use."""
        assert self.gallery is not None and self.pipeline is not None
        try:
            before = set(self.gallery.snapshot.elders)
            changed = self.gallery.refresh_if_changed()
            if changed:
                enrolled = set(self.gallery.snapshot.elders)
                # a row that fails to decrypt (a bad write) hides her, but she was not erased
                known = enrolled | set(self.gallery.damaged)
                gone = sorted(before - known)
                self.confirmations.forget_erased(known)
                self.pipeline.decider.forget(gone)
                if gone and self._late is not None and self.store is not None:
                    # the erasure read the journal before the decisions made since, while
                    # the counter still knew her (each is committed before the next frame)
                    self._late.add(gone, self.store.steady_ms())
                self._check_calibration()
            if changed or self._erasures_due:
                self._erasures_due = True  # until taken in: a failure is tried at the next turn
                self._erasures_due = not self._take_in_erasures()
        except Exception as exc:
            self.refresh_errors += 1
            self._ratelimited.warning("refresh", "face gallery not refreshed: %s", exc)
        if self._late is not None:
            self._late.tick()

    def _take_in_erasures(self) -> bool:
        """The elders the gallery lists as erased that this counter does not know: their
        decisions recorded up to now leave the journal. After a reload that saw them go this
        is what it did already; at the first turn after a start, it is what a gateway that
        died before its reload had not done. False if it must be tried again."""
        assert self.gallery is not None
        if self._late is None or self.store is None:
            return True  # no journal: nothing to take out, and the list is left for one
        listed = self.gallery.erasures()
        if listed is None:
            return False  # changed since this turn's reload: after the next one
        known = set(self.gallery.snapshot.elders) | set(self.gallery.damaged)
        unknown = sorted({e for _, e in listed if e is not None and e not in known})
        if unknown and not self._late.add(unknown, self.store.steady_ms()):
            return False  # not in its file: the gallery keeps them listed for a restart
        again = sorted({e for _, e in listed if e is not None and e in known})
        if again and self.pipeline is not None:
            # erased and enrolled again between two reloads: never seen gone, so what the
            # counter holds of the one erased (face, cooldown, frames) goes now
            self.pipeline.decider.forget(again)
        # one that does not open (another key) stays for the key it was sealed with
        self.gallery.taken_in(token for token, elder in listed if elder is not None)
        return True

    def _emit(self, decision: DecisionEvent) -> None:
        if self.store is not None:
            try:
                self.store.record(decision.event, timeout=RECORD_TIMEOUT_S)
            except Exception as exc:  # full, closed, taken back or a raw SQLite error: counted
                self.unrecorded += 1
                self._ratelimited.warning("record", "decision not recorded: %s", exc)
        for listener in self.listeners:
            listener(decision)
