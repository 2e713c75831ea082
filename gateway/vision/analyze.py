"""One image or frame in, the subject's face analysed: detection, quality, alignment,
embedding, liveness, each timed. Shared by the counter pipeline, enrolment and evaluation so
that all three see faces exactly the same way.

Liveness needs only the frame and the face box, so when the machine has cores to spare it runs
on a second thread alongside alignment and embedding (onnxruntime releases the GIL while a
model runs): a frame then costs the detector plus the longer of the two branches, not all four
models one after another.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np

from gateway.vision.align import align
from gateway.vision.config import VisionSection
from gateway.vision.detect import Face, RetinaFaceDetector
from gateway.vision.embed import Embedder
from gateway.vision.liveness import LivenessChecker, LivenessResult
from gateway.vision.models import Models, load_manifest, resolve_models_dir
from gateway.vision.quality import (
    Quality,
    QualityLimits,
    Region,
    Subject,
    crop_gate,
    geometry_gate,
    in_regions,
    pick_subject,
)
from gateway.vision.runtime import one_blas_thread

AnalysisKind = Literal["face", "poor_quality", "no_face", "multiple_faces"]


@dataclass(frozen=True)
class AnalyzerSettings:
    detector_input_side: int
    detector_score: float
    limits: QualityLimits
    liveness_alongside: bool = False

    @classmethod
    def from_config(cls, section: VisionSection) -> AnalyzerSettings:
        alongside = section.liveness_alongside
        if alongside is None:
            alongside = (os.cpu_count() or 1) >= 2 * section.threads
        return cls(
            section.detector_input_side,
            section.detector_score,
            QualityLimits.from_config(section.quality),
            alongside,
        )


@dataclass(frozen=True)
class Analysis:
    kind: AnalysisKind
    faces: int
    face: Face | None = None
    quality: Quality | None = None
    embedding: np.ndarray | None = None
    liveness: LivenessResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    ambiguous: bool = False
    ignored: int = 0  # faces in the parts of the picture the camera's ``ignore`` names

    @property
    def gate_reason(self) -> str | None:
        """What the counter's gates say about this face (also when analysed without them)."""
        if self.kind != "face":
            return self.reason
        if self.ambiguous:
            return "multiple_faces"
        return self.quality.reason if self.quality is not None else None

    @property
    def reason(self) -> str | None:
        if self.kind == "poor_quality" and self.quality is not None:
            return self.quality.reason
        return None if self.kind == "face" else self.kind


