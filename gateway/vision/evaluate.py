"""``gateway eval``: how well the face stage does on a labelled folder, and which thresholds
keep false identifications at the rate a site asks for, for the number of elders it enrols.

Two protocols:

* 1:1 pairs (LFW ``pairs.txt`` or a ``file_x,file_y,Decision`` CSV): accuracy by k-fold
  cross-validation (threshold chosen on the other folds), TAR at FAR 1e-2 and 1e-3.
* Open-set 1:N on a folder per identity: people with two or more photos are enrolled with one
  (or more) and searched with the rest (mated searches); people not enrolled are searched too
  (non-mated). A false positive is a non-mated search whose best match passes the accept rule
  (score at or above the threshold and margin at or above delta). When the site's gallery size
  N exceeds the people with several photos, people with one photo fill the gallery as
  distractors, drawn anew in each of several seeded rotations, and are searched as strangers
  in the rotations that leave them out.

Verification over every pair of different people in the folder (millions of comparisons, not
the pairs file's few hundred) sets the 1:1 threshold at FMR 1e-4.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from gateway.vision.analyze import Analyzer, AnalyzerSettings
from gateway.vision.calibrate import (
    at_or_above,
    kfold_accuracy,
    round_up,
    scores_needed,
    threshold_at_rate,
)
from gateway.vision.errors import BadImage
from gateway.vision.gallery import Snapshot
from gateway.vision.images import IMAGE_SUFFIXES, is_system_folder, read_image
from gateway.vision.models import Manifest, Models, require_verified

# margins a recommendation chooses from; never 0, which `[vision.decision] margin` refuses:
# a tie between two elders must not be accepted
MARGIN_GRID = (0.02, 0.04, 0.06, 0.08, 0.10)
DIM = 128

# ---- embedding a folder --------------------------------------------------------------------


@dataclass
class FaceSet:
    """Embeddings of every photo's subject face. ``ok``: a face was embedded; ``gated``: the
    counter's gates (one clear face, size, pose, blur, exposure) would have refused it."""

    paths: list[Path]
    labels: list[str]
    embeddings: np.ndarray
    ok: np.ndarray
    gated: list[str | None]
    failures: Counter[str] = field(default_factory=Counter)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # and why

    @property
    def usable(self) -> np.ndarray:
        """Photos of a known person that the gates pass: what the open-set and all-pairs
        figures search. A photo only the pairs file names (label "") is nobody's: taken as
        one person, two strangers' photos there would count as a genuine pair."""
        gates_pass = np.array([g is None for g in self.gated], dtype=bool)
        labelled = np.array([bool(label) for label in self.labels], dtype=bool)
        usable: np.ndarray = self.ok & gates_pass & labelled
        return usable

    def index(self) -> dict[Path, int]:
        return {p: i for i, p in enumerate(self.paths)}


def identity_folder(root: Path) -> Path:
    return root / "images" if (root / "images").is_dir() else root


def list_identities(root: Path) -> list[tuple[Path, str]]:
    """(photo, identity) for a folder holding one sub-folder of photos per person; hidden and
    system folders are skipped, as enrolment skips them."""
    base = identity_folder(root)
    items = []
    for person in sorted(p for p in base.iterdir() if p.is_dir() and not is_system_folder(p.name)):
        items += [
            (photo, person.name)
            for photo in sorted(person.iterdir())
            if photo.suffix.lower() in IMAGE_SUFFIXES
        ]
    return items


_worker: Analyzer | None = None


def _init_worker(models_dir: Path, manifest: Manifest, settings: AnalyzerSettings) -> None:
    global _worker  # noqa: PLW0603 - one analyzer per worker process
    # Ctrl-C reaches the terminal's whole group: the command stops its workers, and one
    # waiting for work would print a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    _worker = Analyzer(Models.open(models_dir, manifest, threads=1), settings)


