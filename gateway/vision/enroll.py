"""Enrolment from photos: each photo gets a verdict with a reason, and an elder who looks like
someone already enrolled is flagged instead of quietly becoming a second way to charge them.

Rules (thresholds from ``[vision.decision]``):

* a photo must pass the counter's own gates (one clear face, size, pose, blur, exposure);
* the photos of one enrolment must show one person: a photo that matches none of the others at
  the 1:1 threshold is refused, and two groups of photos that disagree refuse the enrolment;
* photos sent later for an elder already enrolled must match the enrolled ones (a mix-up on
  the platform must not add a second person to the elder);
* a photo scoring at or above the accept threshold against a *different* enrolled elder would be
  identified as that elder at the counter: the enrolment is refused unless staff confirm with
  ``--allow-similar`` (twins), and the pair goes into the confusable register;
* pairs scoring between the candidate and the accept thresholds are enrolled and registered as
  confusable, so a site can ask those elders for a second factor (card, wristband);
* an elder with fewer than three templates is enrolled, with a reminder: on LFW one photo
  misses about three times as many searches as three do at the same false-alarm rate
  (``gateway eval``'s "photos per elder");
* a photo already enrolled for the elder (the same picture sent again, e.g. a retried platform
  request) is not stored twice: duplicates would count towards the three without adding any
  view of the face.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from gateway.vision.analyze import Analyzer
from gateway.vision.config import DecisionSection
from gateway.vision.elders import check_elder_id
from gateway.vision.errors import BadImage
from gateway.vision.gallery import Gallery
from gateway.vision.images import (
    IMAGE_SUFFIXES,
    REQUEST_MAX_PIXELS,
    decode_image,
    is_system_folder,
    read_image,
)

RECOMMENDED_PHOTOS = 3
# One picture re-encoded, cropped, rescaled, brightened, turned grey or mirrored (a phone's
# front camera) scores 0.89-0.99 against itself (deepface: 60 photos x 6 such copies, the least
# a grey copy at 400 px, 0.888); of 1,719 pairs of photos of one person taken apart (LFW), 3.3 %
# score 0.85 or more (near-copies of one moment reach 0.95). No score tells the two apart.
# Where a copy taken for two pictures would let a stranger through (two copies of her photo
# outvoting the elder's own), COPY_LIKE counts them as one: at worst two real photos count
# once, which is stricter. Where counting them as two is the stricter (a second person among
# the photos), keeps a real second view (storing templates), or leaves staff the choice (the
# same picture under two elders refuses even allow_similar; between 0.85 and 0.95 it is
# flagged as a look-alike, which staff may override), SAME_PICTURE.
SAME_PICTURE = 0.95
COPY_LIKE = 0.85
LEARN_UP_TO = 10
# Photos enrolled per elder: each is one more chance for a stranger to match her (the
# thresholds are calibrated with one to three), and each later one has only to match one of
# those before it.
ENROL_UP_TO = 10


@dataclass(frozen=True)
class Photo:
    """A photo to enrol, from a file (CLI) or from bytes (a platform request)."""

    name: str
    read: Callable[[], np.ndarray]

    @classmethod
    def file(cls, path: Path) -> Photo:
        return cls(path.name, partial(read_image, path))

    @classmethod
    def data(cls, name: str, data: bytes) -> Photo:
        return cls(name, partial(decode_image, data, max_pixels=REQUEST_MAX_PIXELS))


@dataclass(frozen=True)
class PhotoVerdict:
    name: str
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
    already: int = 0
    templates: int = 0
    conflicts: list[tuple[str, float]] = field(default_factory=list)
    confusable: list[tuple[str, float]] = field(default_factory=list)
    # learning at the limit: the decision whose learned template gave way
    replaced: str | None = None


def assess_photo(analyzer: Analyzer, photo: Photo | Path) -> PhotoVerdict:
    photo = Photo.file(photo) if isinstance(photo, Path) else photo
    try:
        image = photo.read()
    except BadImage as exc:
        return PhotoVerdict(photo.name, exc.reason, exc.detail)
    analysis = analyzer.analyze(image, live=False)
    if analysis.kind == "face":
        return PhotoVerdict(photo.name, None, embedding=analysis.embedding)
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
    return PhotoVerdict(photo.name, analysis.reason or analysis.kind, detail)


def _one_person(
    verdicts: list[PhotoVerdict], enrolled: np.ndarray, threshold: float
) -> tuple[list[int], str]:
    """Indexes of the photos to keep, or why none can be kept.

    Photos are grouped by who matches whom at the 1:1 threshold, the elder's enrolled templates
    counting as one more member. The elder is the group holding the enrolled templates (a
    photo matching none of them is left out) or, for a first enrolment, the one group of two or
    more pictures, and only if every photo is in it: a photo matching none of the others may
    be the elder's own beside two of a stranger's (copies of one can score 0.84), and another
    group of two or more is a second person; either is refused, since keeping any would let
    someone be charged as this elder. Copies of one picture are one picture: sent twice, a
    stranger's photo must not outvote the elder's own. Where copies cannot be told from two
    photos of one moment, each count is the stricter one: a group that may be two pictures is
    a second person, and the elder's must be two pictures even counted as copies
    (``COPY_LIKE``)."""
    good = [(i, v.embedding) for i, v in enumerate(verdicts) if v.embedding is not None]
    if not good:
        return [], ""
    vectors = np.stack([e for _, e in good])
    linked = vectors @ vectors.T >= threshold
    if len(enrolled):
        to_enrolled = (vectors @ enrolled.T).max(axis=1) >= threshold
        linked = np.block(
            [[linked, to_enrolled[:, None]], [to_enrolled[None, :], np.ones((1, 1), bool)]]
        )
    anchor = len(good)  # the enrolled templates' node, when there are any
    groups = _groups(linked)
    people = [g for g in groups if anchor not in g and _pictures(vectors[g], SAME_PICTURE) >= 2]
    if len(enrolled):
        elder = next(g for g in groups if anchor in g)
        keep = [good[j][0] for j in elder if j != anchor]
        if not keep:
            return [], (
                "the photos do not show the elder enrolled under this id "
                "(to enrol someone else under it, remove the elder first)"
            )
        if people:
            return [], "the photos show more than one person"
        return keep, ""
    if _pictures(vectors, COPY_LIKE) == 1:
        return [i for i, _ in good], ""
    if len(people) > 1:
        return [], "the photos show more than one person"
    if not people or _pictures(vectors[people[0]], COPY_LIKE) < 2:
        return [], "the photos do not show the same person"
    elder = [good[j][0] for j in people[0]]
    if len(elder) < len(good):  # see the docstring: nothing here says which one is the elder
        return elder, "the photos do not all show the same person"
    return elder, ""


def _groups(linked: np.ndarray) -> list[list[int]]:
    """Connected groups of a symmetric "matches" matrix."""
    unseen = set(range(len(linked)))
    groups: list[list[int]] = []
    while unseen:
        stack = [min(unseen)]
        unseen.discard(stack[0])
        group: list[int] = []
        while stack:
            node = stack.pop()
            group.append(node)
            for other in np.flatnonzero(linked[node]).tolist():
                if other in unseen:
                    unseen.discard(other)
                    stack.append(other)
        groups.append(sorted(group))
    return groups


def _pictures(vectors: np.ndarray, same: float) -> int:
    """How many different pictures the vectors are of, ``same`` and above counting as one."""
    empty = np.empty((0, vectors.shape[1]), np.float32)
    return len(_new_views(empty, list(vectors), same))


def _new_views(
    enrolled: np.ndarray, vectors: list[np.ndarray], same: float = SAME_PICTURE
) -> list[np.ndarray]:
    """The vectors that are not a picture already enrolled (or already earlier in the list)."""
    new: list[np.ndarray] = []
    for vector in vectors:
        known = np.concatenate([enrolled, np.stack(new)]) if new else enrolled
        if known.size == 0 or float((known @ vector).max()) < same:
            new.append(vector)
    return new


def enrol(
    gallery: Gallery,
    analyzer: Analyzer,
    elder_id: str,
    photos: Sequence[Photo | Path],
    *,
    rules: DecisionSection,
    allow_similar: bool = False,
) -> Enrolment:
    check_elder_id(elder_id)
    verdicts = [assess_photo(analyzer, p) for p in photos]
    # the checks and the add are one write transaction on the gallery as it is now: another
    # process enrolling the same person under another id, or erasing this elder, is either
    # seen by the checks or waits for the add
    with gallery.writing():
        held = gallery.snapshot.count(elder_id)
        if not held and elder_id in gallery.damaged:
            # her rows cannot be read, so nothing can say these photos show her: taken for a
            # new elder, someone else's photo would be added under her id
            return Enrolment(
                elder_id,
                "refused",
                "her enrolled templates cannot be read (damaged, or sealed with another key), "
                "so the photos cannot be checked against them: remove the elder and enrol "
                "her again",
                verdicts,
            )
        # a new elder: a photo that could not be used (no face found in it, a face the gates
        # refused, a file that would not decode) may be hers, beside somebody else's photos
        if not held and any(v.ok for v in verdicts) and not all(v.ok for v in verdicts):
            return Enrolment(
                elder_id,
                "refused",
                "a new elder's photos must all be usable, to be checked against one another; "
                "send them again without or in place of the photos refused",
                verdicts,
            )
        # her enrolled photos say who she is, not faces learned from staff confirmations:
        # one confirmation of the wrong person would let that person's photos in for good
        enrolled = gallery.snapshot.enrolled_of(elder_id)
        keep, problem = _one_person(verdicts, enrolled, rules.verify_threshold)
        verdicts = [
            PhotoVerdict(v.name, "does_not_match_other_photos") if v.ok and i not in keep else v
            for i, v in enumerate(verdicts)
        ]
        if problem or not keep:
            reason = problem or "no usable photo"
            return Enrolment(elder_id, "refused", reason, verdicts, templates=held)
        vectors = [v.embedding for v in verdicts if v.ok and v.embedding is not None]
        fresh = len(_new_views(enrolled, vectors))
        if len(enrolled) + fresh > ENROL_UP_TO:
            return Enrolment(
                elder_id,
                "refused",
                f"{len(enrolled)} photos enrolled already, {fresh} more would pass the "
                f"{ENROL_UP_TO} kept per elder (each is one more chance for a stranger to "
                "match her): remove the elder and enrol her best recent photos anew",
                verdicts,
                templates=held,
            )
        return _add(
            gallery,
            elder_id,
            vectors,
            verdicts,
            rules=rules,
            allow_similar=allow_similar,
            held=held,
            hint=" (staff who have checked may confirm: --allow-similar, or allow_similar in a "
            "platform request)",
        )


def learn(
    gallery: Gallery,
    elder_id: str,
    probe: np.ndarray,
    *,
    rules: DecisionSection,
    decision: str,
    anchor: str | None = None,
) -> Enrolment:
    """Staff confirmed who an ``uncertain`` elder was: the counter's own view of the face joins
    their templates, so that next time they are recognised (registration photos are often
    years old; an elder's ID card photo may be decades old). Never past ``LEARN_UP_TO``
    templates: each one is another chance for a stranger to match. At the limit the oldest
    learned view gives way to the new one, so the counter keeps up with a face that ages;
    enrolled photos never do. The template remembers the ``decision`` (event id) it was
    learned from, for ``unlearn``.

    The checks and the write are one write transaction: an elder erased by another process
    meanwhile is refused here, or erased with the learned face after it. ``anchor``, one of
    the elder's enrolled templates when the face was seen: gone means the elder was erased
    (consent withdrawn) and enrolled again since, and a face from before an erasure is not
    learned into the new enrolment."""
    verdicts = [PhotoVerdict("counter", None, embedding=probe)]
    with gallery.writing():
        held = gallery.snapshot.count(elder_id)
        if held == 0:
            return Enrolment(elder_id, "refused", "not enrolled (erased since?)", verdicts)
        if anchor is not None and not gallery.holds(elder_id, anchor):
            message = "erased and enrolled again since the decision; enrol photos instead"
            return Enrolment(elder_id, "refused", message, verdicts, templates=held)
        full = held >= LEARN_UP_TO
        if full and not gallery.learned(elder_id):
            message = f"already {held} enrolled templates (at most {LEARN_UP_TO} are kept)"
            return Enrolment(elder_id, "refused", message, verdicts, templates=held)
        result = _add(
            gallery,
            elder_id,
            [probe],
            verdicts,
            rules=rules,
            allow_similar=False,
            held=held,
            hint="",
            learned_from=decision,
            retire_oldest_learned=full,
        )
    if result.replaced:
        result = replace(
            result,
            message=f"{result.message}; replaces the face learned from {result.replaced} "
            f"(at most {LEARN_UP_TO} templates are kept)",
        )
    return result


def unlearn(
    gallery: Gallery, elder_id: str, *, rules: DecisionSection, decision: str | None = None
) -> int:
    """Undo staff confirmations that taught the counter a wrong face: the templates learned
    for the elder (from one decision, if given) go, the enrolled photos stay, and the
    confusable register is worked out again from what is left, in the same write
    transaction (no other writer sees the register out of step). Returns how many went."""
    with gallery.writing():
        removed = gallery.remove_learned(elder_id, decision)
        if removed:
            _register(gallery, elder_id, list(gallery.snapshot.templates_of(elder_id)), rules)
    return removed


def _add(
    gallery: Gallery,
    elder_id: str,
    vectors: list[np.ndarray],
    verdicts: list[PhotoVerdict],
    *,
    rules: DecisionSection,
    allow_similar: bool,
    held: int,
    hint: str,
    learned_from: str | None = None,
    retire_oldest_learned: bool = False,
) -> Enrolment:
    """Store the vectors unless they look like another elder; keep the register current."""
    conflicts = [
        (e, s) for e, s in _best_others(gallery, elder_id, vectors) if s >= rules.accept_threshold
    ]
    same_picture = [(e, s) for e, s in conflicts if s >= SAME_PICTURE]
    if same_picture:  # not a look-alike staff could vouch for: the very same photo
        names = ", ".join(e for e, _ in same_picture)
        return Enrolment(
            elder_id,
            "flagged",
            f"the same picture is enrolled for {names}; not added (allow_similar cannot "
            "override this)",
            verdicts,
            templates=held,
            conflicts=conflicts,
        )
    if conflicts and not allow_similar:
        names = ", ".join(f"{e} ({s:.2f})" for e, s in conflicts)
        return Enrolment(
            elder_id,
            "flagged",
            f"looks like enrolled elder(s) {names}; not added{hint}",
            verdicts,
            templates=held,
            conflicts=conflicts,
        )
    enrolled = gallery.snapshot.templates_of(elder_id)
    new = _new_views(enrolled, vectors)
    retired: list[str] = []
    if new:
        written = gallery.add(
            elder_id, new, learned_from, retire_oldest_learned=retire_oldest_learned
        )
        retired = written.retired
    # the register describes the elder as a whole: photos enrolled earlier count too
    confusable = _register(gallery, elder_id, list(gallery.snapshot.templates_of(elder_id)), rules)
    total = gallery.snapshot.count(elder_id)
    message = f"{len(new)} template(s) added"
    if len(new) < len(vectors):
        message += f", {len(vectors) - len(new)} already enrolled"
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
        added=len(new),
        already=len(vectors) - len(new),
        templates=total,
        conflicts=conflicts,
        confusable=confusable,
        replaced=retired[0] if retired else None,
    )


def _register(
    gallery: Gallery, elder_id: str, templates: list[np.ndarray], rules: DecisionSection
) -> list[tuple[str, float]]:
    """Set the elder's entries in the confusable register from all their templates."""
    confusable = (
        [
            (e, s)
            for e, s in _best_others(gallery, elder_id, templates)
            if s >= rules.candidate_threshold
        ]
        if templates
        else []
    )
    gallery.set_confusable(elder_id, confusable)
    return confusable


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


def folder_photos(folder: Path) -> list[tuple[str, list[Path] | str]]:
    """(elder id, photos) for a folder holding one sub-folder per elder; a sub-folder with no
    photo to enrol gives why instead, so one bad folder does not stop the others, and the
    installer reads what to mend rather than a bare "no usable photo"."""
    out: list[tuple[str, list[Path] | str]] = []
    for sub in sorted(folder.iterdir()):
        if not sub.is_dir() or is_system_folder(sub.name):
            continue
        try:
            entries = list(sub.iterdir())
        except OSError as exc:
            out.append((sub.name, f"folder cannot be read: {exc.strerror or exc}"))
            continue
        photos = sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES)
        out.append((sub.name, photos or _no_photos(entries)))
    return out


def _no_photos(entries: list[Path]) -> str:
    """Why an elder's folder gives nothing to enrol."""
    if not entries:
        return "the folder is empty"
    why = []
    nested = sorted(p.name for p in entries if p.is_dir() and not is_system_folder(p.name))
    if nested:
        why.append(
            f"photos must be directly in the elder's folder, not in sub-folders "
            f"({', '.join(nested[:3])}{', ...' if len(nested) > 3 else ''})"
        )
    others = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    if others:
        kinds = sorted({p.suffix.lower() or "no suffix" for p in others})
        why.append(
            f"{len(others)} file(s) in a format not read ({', '.join(kinds[:5])}): "
            "export them as JPEG or PNG"
        )
    return "; ".join(why) or "no photos in it"


def refused_id(elder_id: str, problem: str) -> Enrolment:
    """A folder named so that it cannot be an elder id, or that cannot be read: refused, and
    the others go on."""
    return Enrolment(elder_id, "refused", problem, [])