class Analyzer:
    def __init__(self, models: Models, settings: AnalyzerSettings) -> None:
        m = models.manifest
        self.settings = settings
        self.detector = RetinaFaceDetector(
            models.detector,
            m.detector,
            input_side=settings.detector_input_side,
            score_threshold=settings.detector_score,
        )
        self.embedder = Embedder(models.recognizer, m.recognizer)
        self.liveness = LivenessChecker(
            [(models.antispoof_v2, m.antispoof_v2), (models.antispoof_v1se, m.antispoof_v1se)]
        )
        self._alongside: ThreadPoolExecutor | None = None
        one_blas_thread()

    @classmethod
    def from_config(cls, cfg: VisionSection) -> Analyzer:
        """Verified, loaded and warmed-up models for the configuration (enrolment tools)."""
        manifest = load_manifest(cfg.manifest)
        models = Models.open(resolve_models_dir(cfg.models_dir), manifest, cfg.threads)
        return cls(models, AnalyzerSettings.from_config(cfg))

    def close(self) -> None:
        """Stop the liveness thread, if one was started."""
        if self._alongside is not None:
            self._alongside.shutdown()
            self._alongside = None

    def analyze(
        self,
        image: np.ndarray,
        *,
        gate: bool = True,
        live: bool = True,
        with_embedding: Callable[[np.ndarray], object] | None = None,
        ignore: Sequence[Region] = (),
    ) -> Analysis:
        """Analyse the subject face. With ``gate`` off (evaluation) the subject is embedded
        even when the frame is ambiguous or of poor quality. ``with_embedding`` (the gallery
        search) is called with the embedding while liveness may still be running. A face in
        the ``ignore`` regions (a counter camera's: never an enrolment photo's) is nobody
        when it would be the subject; as large as the subject, it still makes the frame
        ambiguous."""
        timings: dict[str, float] = {}
        clock = time.perf_counter
        start = clock()
        faces = self.detector.detect(image)
        timings["detect"] = clock() - start

        start = clock()
        width, height = image.shape[1], image.shape[0]
        subject = pick_subject(faces, width, height, self.settings.limits)
        ignored = sum(in_regions(f, ignore, width, height) for f in faces) if ignore else 0
        if subject.face is not None and ignored and in_regions(subject.face, ignore, width, height):
            # the subject itself is in an ignored part: the poster with nobody at the counter,
            # or the elder standing in front of it. Never a smaller face instead (someone in
            # the queue), who would be charged in her place. An ignored face as large as the
            # subject stays her rival (it may be the elder, off-centre in front of the TV)
            subject = Subject(None, 0)
        if subject.face is None:
            timings["quality"] = clock() - start
            return Analysis("no_face", 0, timings=timings, ignored=ignored)
        face = subject.face
        geometry = geometry_gate(face, self.settings.limits, (image.shape[1], image.shape[0]))
        # a subject too small to use is someone further back, and so is anyone its size
        if gate and subject.ambiguous and geometry.reason != "too_small":
            timings["quality"] = clock() - start
            return Analysis("multiple_faces", len(faces), face, timings=timings, ignored=ignored)
        timings["quality"] = clock() - start
        liveness = self._start_liveness(image, face, geometry, live)
        if gate and not geometry.ok:
            result = self._finish_liveness(liveness, timings)
            return Analysis(
                "poor_quality", len(faces), face, geometry, None, result, timings, ignored=ignored
            )

        start = clock()
        aligned = align(image, face.landmarks)
        timings["align"] = clock() - start

        start = clock()
        quality = crop_gate(geometry, aligned, self.settings.limits)
        timings["quality"] += clock() - start
        if gate and not quality.ok:
            result = self._finish_liveness(liveness, timings)
            return Analysis(
                "poor_quality", len(faces), face, quality, None, result, timings, ignored=ignored
            )

        start = clock()
        embedding = self.embedder.embed(aligned)
        timings["embed"] = clock() - start
        if with_embedding is not None:
            with_embedding(embedding)

        result = self._finish_liveness(liveness, timings)
        return Analysis(
            "face",
            len(faces),
            face,
            quality,
            embedding,
            result,
            timings,
            subject.ambiguous,
            ignored,
        )

    def _start_liveness(
        self, image: np.ndarray, face: Face, geometry: Quality, live: bool
    ) -> Callable[[], tuple[LivenessResult, float]] | None:
        """Also for faces the gates refuse (unless too small to judge): a printed photo is
        often held tilted, and staff should hear "spoof", not just "no usable face"."""
        if not live or geometry.reason == "too_small":
            return None
        if not self.settings.liveness_alongside:
            return partial(self._timed_liveness, image, face.box)
        if self._alongside is None:
            self._alongside = ThreadPoolExecutor(1, thread_name_prefix="liveness")
        return self._alongside.submit(self._timed_liveness, image, face.box).result

    def _timed_liveness(
        self, image: np.ndarray, box: tuple[float, float, float, float]
    ) -> tuple[LivenessResult, float]:
        start = time.perf_counter()
        result = self.liveness.check(image, box)
        return result, time.perf_counter() - start

    @staticmethod
    def _finish_liveness(
        pending: Callable[[], tuple[LivenessResult, float]] | None, timings: dict[str, float]
    ) -> LivenessResult | None:
        """The liveness verdict: run now (serial) or waited for (alongside)."""
        if pending is None:
            return None
        result, seconds = pending()
        timings["liveness"] = seconds
        return result