def _exit_with_parent() -> None:
    """A worker ends when the command does, however it ended (a kill): otherwise it waits on
    its queue for good, holding a copy of the models on a box with 2 GB."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _embed_one(path: Path) -> tuple[np.ndarray | None, str | None, str | None]:
    assert _worker is not None
    return _embed(_worker, path)


def embed_photo(analyzer: Analyzer, path: Path) -> tuple[np.ndarray | None, str | None]:
    """(embedding or None, why the counter's gates would refuse the photo, or None)."""
    vector, reason, _ = _embed(analyzer, path)
    return vector, reason


def _embed(analyzer: Analyzer, path: Path) -> tuple[np.ndarray | None, str | None, str | None]:
    """As ``embed_photo``, and what is wrong with a photo that cannot be read or decoded."""
    try:
        image = read_image(path)
    except BadImage as exc:
        return None, exc.reason, str(exc)
    analysis = analyzer.analyze(image, gate=False, live=False)
    return analysis.embedding, analysis.gate_reason, None


def embed_images(
    paths: Sequence[Path],
    labels: Sequence[str],
    *,
    models_dir: Path,
    manifest: Manifest,
    settings: AnalyzerSettings,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> FaceSet:
    """Embed every photo's subject face; ``jobs`` worker processes with one thread each."""
    require_verified(models_dir, manifest)
    embeddings = np.zeros((len(paths), DIM), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    gated: list[str | None] = []
    failures: Counter[str] = Counter()
    unreadable: list[tuple[Path, str]] = []
    if jobs <= 1:
        _init_worker(models_dir, manifest, settings)
        results: Iterator[tuple[np.ndarray | None, str | None, str | None]]
        results = map(_embed_one, paths)
        pool = None
    else:
        pool = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(models_dir, manifest, settings),
        )
        results = pool.map(_embed_one, paths, chunksize=32)
    try:
        for i, (vector, reason, problem) in enumerate(results):
            if vector is not None:
                embeddings[i] = vector
                ok[i] = True
            else:
                failures[reason or "failed"] += 1
            if problem is not None:
                unreadable.append((paths[i], problem))
            gated.append(reason)
            if progress is not None:
                progress(i + 1)
    finally:
        if pool is not None:  # interrupted: the chunks not started yet are not waited for
            pool.shutdown(cancel_futures=True)
    return FaceSet(list(paths), list(labels), embeddings, ok, gated, failures, unreadable)


@dataclass(frozen=True)
class Errata:
    """Label corrections for a folder: identities to merge, photos to leave out."""

    same: dict[str, str]
    exclude: frozenset[str]

    @classmethod
    def read(cls, file: Path) -> Errata:
        same: dict[str, str] = {}
        exclude: set[str] = set()

        def name_of(label: str) -> str:
            while label in same:
                label = same[label]
            return label

        for number, raw in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            parts = raw.split("#", 1)[0].split()
            if not parts:
                continue
            if parts[0] == "same" and len(parts) == 3:
                # one person under three names may come in any order ("same B C" before
                # "same A B"): every name ends up under one, or its photos are strangers
                first, second = name_of(parts[1]), name_of(parts[2])
                if first != second:
                    same[second] = first
            elif parts[0] == "exclude" and len(parts) == 2:
                exclude.add(parts[1])
            else:
                raise ValueError(
                    f"{file}:{number}: expected 'same A B' or 'exclude PHOTO' (or PERSON/PHOTO)"
                )
        return cls({label: name_of(label) for label in same}, frozenset(exclude))

    def apply(self, faces: FaceSet) -> FaceSet:
        labels = [self.same.get(label, label) for label in faces.labels]
        gated = [
            "excluded" if self._excludes(path) else reason
            for path, reason in zip(faces.paths, faces.gated, strict=True)
        ]
        return replace(faces, labels=labels, gated=gated)

    def unused(self, faces: FaceSet) -> list[str]:
        """Entries that match no person or photo of the folder: a typo, or the errata of
        another folder, whose corrections then silently do nothing."""
        people = set(faces.labels)
        names = {n for pair in self.same.items() for n in pair if n not in people}
        photos = {e for e in self.exclude if not any(e in _names(p) for p in faces.paths)}
        return sorted(names | photos)

    def _excludes(self, path: Path) -> bool:
        return not self.exclude.isdisjoint(_names(path))


def _names(photo: Path) -> tuple[str, str, str]:
    """What an errata line may call a photo: its name without suffix (LFW's are unique, as
    Person_0001), or PERSON/PHOTO with or without it, for a site whose elders' folders all
    hold a front.jpg."""
    return photo.stem, f"{photo.parent.name}/{photo.stem}", f"{photo.parent.name}/{photo.name}"


# ---- 1:1 pairs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    a: Path
    b: Path
    same: bool
    fold: int


def read_pairs(file: Path, root: Path, folds: int = 5) -> list[Pair]:
    """LFW ``pairs.txt`` (folds as in the file) or a CSV ``file_x,file_y,Decision``
    (Yes = same person; pairs dealt round-robin into ``folds`` folds). A file that cannot be
    read so is a ValueError naming it and the line, not a traceback; so is one whose pairs
    all fall in one fold, which leaves cross-validation nothing to choose a threshold on."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not UTF-8 text") from None
    if text.lstrip().lower().startswith("file_x"):
        pairs = _csv_pairs(file, text, root, folds)
    else:
        pairs = _lfw_pairs(file, text, root)
    if not pairs:
        raise ValueError(f"{file}: no pairs")
    if len({p.fold for p in pairs}) < 2:
        raise ValueError(
            f"{file}: all {len(pairs)} pair(s) are in one fold; cross-validation needs two or "
            "more (pairs.txt: FOLDS of 2 or more; a CSV: 2 pairs or more)"
        )
    return pairs


def _lfw_pairs(file: Path, text: str, root: Path) -> list[Pair]:
    lines = [(n, ln.split()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        return []
    number, head = lines[0]
    per_fold = _count(head[1]) if len(head) == 2 else None
    if not per_fold:
        raise ValueError(f"{file}:{number}: expected 'FOLDS PAIRS' (LFW pairs.txt) or a CSV")
    base = identity_folder(root)

    def photo(name: str, index: str) -> Path:
        count = _count(index)
        if count is None:
            raise ValueError(f"{file}:{number}: {index!r} is not a photo number")
        return base / name / f"{name}_{count:04d}.jpg"

    pairs = []
    for i, (number, parts) in enumerate(lines[1:]):
        fold = i // (2 * per_fold)
        if len(parts) == 3:
            pairs.append(Pair(photo(parts[0], parts[1]), photo(parts[0], parts[2]), True, fold))
        elif len(parts) == 4:
            pairs.append(Pair(photo(parts[0], parts[1]), photo(parts[2], parts[3]), False, fold))
        else:
            raise ValueError(f"{file}:{number}: expected 3 or 4 fields")
    return pairs


def _count(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


SAME_PERSON = ("yes", "1", "true")
OTHER_PERSON = ("no", "0", "false")


def _csv_pairs(file: Path, text: str, root: Path, folds: int) -> list[Pair]:
    rows = csv.reader(text.splitlines())
    pairs: list[Pair] = []
    try:
        first = next(rows, None)
        if first is None:
            raise ValueError(f"{file}: empty")
        header = [name.strip() for name in first]
        missing = [name for name in ("file_x", "file_y", "Decision") if name not in header]
        if missing:
            raise ValueError(f"{file}:1: no column {', '.join(missing)}")
        x, y, decision = (header.index(name) for name in ("file_x", "file_y", "Decision"))
        for row in rows:
            if not any(field.strip() for field in row):
                continue
            if len(row) < len(header) or not row[x] or not row[y]:
                raise ValueError(f"{file}:{rows.line_num}: expected {len(header)} fields")
            said = row[decision].strip().lower()
            if said not in SAME_PERSON + OTHER_PERSON:  # "Same", "Y": not silently a stranger
                raise ValueError(
                    f"{file}:{rows.line_num}: Decision {row[decision]!r}: expected Yes or No"
                )
            same = said in SAME_PERSON
            pairs.append(Pair(root / row[x], root / row[y], same, len(pairs) % folds))
    except csv.Error as exc:  # a field over the csv module's limit, a NUL byte
        raise ValueError(f"{file}:{rows.line_num}: {exc}") from None
    return pairs


@dataclass(frozen=True)
class PairReport:
    pairs: int
    unusable_pairs: int
    folds: int
    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    threshold_mean: float
    # per FAR: (TAR, threshold), or None when the pairs file has too few impostor pairs
    tar_at_far: dict[str, tuple[float, float] | None]
    impostor_pairs: int
    # False when a photo is in pairs of several folds (a CSV's pairs are dealt round): its
    # threshold was then chosen on that photo too, and the accuracy is not held out
    held_out: bool = True


def pair_scores(faces: FaceSet, pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray, int]:
    """Cosine per pair; a pair with a photo that gave no face scores -1 (counted as failed)."""
    index = faces.index()
    scores = np.full(len(pairs), -1.0, dtype=np.float32)
    unusable = 0
    for i, pair in enumerate(pairs):
        a, b = index[pair.a], index[pair.b]
        if faces.ok[a] and faces.ok[b]:
            scores[i] = faces.embeddings[a] @ faces.embeddings[b]
        else:
            unusable += 1
    same = np.array([p.same for p in pairs])
    return scores, same, unusable


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float] | None:
    """(TAR, threshold) at ``far``; None when there are too few impostor pairs to show it."""
    t = threshold_at_rate(impostor, far)
    return None if t is None else (float(np.mean(genuine >= t)), t)


def pair_report(faces: FaceSet, pairs: Sequence[Pair]) -> PairReport:
    scores, same, unusable = pair_scores(faces, pairs)
    folds = np.array([p.fold for p in pairs])
    results = kfold_accuracy(scores, same, folds)
    accs = [r.accuracy for r in results]
    return PairReport(
        pairs=len(pairs),
        unusable_pairs=unusable,
        folds=len(results),
        accuracy=float(np.mean(accs)),
        accuracy_std=float(np.std(accs)),
        fold_accuracies=accs,
        threshold_mean=float(np.mean([r.threshold for r in results])),
        tar_at_far={
            f"{far:g}": tar_at_far(scores[same], scores[~same], far) for far in (1e-2, 1e-3)
        },
        impostor_pairs=int((~same).sum()),
        held_out=held_out(pairs),
    )


def held_out(pairs: Sequence[Pair]) -> bool:
    """Whether each photo is in the pairs of one fold only."""
    folds_of: dict[Path, set[int]] = {}
    for pair in pairs:
        for photo in (pair.a, pair.b):
            folds_of.setdefault(photo, set()).add(pair.fold)
    return all(len(folds) == 1 for folds in folds_of.values())


# ---- 1:1 over every pair of the folder ------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """``threshold`` and ``tar`` are None when the folder has fewer than 1/``fmr`` impostor
    pairs: a rate that small cannot be measured on it."""

    genuine_pairs: int
    impostor_pairs: int
    fmr: float
    threshold: float | None
    tar: float | None


def verify_all_pairs(faces: FaceSet, fmr: float, block: int = 512) -> VerifyReport:
    """Threshold at ``fmr`` over all impostor pairs of usable photos (those the counter's
    gates accept), keeping only the top scores per block."""
    idx = np.flatnonzero(faces.usable)
    vectors = faces.embeddings[idx]
    _, labels = np.unique(np.array(faces.labels)[idx], return_inverse=True)
    n = len(idx)
    counts = np.bincount(labels)
    genuine_pairs = int((counts * (counts - 1) // 2).sum())
    impostor_pairs = n * (n - 1) // 2 - genuine_pairs
    keep = math.floor(fmr * impostor_pairs + 1e-9) + 1
    top = np.empty(0, dtype=np.float32)
    genuine: list[np.ndarray] = []
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        sims = vectors[rows] @ vectors.T
        upper = np.arange(n)[None, :] > np.arange(rows.start, rows.stop)[:, None]
        same = labels[rows, None] == labels[None, :]
        genuine.append(sims[upper & same])
        imp = sims[upper & ~same]
        top = np.concatenate([top, imp])
        if top.size > keep:
            top = np.partition(top, top.size - keep)[-keep:]
    genuine_scores = np.concatenate(genuine) if genuine else np.empty(0, np.float32)
    # ``top`` holds the highest impostor scores; the rate over all impostor pairs is
    # what matters, so rank within them using the full count.
    ranked = np.sort(top)[::-1]
    allowed = keep - 1
    t: float | None = None
    if allowed > 0:
        t = float(np.nextafter(ranked[allowed], np.inf)) if allowed < ranked.size else -1.0
    tar = None
    if t is not None:
        tar = float(np.mean(genuine_scores >= t)) if genuine_scores.size else 0.0
    return VerifyReport(
        genuine_pairs=genuine_pairs,
        impostor_pairs=impostor_pairs,
        fmr=fmr,
        threshold=t,
        tar=tar,
    )


# ---- open-set 1:N ---------------------------------------------------------------------------


@dataclass
class OpenSetSearches:
    """Every search of one gallery size, across all rotations of who is enrolled."""

    gallery_size: int
    rotations: int
    mated_correct: np.ndarray
    mated_score: np.ndarray
    mated_margin: np.ndarray
    nonmated_score: np.ndarray
    nonmated_margin: np.ndarray
    nonmated_people: int
    # different photos behind the searches: a gallery that every rotation holds whole (all
    # the people with several photos) searches the same strangers' photos in each of them
    mated_photos: int
    nonmated_photos: int
    # templates -> elders enrolled with that many, per rotation (the first): people with
    # fewer photos than asked keep one back to search with, so fewer than asked is common
    templates: dict[int, int] = field(default_factory=dict)

    def fnir(self, threshold: float, margin: float) -> float:
        hit = (
            self.mated_correct
            & at_or_above(self.mated_score, threshold)
            & at_or_above(self.mated_margin, margin)
        )
        return float(1.0 - hit.mean()) if hit.size else 1.0

    def fpir(self, threshold: float, margin: float) -> float:
        alarm = at_or_above(self.nonmated_score, threshold) & at_or_above(
            self.nonmated_margin, margin
        )
        return float(alarm.mean()) if alarm.size else 0.0

    def threshold_for(self, fpir: float, margin: float) -> float | None:
        """Lowest threshold whose FPIR (with this margin rule) is at most ``fpir``; None with
        fewer than 1/``fpir`` different photos of strangers, which cannot show a rate that
        small: one photo searched in ten rotations is one piece of evidence, not ten (counted
        ten times, 150 strangers' photos set a threshold for 1e-3 that let unseen strangers
        through three times as often)."""
        if self.nonmated_photos < scores_needed(fpir):
            return None
        eligible = np.where(at_or_above(self.nonmated_margin, margin), self.nonmated_score, -np.inf)
        t = threshold_at_rate(eligible.astype(np.float32), fpir)
        # fewer strangers pass the margin rule than the rate allows: any cosine score would do
        return None if t is None else max(t, -1.0)


def largest_gallery(labels: Sequence[str]) -> int:
    """People with several photos plus half of those with one (the other half are strangers)."""
    counts = Counter(labels)
    repeat = sum(1 for c in counts.values() if c >= 2)
    single = len(counts) - repeat
    return repeat + single // 2


def photos_by_person(faces: FaceSet) -> dict[str, list[int]]:
    """Indexes of each person's usable photos, in folder order."""
    by_person: dict[str, list[int]] = {}
    for i in np.flatnonzero(faces.usable):
        by_person.setdefault(faces.labels[i], []).append(int(i))
    return by_person


def gallery_plans(
    by_person: dict[str, list[int]], gallery_size: int, rotations: int, seed: int
) -> list[list[str]]:
    """Who is enrolled in each rotation: people with several photos first (seeded draw),
    topped up with people with one photo when the gallery is larger than that."""
    repeat = sorted(p for p, photos in by_person.items() if len(photos) >= 2)
    single = sorted(p for p, photos in by_person.items() if len(photos) == 1)
    most = largest_gallery([person for person, photos in by_person.items() for _ in photos])
    if gallery_size > most:
        raise ValueError(
            f"a gallery of {gallery_size} needs more people than the folder has (at most {most})"
        )
    rng = np.random.default_rng(seed)
    plans: list[list[str]] = []
    for _ in range(rotations):
        if gallery_size <= len(repeat):
            plans.append(list(rng.permutation(repeat)[:gallery_size]))
        else:
            fill = gallery_size - len(repeat)
            plans.append(repeat + list(rng.permutation(single)[:fill]))
    return plans


def best_and_margin(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (searches, elders) scores: the best score and its lead over the runner-up.
    With one elder enrolled the runner-up scores 0.0, as at the counter
    (``SearchResult.best_other``)."""
    top2 = -np.sort(-scores, axis=1)[:, :2]
    runner_up = top2[:, 1] if scores.shape[1] > 1 else np.zeros(len(scores), scores.dtype)
    return top2[:, 0], top2[:, 0] - runner_up


def open_set(
    faces: FaceSet,
    gallery_size: int,
    templates: int = 1,
    rotations: int = 10,
    seed: int = 7,
    *,
    probes_from: int | None = None,
) -> OpenSetSearches:
    """Searches against ``rotations`` random galleries of ``gallery_size`` people (seeded, so
    the figures are reproducible); people with one photo fill galleries larger than the number
    of people with several, and are strangers in the rotations that leave them out.

    By default each enrolled person keeps one photo back to search with. With ``probes_from``
    only photos from that position on are searched, whatever ``templates`` is, so runs with
    different numbers of templates make the same mated searches."""
    by_person = photos_by_person(faces)
    plans = gallery_plans(by_person, gallery_size, rotations, seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("mc", "ms", "mm", "ns", "nm")}
    strangers: set[str] = set()
    mated_photos: set[int] = set()
    nonmated_photos: set[int] = set()
    enrolled_with: Counter[int] = Counter()
    for enrolled in plans:
        enrolled_set = set(enrolled)
        rows: list[tuple[str, np.ndarray]] = []
        mated: list[tuple[int, str]] = []
        for person in enrolled:
            photos = by_person[person]
            if probes_from is None:
                n_templates = min(templates, max(1, len(photos) - 1))
                first_probe = n_templates
            else:
                n_templates = min(templates, probes_from, len(photos))
                first_probe = probes_from
            rows += [(person, faces.embeddings[i]) for i in photos[:n_templates]]
            if enrolled is plans[0]:
                enrolled_with[n_templates] += 1
            mated += [(i, person) for i in photos[first_probe:]]
        snapshot = Snapshot.build(rows, DIM)
        position = {elder: i for i, elder in enumerate(snapshot.elders)}
        nonmated = [i for p, photos in by_person.items() if p not in enrolled_set for i in photos]
        strangers.update(p for p in by_person if p not in enrolled_set)
        mated_photos.update(i for i, _ in mated)
        nonmated_photos.update(nonmated)
        m_scores = snapshot.identity_scores(faces.embeddings[[i for i, _ in mated]])
        truth = np.array([position[p] for _, p in mated])
        parts["mc"].append(np.argmax(m_scores, axis=1) == truth)
        best, lead = best_and_margin(m_scores)
        parts["ms"].append(best)
        parts["mm"].append(lead)
        best, lead = best_and_margin(snapshot.identity_scores(faces.embeddings[nonmated]))
        parts["ns"].append(best)
        parts["nm"].append(lead)
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    return OpenSetSearches(
        gallery_size=gallery_size,
        rotations=len(plans),
        mated_correct=joined["mc"],
        mated_score=joined["ms"],
        mated_margin=joined["mm"],
        nonmated_score=joined["ns"],
        nonmated_margin=joined["nm"],
        nonmated_people=len(strangers),
        mated_photos=len(mated_photos),
        nonmated_photos=len(nonmated_photos),
        templates=dict(sorted(enrolled_with.items(), reverse=True)),
    )


@dataclass(frozen=True)
class OpenSetPoint:
    """``threshold``, ``fnir`` and ``fpir`` are None when the target cannot be measured."""

    fpir_target: float
    margin: float
    threshold: float | None
    fnir: float | None
    fpir: float | None


def operating_points(
    searches: OpenSetSearches, fpirs: Sequence[float], margin: float
) -> list[OpenSetPoint]:
    points = []
    for target in fpirs:
        t = searches.threshold_for(target, margin)
        if t is None:
            points.append(OpenSetPoint(target, margin, None, None, None))
            continue
        points.append(
            OpenSetPoint(target, margin, t, searches.fnir(t, margin), searches.fpir(t, margin))
        )
    return points


@dataclass(frozen=True)
class EnrolmentPoint:
    templates: int
    threshold: float
    fnir: float


@dataclass(frozen=True)
class EnrolmentEffect:
    """What enrolling more photos per elder buys, at one gallery size and FPIR."""

    gallery_size: int
    target_fpir: float
    mated_searches: int
    people: int
    points: list[EnrolmentPoint]


def enrolment_effect(
    faces: FaceSet, gallery_size: int, target_fpir: float, most: int = 3
) -> EnrolmentEffect | None:
    """FNIR at ``target_fpir`` with 1..``most`` photos per elder, on the same mated searches:
    people with more than ``most`` photos, searched with the photos after the first ``most``.
    Each count gets its own threshold, as a site that calibrates would. None when nobody in
    the folder has enough photos, or too few strangers to measure ``target_fpir``."""
    labels = [faces.labels[i] for i in np.flatnonzero(faces.usable)]
    people = sum(1 for c in Counter(labels).values() if c > most)
    if people == 0 or gallery_size > largest_gallery(labels):
        return None
    points = []
    searches = None
    for count in range(1, most + 1):
        searches = open_set(faces, gallery_size, count, probes_from=most)
        t = searches.threshold_for(target_fpir, 0.0)
        if t is None:
            return None
        points.append(EnrolmentPoint(count, t, searches.fnir(t, 0.0)))
    assert searches is not None
    return EnrolmentEffect(
        gallery_size, target_fpir, int(searches.mated_score.size), people, points
    )


@dataclass(frozen=True)
class Recommendation:
    gallery_size: int
    target_fpir: float
    accept_threshold: float
    margin: float
    candidate_threshold: float
    verify_threshold: float | None  # None: too few pairs in the folder to measure it
    fnir: float
    fpir: float
    by_margin: list[OpenSetPoint]


class NotMeasurable(Exception):
    """The folder has too few non-mated searches to show the rate a threshold is wanted for."""


def recommend(
    searches: OpenSetSearches,
    verify: VerifyReport,
    target_fpir: float = 1e-3,
    candidate_fpir: float = 1e-2,
) -> Recommendation:
    """Thresholds for a site: the accept rule (threshold, margin) with the lowest FNIR at the
    target FPIR; candidates for staff from the threshold at a looser FPIR; 1:1 from the
    all-pairs FMR. Values are rounded up to 0.01 (margin: to the grid) so they stay safe.

    Raises ``NotMeasurable`` when the searches cannot show either FPIR: a threshold just
    above every stranger seen would look like one that meets it."""
    searched = int(searches.nonmated_score.size)
    for fpir in (target_fpir, candidate_fpir):
        if searches.threshold_for(fpir, 0.0) is None:
            raise NotMeasurable(
                f"FPIR {fpir:g} needs at least {scores_needed(fpir):,} different photos of "
                f"people who are not enrolled, the folder gives {searches.nonmated_photos:,} "
                f"({searches.nonmated_people} people, searched {searched:,} times over "
                f"{searches.rotations} rotations): add photos of people who are not enrolled"
            )
    candidate_at = searches.threshold_for(candidate_fpir, 0.0)
    assert candidate_at is not None
    candidate = round_up(candidate_at)
    best: tuple[float, float, float, float] | None = None  # threshold, margin, FNIR, FPIR
    rounded = []
    for m in MARGIN_GRID:
        at = searches.threshold_for(target_fpir, m)
        assert at is not None  # the same searches as at margin 0: measurable too
        # never below the candidates' threshold: where a wide margin alone keeps strangers
        # out (elders who look alike, strangers' leads small), the threshold would fall to
        # "any score", and a face like no elder would be charged for a lead of 0.08
        t = max(round_up(at), candidate)
        fnir, fpir = searches.fnir(t, m), searches.fpir(t, m)
        rounded.append(OpenSetPoint(target_fpir, m, t, fnir, fpir))
        if best is None or (round(fnir, 4), -m) < (round(best[2], 4), -best[1]):
            best = (t, m, fnir, fpir)
    assert best is not None
    return Recommendation(
        gallery_size=searches.gallery_size,
        target_fpir=target_fpir,
        accept_threshold=best[0],
        margin=best[1],
        candidate_threshold=candidate,
        verify_threshold=None if verify.threshold is None else round_up(verify.threshold),
        fnir=best[2],
        fpir=best[3],
        by_margin=rounded,
    )


def as_dict(obj: object) -> dict[str, object]:
    data: dict[str, object] = asdict(obj)  # type: ignore[call-overload]
    return data
