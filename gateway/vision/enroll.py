"""Enrolment from photos: each photo gets a verdict with a reason, and an elder who looks like
someone already enrolled is flagged instead of quietly becoming a second way to charge them.

Rules (thresholds from ``[vision.decision]``):

* a photo must pass the counter's own gates (one clear face, size, pose, blur, exposure);
* the photos of one enrolment must show one person: a photo that matches none of the others at
  the 1:1 threshold is refused, and two photos that disagree refuse the enrolment;
* a photo scoring at or above the accept threshold against a *different* enrolled elder would be
  identified as that elder at the counter: the enrolment is refused unless staff confirm with
  ``--allow-similar`` (twins), and the pair goes into the confusable register;
* pairs scoring between the candidate and the accept thresholds are enrolled and registered as
  confusable, so a site can ask those elders for a second factor (card, wristband);
* an elder with fewer than three templates is enrolled, with a reminder: on LFW one photo
  misses about three times as many searches as three do at the same false-alarm rate
  (``gateway eval``'s "photos per elder").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from gateway.vision.analyze import Analyzer
from gateway.vision.config import DecisionSection
from gateway.vision.errors import BadImage
from gateway.vision.gallery import Gallery
from gateway.vision.images import IMAGE_SUFFIXES, read_image

ELDER_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
RECOMMENDED_PHOTOS = 3


@dataclass(frozen=True)
class PhotoVerdict:
    path: Path
    reason: str | None
    detail: str = ""
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass
class Enrolment:
    elder_id: str
    status: Literal["enrolled", "refused", "flagged"]
    message: str
    photos: list[PhotoVerdict]
    added: int = 0
    templates: int = 0
    conflicts: list[tuple[str, float]] = field(default_factory=list)
    confusable: list[tuple[str, float]] = field(default_factory=list)


def assess_photo(analyzer: Analyzer, path: Path) -> PhotoVerdict:
    try:
        image = read_image(path)
    except BadImage as exc:
        return PhotoVerdict(path, exc.reason, exc.detail)
    analysis = analyzer.analyze(image, live=False)
    if analysis.kind == "face":
        return PhotoVerdict(path, None, embedding=analysis.embedding)
    q = analysis.quality
    detail = ""
    if q is not None:
        detail = (
            f"eye distance {q.ipd_px:.0f} px, yaw {q.pose.yaw:.0f}, pitch {q.pose.pitch:.0f}, "
            f"roll {q.pose.roll:.0f} deg"
        )
        if q.sharpness is not None and q.brightness is not None:
            detail += f", sharpness {q.sharpness:.0f}, brightness {q.brightness:.0f}"
    elif analysis.kind == "multiple_faces":
        detail = f"{analysis.faces} faces of similar size"
    return PhotoVerdict(path, analysis.reason or analysis.kind, detail)


def _consistent(verdicts: list[PhotoVerdict], threshold: float) -> tuple[list[PhotoVerdict], str]:
    """Drop photos matching none of the others; '' or why the whole set is unusable."""
    good = [v for v in verdicts if v.ok]
    if len(good) < 2:
        return good, ""
    vectors = np.stack([v.embedding for v in good if v.embedding is not None])
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1.0)
    matched = sims.max(axis=1) >= threshold
    if not matched.any():
        return [], "the photos do not show the same person"
    return [v for v, m in zip(good, matched, strict=True) if m], ""


def enrol(
    gallery: Gallery,
    analyzer: Analyzer,
    elder_id: str,
    photos: list[Path],
    *,
    rules: DecisionSection,
    allow_similar: bool = False,
) -> Enrolment:
    if not ELDER_ID.match(elder_id):
        raise ValueError(f"elder id {elder_id!r}: use letters, digits and _ . : - (max 128)")
    verdicts = [assess_photo(analyzer, p) for p in photos]
    kept, problem = _consistent(verdicts, rules.verify_threshold)
    kept_paths = {v.path for v in kept}
    verdicts = [
        PhotoVerdict(v.path, "does_not_match_other_photos", "", None)
        if v.ok and v.path not in kept_paths
        else v
        for v in verdicts
    ]
    if problem or not kept:
        return Enrolment(elder_id, "refused", problem or "no usable photo", verdicts)
    vectors = [v.embedding for v in kept if v.embedding is not None]
    others = _best_others(gallery, elder_id, vectors)
    conflicts = [(e, s) for e, s in others if s >= rules.accept_threshold]
    confusable = [(e, s) for e, s in others if s >= rules.candidate_threshold]
    if conflicts and not allow_similar:
        names = ", ".join(f"{e} ({s:.2f})" for e, s in conflicts)
        return Enrolment(
            elder_id,
            "flagged",
            f"looks like enrolled elder(s) {names}; not added (staff may confirm with "
            "--allow-similar)",
            verdicts,
            conflicts=conflicts,
        )
    gallery.add(elder_id, vectors)
    gallery.set_confusable(elder_id, confusable)
    total = gallery.snapshot.count(elder_id)
    message = f"{len(vectors)} template(s) added"
    if total < RECOMMENDED_PHOTOS:
        message += (
            f"; {total} in all: enrol {RECOMMENDED_PHOTOS} photos (front, slightly left, "
            "slightly right) to be recognised more reliably"
        )
    if confusable:
        message += "; confusable with " + ", ".join(f"{e} ({s:.2f})" for e, s in confusable)
    return Enrolment(
        elder_id,
        "enrolled",
        message,
        verdicts,
        added=len(vectors),
        templates=total,
        conflicts=conflicts,
        confusable=confusable,
    )


def _best_others(
    gallery: Gallery, elder_id: str, vectors: list[np.ndarray]
) -> list[tuple[str, float]]:
    """Each other enrolled elder's best score against any of the new photos, best first."""
    snap = gallery.snapshot
    if not snap.elders:
        return []
    scores = snap.identity_scores(np.stack(vectors)).max(axis=0)
    pairs = [(e, float(s)) for e, s in zip(snap.elders, scores, strict=True) if e != elder_id]
    return sorted(pairs, key=lambda p: -p[1])


def folder_photos(folder: Path) -> list[tuple[str, list[Path]]]:
    """(elder id, photos) for a folder holding one sub-folder per elder."""
    return [
        (sub.name, sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        for sub in sorted(folder.iterdir())
        if sub.is_dir()
    ]
