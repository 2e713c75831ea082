"""The counter pipeline for one camera: frame -> analysis -> gallery search -> decision.

No thread, no clock and no store here (those are the service's): ``process`` takes a frame and
returns the decisions it completed, as events ready to record. That keeps the whole chain
testable frame by frame with real photos and real models.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.events import Event, uuid7
from gateway.logs import RateLimitedLog
from gateway.vision.analyze import Analysis, Analyzer
from gateway.vision.audit import AuditFrames
from gateway.vision.camera import Frame
from gateway.vision.confirm import Confirmations
from gateway.vision.decide import (
    Decider,
    Decision,
    Observation,
    ObservationKind,
    Outcome,
    Policy,
)
from gateway.vision.events import FACE_DECISION, decision_data
from gateway.vision.gallery import Gallery, SearchResult
from gateway.vision.quality import Region
from gateway.vision.still import StillGate

SEARCH_K = 3
STAGES = ("decode", "detect", "quality", "align", "embed", "liveness", "search", "total")
TIMED_FRAMES = 60  # a decision reports the medians of its track's latest frames
PACED_FRAMES = 30  # the counter's pace is the median spacing of this many face frames
PACE_AFTER = 5  # ... once it has seen at least this many
SAME_VISIT_S = 5.0  # face frames further apart are two visits, not one visit's pace

log = logging.getLogger(__name__)
_flood = RateLimitedLog(log, 60.0)


@dataclass(frozen=True)
class DecisionEvent:
    decision: Decision
    event: Event


def observation(analysis: Analysis, t: float, search: SearchResult | None) -> Observation:
    """What the decider needs. A face too small to use is someone further back, not a person
    at the counter, so it counts as no face rather than starting a track."""
    if analysis.kind == "face":
        return Observation(
            t,
            "face",
            embedding=analysis.embedding,
            search=search,
            live_score=analysis.liveness.live_score if analysis.liveness else None,
        )
    if analysis.kind == "poor_quality" and analysis.reason != "too_small":
        live = analysis.liveness.live_score if analysis.liveness else None
        return Observation(t, "poor_quality", live_score=live, reason=analysis.reason)
    if analysis.kind == "multiple_faces":
        return Observation(t, "multiple_faces")
    return Observation(t, "no_face")


@dataclass
class TrackFrames:
    """What a track's decision reports besides the decider's verdict: the stage timings of its
    frames and, with the audit option, its newest frame (in memory only until then). Kept per
    track, because the frame that ends one person's track is the next person's."""

    timings: dict[str, deque[float]] = field(default_factory=dict)
    image: np.ndarray | None = None

    def add(self, timings: Mapping[str, float], image: np.ndarray | None) -> None:
        for stage, seconds in timings.items():
            self.timings.setdefault(stage, deque(maxlen=TIMED_FRAMES)).append(seconds * 1000)
        if image is not None:
            self.image = image

    def medians_ms(self) -> dict[str, float]:
        return {
            stage: statistics.median(values)
            for stage, values in self.timings.items()
            if stage in STAGES and values
        }


class Pace:
    """How many frames a second the decider gets while a face is in view: what decides
    whether k of them fit in ``window_s``. It is measured between consecutive analysed frames
    that both show someone, on the frames' own clock, so a camera slower than asked (an IP
    camera's substream, a USB camera stretching its exposure in dim light) and analysis
    slower than the camera (a large frame on a Pi) both show. An empty counter says nothing
    of it: its frames are cheap, and the still-scene gate skips most of them."""

    def __init__(self) -> None:
        self._spacing: deque[float] = deque(maxlen=PACED_FRAMES)
        self._last: float | None = None

    def saw(self, t: float, someone: bool) -> None:
        if someone and self._last is not None and 0 < t - self._last <= SAME_VISIT_S:
            self._spacing.append(t - self._last)
        self._last = t if someone else None

    def per_s(self) -> float | None:
        if len(self._spacing) < PACE_AFTER:
            return None
        return 1.0 / statistics.median(self._spacing)


class CounterPipeline:
    def __init__(
        self,
        analyzer: Analyzer,
        gallery: Gallery,
        policy: Policy,
        camera_id: str,
        model_ids: Mapping[str, str],
        *,
        audit: AuditFrames | None = None,
        confirmations: Confirmations | None = None,
        still: StillGate | None = None,
        ignore: Sequence[Region] = (),
    ) -> None:
        self.analyzer = analyzer
        self.gallery = gallery
        self.policy = policy
        self.camera_id = camera_id
        self.model_ids = dict(model_ids)
        self.audit = audit
        # without: nothing is held, no decision is confirmable
        self.confirmations = Confirmations(0) if confirmations is None else confirmations
        self.decider = Decider(policy)
        # without: the detector sees every frame
        self.still = StillGate(0.0, 0.0) if still is None else still
        self.ignore = list(ignore)  # parts of the picture whose faces are nobody at the counter
        self.counts: Counter[str] = Counter()
        self._tracks: dict[int, TrackFrames] = {}
        self.last_timings: dict[str, float] = {}
        self.recent_ms: deque[float] = deque(maxlen=100)
        self._earlier: list[tuple[str, float]] = []
        self.last_t: float | None = None  # the last frame's time
        self.pace = Pace()

    def remember(self, accepted: list[tuple[str, float]]) -> None:
        """Elders accepted before a restart, with how long ago (s): they stay in cooldown
        from their first frame on, whatever clock the frames come with."""
        self._earlier = list(accepted)

    def process(self, frame: Frame) -> list[DecisionEvent]:
        """The frame's decisions. One that shows the same empty scene as the last frame the
        detector found nobody in, once the decider was at rest, is not analysed: it is a frame
        without a face, as the detector would have said, and counted as ``still_skipped``."""
        start = time.perf_counter()
        if self.still.skips(frame.image, frame.t):
            self.counts["still_skipped"] += 1
            self.last_t = frame.t
            self.pace.saw(frame.t, False)
            return self._nothing(frame.t, "no_face")  # a frame all the same
        found: list[tuple[SearchResult, float]] = []

        def search(embedding: np.ndarray) -> None:
            t0 = time.perf_counter()
            found.append((self.gallery.search(embedding, SEARCH_K), time.perf_counter() - t0))

        analysis = self.analyzer.analyze(frame.image, with_embedding=search, ignore=self.ignore)
        if analysis.ignored:
            self.counts["ignored_faces"] += analysis.ignored
        timings = {"decode": frame.decode_s, **analysis.timings}
        search_result = None
        if found:
            search_result, timings["search"] = found[0]
        timings["total"] = time.perf_counter() - start + frame.decode_s
        self.counts["frames"] += 1
        self.counts[analysis.kind] += 1
        self.last_t = frame.t
        self.catch_up(frame.t)
        obs = observation(analysis, frame.t, search_result)
        self.pace.saw(frame.t, obs.kind != "no_face")
        this = TrackFrames()
        this.add(timings, frame.image if self.audit is not None and obs.kind != "no_face" else None)
        decisions = self.decider.observe(obs)
        track = self.decider.track
        # nobody in view, nor lately: a detector's miss on a face (a hand raised to it) must
        # not let the frames after it, the face again, go unanalysed while she is there
        self.still.seen(
            frame.image, frame.t, analysis.kind == "no_face" and self.decider.at_rest(frame.t)
        )
        if track is not None and obs.kind in ("face", "poor_quality"):
            self._tracks.setdefault(track.id, TrackFrames()).add(timings, this.image)
        self.last_timings = timings
        self.recent_ms.append(timings["total"] * 1000)
        return self._events(decisions, this if obs.kind == "multiple_faces" else None)

    def idle(self, t: float) -> list[DecisionEvent]:
        """No frame arrived by ``t``: the decider hears of it (``no_frame``), which says
        nothing of who is at the counter, unlike a frame without a face."""
        return self._nothing(t, "no_frame")

    def _nothing(self, t: float, kind: ObservationKind) -> list[DecisionEvent]:
        self.catch_up(t)
        return self._events(self.decider.observe(Observation(t, kind)))

    def catch_up(self, t: float) -> None:
        """Elders remembered from before a restart, and those staff settled by hand, go into
        the cooldown as of ``t`` (the frames' clock): with or without a frame, since staff
        settle by hand precisely when the camera is of no help, and a restart meanwhile must
        not forget it."""
        for elder, ago in self._earlier:
            self.decider.settled(elder, t - ago, 0)
        self._earlier = []
        for settled in self.confirmations.take_settled():  # the cooldown runs from now
            if self.gallery.snapshot.count(settled.elder) == 0:
                continue  # erased meanwhile: not held again, nor named later
            self.decider.settled(settled.elder, max(settled.t, t), settled.track, settled.probe)

    def flush(self) -> list[DecisionEvent]:
        return self._events(self.decider.flush())

    def _events(
        self, decisions: list[Decision], this: TrackFrames | None = None
    ) -> list[DecisionEvent]:
        """A ``multiple_faces`` decision is about this very frame, whichever track it ends;
        any other, the track's own frames (a track ended by the gap that this frame crossed
        keeps its own, not the next people's)."""
        out = [
            self._event(
                d,
                this
                if this is not None and d.outcome is Outcome.MULTIPLE_FACES
                else self._tracks.get(d.track) or TrackFrames(),
            )
            for d in decisions
        ]
        current = self.decider.track
        self._tracks = {k: v for k, v in self._tracks.items() if current and k == current.id}
        if current is not None and current.decided and current.id in self._tracks:
            self._tracks[current.id].image = None  # no frame outlives its decision
        return out

    def _event(self, decision: Decision, frames: TrackFrames) -> DecisionEvent:
        event_id = uuid7()
        named = [decision.elder_id] if decision.elder_id else []
        named += [elder for elder, _ in decision.candidates if elder not in named]
        named += [elder for elder in decision.seen if elder not in named]
        # a frame naming nobody (two faces, none usable: nobody searched) could not be found
        # by the erasure of whoever is in it
        kept = (
            bool(named) and frames.image is not None and self._keep(event_id, frames.image, named)
        )
        # every uncertain one, with a live face or not: staff who settle her by hand must be
        # able to say so, or the counter settles her again when she turns back
        held = decision.outcome is Outcome.UNCERTAIN and self.confirmations.enabled
        data = decision_data(
            decision,
            look_alikes=self.gallery.look_alikes(decision.elder_id) if decision.elder_id else (),
            camera=self.camera_id,
            policy=self.policy,
            models=self.model_ids,
            timings_ms=frames.medians_ms(),
            audit_frame=kept,
            confirmable=held,
        )
        event = Event(FACE_DECISION, data, event_id)
        if held:
            snapshot = self.gallery.snapshot
            self.confirmations.hold(
                event.event_id,
                decision.probe,
                decision.candidates,
                {elder: snapshot.anchor(elder) for elder, _ in decision.candidates},
                decided_t=decision.t,
                track=decision.track,
            )
        self.counts[f"decision_{decision.outcome.value}"] += 1
        return DecisionEvent(decision, event)

    def _keep(self, event_id: str, image: np.ndarray, elders: list[str]) -> bool:
        """The audit frame is a record of the decision, not the decision: if it cannot be
        written (disk full, folder gone) the decision is still recorded, saying so."""
        if self.audit is None:
            return False
        try:
            self.audit.keep(event_id, image, elders)
        except (OSError, ValueError) as exc:
            self.counts["audit_frame_errors"] += 1
            _flood.warning("audit", "audit frame not kept: %s", exc)
            return False
        return True
