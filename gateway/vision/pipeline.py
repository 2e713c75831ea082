"""The counter pipeline for one camera: frame -> analysis -> gallery search -> decision.

No thread, no clock and no store here (those are the service's): ``process`` takes a frame and
returns the decisions it completed, as events ready to record. That keeps the whole chain
testable frame by frame with real photos and real models.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gateway.events import Event
from gateway.vision.analyze import Analysis, Analyzer
from gateway.vision.audit import AuditFrames
from gateway.vision.camera import Frame
from gateway.vision.confirm import Confirmations
from gateway.vision.decide import Decider, Decision, Observation, Policy
from gateway.vision.events import FACE_DECISION, decision_data
from gateway.vision.gallery import Gallery, SearchResult

SEARCH_K = 3
STAGES = ("decode", "detect", "quality", "align", "embed", "liveness", "search", "total")


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
        self.counts: Counter[str] = Counter()
        self._timings: dict[str, list[float]] = {}
        self._timing_track: int | None = None
        self._last_face: np.ndarray | None = None
        self.last_timings: dict[str, float] = {}
        self.recent_ms: deque[float] = deque(maxlen=100)

    def process(self, frame: Frame) -> list[DecisionEvent]:
        start = time.perf_counter()
        found: list[tuple[SearchResult, float]] = []

        def search(embedding: np.ndarray) -> None:
            t0 = time.perf_counter()
            found.append((self.gallery.search(embedding, SEARCH_K), time.perf_counter() - t0))

        analysis = self.analyzer.analyze(frame.image, with_embedding=search)
        timings = {"decode": frame.decode_s, **analysis.timings}
        search_result = None
        if found:
            search_result, timings["search"] = found[0]
        timings["total"] = time.perf_counter() - start + frame.decode_s
        self.counts["frames"] += 1
        self.counts[analysis.kind] += 1
        obs = observation(analysis, frame.t, search_result)
        if self.audit is not None and obs.kind != "no_face":
            # in memory only: the newest frame with a face, written if a decision follows
            self._last_face = frame.image
        decisions = self.decider.observe(obs)
        self._add_timings(timings)
        self.last_timings = timings
        self.recent_ms.append(timings["total"] * 1000)
        return [self._event(d) for d in decisions]

    def idle(self, t: float) -> list[DecisionEvent]:
        """No frame arrived by ``t``: lets a track end when the camera goes quiet."""
        return [self._event(d) for d in self.decider.observe(Observation(t, "no_face"))]

    def flush(self) -> list[DecisionEvent]:
        return [self._event(d) for d in self.decider.flush()]

    def _add_timings(self, timings: dict[str, float]) -> None:
        track = self.decider.track.id if self.decider.track is not None else None
        if track != self._timing_track:
            self._timings = {}
            self._timing_track = track
        for stage, seconds in timings.items():
            self._timings.setdefault(stage, []).append(seconds * 1000)

    def _event(self, decision: Decision) -> DecisionEvent:
        timings_ms = {
            stage: statistics.median(values)
            for stage, values in self._timings.items()
            if stage in STAGES and values
        }
        kept = self._last_face if self.audit is not None else None
        data = decision_data(
            decision,
            look_alikes=self.gallery.look_alikes(decision.elder_id) if decision.elder_id else (),
            camera=self.camera_id,
            policy=self.policy,
            models=self.model_ids,
            timings_ms=timings_ms,
            audit_frame=kept is not None,
            confirmable=self.confirmations.would_hold(decision.probe),
        )
        event = Event(FACE_DECISION, data)
        if kept is not None and self.audit is not None:
            self.audit.keep(event.event_id, kept)
        self.confirmations.hold(event.event_id, decision.probe, decision.candidates)
        self._last_face = None
        self.counts[f"decision_{decision.outcome.value}"] += 1
        return DecisionEvent(decision, event)
