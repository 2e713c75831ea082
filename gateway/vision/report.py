"""``gateway eval`` end to end: embed a labelled folder once, then report 1:1 and open-set
figures and the thresholds to configure, as text for people or JSON for tools."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.vision.analyze import AnalyzerSettings
from gateway.vision.calibrate import scores_needed
from gateway.vision.config import VisionSection
from gateway.vision.errors import VisionError
from gateway.vision.evaluate import (
    EnrolmentEffect,
    Errata,
    FaceSet,
    NotMeasurable,
    OpenSetPoint,
    Pair,
    PairReport,
    Recommendation,
    VerifyReport,
    embed_images,
    enrolment_effect,
    largest_gallery,
    list_identities,
    open_set,
    operating_points,
    pair_report,
    read_pairs,
    recommend,
    verify_all_pairs,
)
from gateway.vision.learning import ConfirmationEffect, Rule, confirmation_effect
from gateway.vision.models import load_manifest, resolve_models_dir
from gateway.vision.progress import Progress

VERIFY_FMR = 1e-4
FPIRS = (1e-2, 1e-3)
UNREADABLE_SHOWN = 10  # photos named in the text report; the JSON report names them all


@dataclass
class OpenSetReport:
    gallery_size: int
    rotations: int
    mated_searches: int
    nonmated_searches: int
    nonmated_people: int
    mated_photos: int
    nonmated_photos: int
    points: list[OpenSetPoint]
    at_recommended: dict[str, float] = field(default_factory=dict)
    templates: dict[int, int] = field(default_factory=dict)  # templates -> elders with them


@dataclass
class Figures:
    pairs: PairReport | None = None
    verify: VerifyReport | None = None
    open_set: list[OpenSetReport] = field(default_factory=list)
    recommendation: Recommendation | None = None
    no_recommendation: str | None = None  # why there is none, when the folder cannot show it
    smaller_gallery: str | None = None  # the --n asked for, when the folder cannot hold it
    enrolment: EnrolmentEffect | None = None
    confirmation: ConfirmationEffect | None = None


@dataclass
class EvalReport:
    faces_dir: str
    photos: int
    identities: int
    no_face: dict[str, int]
    gated: dict[str, int]
    errata: dict[str, int]
    seconds: float
    figures: Figures
    unreadable: list[str] = field(default_factory=list)  # "photo: what is wrong with it"
    errata_unused: list[str] = field(default_factory=list)  # entries matching nothing

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)
        return data

    def text(self) -> str:
        lines = [
            f"faces      {self.faces_dir}: {self.photos} photos, {self.identities} people "
            f"({self.seconds:.0f} s)",
            f"no face    {dict(self.no_face) or 'none'}",
        ]
        shown = self.unreadable[:UNREADABLE_SHOWN]
        lines += [f"  cannot use {line}" for line in shown]
        if len(self.unreadable) > len(shown):
            lines.append(f"  and {len(self.unreadable) - len(shown):,} more photos like these")
        lines.append(
            f"gated      {dict(self.gated) or 'none'} (left out of open-set and all-pairs)"
        )
        if self.errata:
            lines.append(f"errata     {self.errata}")
        if self.errata_unused:
            lines.append(f"  matching no person or photo here: {', '.join(self.errata_unused)}")
        if self.figures.pairs is not None:
            p = self.figures.pairs
            lines += [
                "",
                f"1:1 pairs  {p.pairs} pairs ({p.unusable_pairs} without a face), "
                f"{p.folds}-fold cross-validation"
                + ("" if p.held_out else " (photos in several folds: not held out)"),
                f"  accuracy {p.accuracy * 100:.2f} % +- {p.accuracy_std * 100:.2f} "
                f"(folds: {', '.join(f'{a * 100:.2f}' for a in p.fold_accuracies)}), "
                f"threshold {p.threshold_mean:.3f}",
            ]
            for far, measured in p.tar_at_far.items():
                if measured is None:
                    lines.append(
                        f"  TAR at FAR {far}: not measurable ({p.impostor_pairs:,} impostor "
                        f"pairs, at least {scores_needed(float(far)):,} needed)"
                    )
                    continue
                tar, t = measured
                lines.append(f"  TAR {tar:.4f} at FAR {far} (threshold {t:.3f})")
        if self.figures.verify is not None:
            v = self.figures.verify
            lines += [
                "",
                f"1:1 all pairs  {v.impostor_pairs:,} impostor / {v.genuine_pairs:,} genuine",
                f"  threshold {v.threshold:.3f} at FMR {v.fmr:g}: TAR {v.tar:.4f}"
                if v.threshold is not None and v.tar is not None
                else f"  FMR {v.fmr:g}: not measurable (at least {scores_needed(v.fmr):,} "
                "impostor pairs needed)",
            ]
        for o in self.figures.open_set:
            lines += [
                "",
                f"open-set 1:N  gallery {o.gallery_size}, {o.rotations} rotations, "
                f"{o.mated_searches:,} mated searches ({o.mated_photos:,} photos) / "
                f"{o.nonmated_searches:,} non-mated ({o.nonmated_photos:,} photos of "
                f"{o.nonmated_people:,} people not enrolled)",
            ]
            if any(count > 1 for count in o.templates):
                lines.append(
                    "  templates per elder: "
                    + ", ".join(f"{k} for {n:,}" for k, n in o.templates.items())
                    + " (one photo of each is kept back to search with)"
                )
            for pt in o.points:
                if pt.threshold is None or pt.fnir is None or pt.fpir is None:
                    lines.append(
                        f"  FPIR {pt.fpir_target:g} (margin {pt.margin:.2f}): not measurable "
                        f"(at least {scores_needed(pt.fpir_target):,} different photos of "
                        "people not enrolled needed)"
                    )
                    continue
                lines.append(
                    f"  FPIR {pt.fpir_target:g} (margin {pt.margin:.2f}): threshold "
                    f"{pt.threshold:.3f}, FNIR {pt.fnir:.4f} (measured FPIR {pt.fpir:.5f})"
                )
            if o.at_recommended:
                at = o.at_recommended
                lines.append(
                    f"  at the recommended thresholds: FNIR {at['fnir']:.4f}, FPIR {at['fpir']:.5f}"
                )
        e = self.figures.enrolment
        if e is not None:
            lines += [
                "",
                f"photos per elder  gallery {e.gallery_size}, the same {e.mated_searches:,} "
                f"mated searches (by {e.people} people with more than {len(e.points)} photos)",
            ]
            lines += [
                f"  {ep.templates} enrolled: FNIR {ep.fnir:.4f} at FPIR {e.target_fpir:g} "
                f"(threshold {ep.threshold:.3f})"
                for ep in e.points
            ]
        c = self.figures.confirmation
        if c is not None:
            lines += [
                "",
                f"staff confirmations  gallery {c.gallery_size}, {c.rotations} rotations, "
                "recommended thresholds, elders enrolled with one photo",
                f"  first visits {c.first_visits:,}: {c.confirmable:,} uncertain with the elder "
                f"a candidate, {c.learned:,} learned ({c.learned_people} different people)",
                f"  their next {c.next_visits:,} visits accepted: {c.accepted_without:.4f} "
                f"without, {c.accepted_with:.4f} with the learned face "
                f"(as somebody else: {c.wrong_with:.4f})",
                f"  FPIR {c.fpir_without:.5f} without, {c.fpir_with:.5f} with the learned faces",
            ]
        r = self.figures.recommendation
        if self.figures.smaller_gallery is not None:
            lines += ["", self.figures.smaller_gallery]
        if self.figures.no_recommendation is not None:
            lines += ["", f"no thresholds recommended: {self.figures.no_recommendation}"]
        if r is not None:
            lines += [
                "",
                f"recommended for {r.gallery_size} elders at FPIR {r.target_fpir:g} "
                f"(FNIR {r.fnir:.4f}, FPIR {r.fpir:.5f}):",
                "  [vision.decision]",
                f"  accept_threshold = {r.accept_threshold:.2f}",
                f"  margin = {r.margin:.2f}",
                f"  candidate_threshold = {r.candidate_threshold:.2f}",
                f"  verify_threshold = {r.verify_threshold:.2f}"
                if r.verify_threshold is not None
                else "  # verify_threshold: not measurable on this folder (see 1:1 all pairs); "
                "keep the current value",
                f"  calibrated_for_elders = {r.gallery_size}",
            ]
        return "\n".join(lines)


def evaluate_faces(
    faces: FaceSet,
    pairs: list[Pair] | None,
    gallery_size: int,
    target_fpir: float = 1e-3,
    templates: int = 1,
) -> Figures:
    """The figures for an embedded folder (pairs optional; open-set if it has identities)."""
    out = Figures()
    if pairs:
        out.pairs = pair_report(faces, pairs)
    labels = [label for label, ok in zip(faces.labels, faces.usable, strict=True) if ok]
    if len(set(labels)) < 3:
        out.no_recommendation = (
            f"open-set figures and thresholds need usable photos of at least 3 people, one "
            f"sub-folder each; the folder has {len(set(labels))}"
        )
        return out
    verify = verify_all_pairs(faces, VERIFY_FMR)
    out.verify = verify
    largest = largest_gallery(labels)
    if gallery_size > largest:
        out.smaller_gallery = (
            f"a gallery of {gallery_size:,} elders was asked for; this folder allows at most "
            f"{largest:,} (the rest of its people are needed as strangers): the figures and "
            f"thresholds below are for {largest:,}. For more elders, calibrate on a larger "
            "folder"
        )
    sizes = [gallery_size, largest]
    recommendation = None
    for i, size in enumerate(dict.fromkeys(s for s in sizes if s <= largest)):
        searches = open_set(faces, size, templates)
        if i == 0:  # for the site's own gallery size (or the largest the folder allows)
            try:
                recommendation = recommend(searches, verify, target_fpir)
            except NotMeasurable as exc:
                out.no_recommendation = str(exc)
        points = operating_points(searches, FPIRS, 0.0)
        if recommendation is not None:
            points += operating_points(searches, FPIRS, recommendation.margin)
        at_recommended = (
            {
                "fnir": searches.fnir(recommendation.accept_threshold, recommendation.margin),
                "fpir": searches.fpir(recommendation.accept_threshold, recommendation.margin),
            }
            if recommendation is not None
            else {}
        )
        out.open_set.append(
            OpenSetReport(
                gallery_size=size,
                rotations=searches.rotations,
                mated_searches=int(searches.mated_score.size),
                nonmated_searches=int(searches.nonmated_score.size),
                nonmated_people=searches.nonmated_people,
                mated_photos=searches.mated_photos,
                nonmated_photos=searches.nonmated_photos,
                points=points,
                at_recommended=at_recommended,
                templates=searches.templates,
            )
        )
    out.recommendation = recommendation
    # a gallery larger than the folder allows: like the figures above, for the largest it does
    site_size = min(gallery_size, largest)
    out.enrolment = enrolment_effect(faces, site_size, target_fpir)
    if recommendation is not None:
        rule = Rule(
            recommendation.accept_threshold,
            recommendation.margin,
            recommendation.candidate_threshold,
        )
        out.confirmation = confirmation_effect(faces, site_size, rule)
    return out


def run_eval(
    vision: VisionSection,
    *,
    faces: Path,
    pairs: Path | None,
    errata: Path | None,
    gallery_size: int,
    target_fpir: float,
    templates: int,
    jobs: int,
) -> EvalReport:
    started = time.monotonic()
    if not faces.is_dir():  # a mistyped path must not read as "0 photos" and exit 0
        raise VisionError(f"{faces}: no such folder of face photos")
    items = list_identities(faces)
    pair_list = read_pairs(pairs, faces) if pairs is not None else None
    fix = Errata.read(errata) if errata is not None else None  # a typo said before the work
    if not items and not pair_list:
        raise VisionError(f"{faces}: no photos (expected a folder per person, or --pairs)")
    known = {p for p, _ in items}
    extra = sorted({q for pair in pair_list or [] for q in (pair.a, pair.b)} - known)
    paths = [p for p, _ in items] + extra
    labels = [label for _, label in items] + [""] * len(extra)
    face_set = embed_images(
        paths,
        labels,
        models_dir=resolve_models_dir(vision.models_dir),
        manifest=load_manifest(vision.manifest),
        settings=AnalyzerSettings.from_config(vision),
        jobs=jobs,
        progress=Progress(len(paths), "embedding"),
    )
    errata_counts: dict[str, int] = {}
    errata_unused = []
    if fix is not None:
        errata_unused = fix.unused(face_set)
        face_set = fix.apply(face_set)
        errata_counts = {"merged_names": len(fix.same), "excluded_photos": len(fix.exclude)}
    figures = evaluate_faces(face_set, pair_list, gallery_size, target_fpir, templates)
    gated = Counter(g for g, ok in zip(face_set.gated, face_set.ok, strict=True) if g and ok)
    return EvalReport(
        faces_dir=str(faces),
        photos=len(paths),
        identities=len({label for label in labels if label}),
        no_face=dict(face_set.failures),
        unreadable=[f"{_shown(path, faces)}: {why}" for path, why in face_set.unreadable],
        gated=dict(gated),
        errata=errata_counts,
        errata_unused=errata_unused,
        seconds=time.monotonic() - started,
        figures=figures,
    )


def _shown(photo: Path, faces: Path) -> str:
    """A photo as the folder or the pairs file names it."""
    try:
        return str(photo.relative_to(faces))
    except ValueError:
        return str(photo)
