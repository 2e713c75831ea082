"""Accuracy on real photos, and the defaults are exactly what the evaluation recommends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.vision.calibrate import (
    SCORE_EPS,
    at_or_above,
    best_accuracy_threshold,
    beyond_calibration,
    kfold_accuracy,
    round_up,
    threshold_at_rate,
)
from gateway.vision.config import DecisionSection
from gateway.vision.evaluate import (
    Errata,
    FaceSet,
    NotMeasurable,
    OpenSetSearches,
    VerifyReport,
    largest_gallery,
    open_set,
    read_pairs,
    recommend,
)
from gateway.vision.report import EvalReport, Figures, evaluate_faces
from tests.vision.conftest import ERRATA


def rate_at(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(at_or_above(scores, threshold)))


def test_threshold_at_rate_never_exceeds_the_rate_by_the_counters_rule() -> None:
    """The counter takes a score a hair below a threshold as at it (float32 rounding): a
    threshold one float above the first score it must keep out let that score in."""
    impostor = np.linspace(0, 1, 1000, dtype=np.float32)
    for rate in (0.1, 0.01, 0.001):
        t = threshold_at_rate(impostor, rate)
        assert t is not None and rate_at(impostor, t) <= rate
        assert rate_at(impostor, t - 2 * SCORE_EPS) > rate
    # fewer scores than 1/rate: one false match is already more, so no threshold shows it
    assert threshold_at_rate(impostor[:999], 0.001) is None
    assert threshold_at_rate(impostor[:0], 0.001) is None


def test_best_accuracy_threshold_and_kfold() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    same = np.array([False, False, False, True, True, True])
    assert 0.3 < best_accuracy_threshold(scores, same) < 0.6
    folds = np.array([0, 1, 0, 1, 0, 1])
    assert [r.accuracy for r in kfold_accuracy(scores, same, folds)] == [1.0, 1.0]


def test_the_best_accuracy_threshold_keeps_tied_scores_together() -> None:
    """Pairs that score the same are accepted or rejected together: the threshold may not
    count on telling apart the two 0.3 pairs (1 of 3 right) when 0.4 gets 2 of 3."""
    scores = np.array([0.3, 0.3, 0.5])
    same = np.array([False, True, False])
    t = best_accuracy_threshold(scores, same)
    assert np.mean((scores >= t) == same) == pytest.approx(2 / 3)


def test_round_up_is_never_down() -> None:
    assert round_up(0.5301) == 0.54
    assert round_up(0.54) == 0.54


def test_errata_file_parses(tmp_path: Path) -> None:
    errata = Errata.read(ERRATA)
    assert errata.same["Noer_Muis"] == "Noer_Moeis"
    assert "Carlos_Ruckauf_0001" in errata.exclude
    bad = tmp_path / "errata.txt"
    bad.write_text("merge A B\n")
    with pytest.raises(ValueError, match=r"errata\.txt:1"):
        Errata.read(bad)


def test_errata_merge_one_person_under_several_names_in_any_order(tmp_path: Path) -> None:
    """Three spellings of one name, listed so that the second line renames the first's
    target: all three photos are one person, or two of them count as strangers."""
    errata = tmp_path / "errata.txt"
    errata.write_text("same A B\nsame C A\nsame D E\nsame E B\n")
    labels = ["A", "B", "C", "D", "E", "F"]
    faces = FaceSet(
        [Path(f"{label}.jpg") for label in labels],
        labels,
        np.zeros((len(labels), 128), np.float32),
        np.ones(len(labels), bool),
        [None] * len(labels),
    )
    merged = Errata.read(errata).apply(faces).labels
    assert len(set(merged[:5])) == 1
    assert merged[5] == "F"


def test_errata_exclude_one_elders_photo_by_folder_and_say_what_matches_nothing(
    tmp_path: Path,
) -> None:
    """At a site every elder's folder may hold a front.jpg: 'exclude front' left out every
    elder's. PERSON/PHOTO names one; an entry that matches nothing (a typo, another folder's
    errata) is said, not silently ignored."""
    errata = tmp_path / "errata.txt"
    errata.write_text("exclude E1002/front.jpg\nexclude E1003/side\nexclude E9/front\nsame X Y\n")
    elders, names = ("E1001", "E1002", "E1003"), ("front", "side")
    paths = [Path(f"site/{e}/{n}.jpg") for e in elders for n in names]
    labels = [p.parent.name for p in paths]
    faces = FaceSet(paths, labels, np.zeros((6, 128), np.float32), np.ones(6, bool), [None] * 6)
    fix = Errata.read(errata)
    gated = fix.apply(faces).gated
    excluded = [str(p.relative_to("site")) for p, g in zip(paths, gated, strict=True) if g]
    assert excluded == ["E1002/front.jpg", "E1003/side.jpg"]
    assert fix.unused(faces) == ["E9/front", "X", "Y"]
    text = EvalReport("site", 6, 3, {}, {}, {"merged_names": 1}, 0.0, Figures(), [], ["X"]).text()
    assert "  matching no person or photo here: X" in text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"", r"pairs\.txt: no pairs"),
        (b"10\n", r"pairs\.txt:1: expected 'FOLDS PAIRS'"),
        (b"10 0\nA 1 2\n", r"pairs\.txt:1: expected 'FOLDS PAIRS'"),
        (b"10 300\n\nA 1 x\n", r"pairs\.txt:3: 'x' is not a photo number"),
        (b"file_x,file_y\na.jpg,b.jpg\n", r"pairs\.txt:1: no column Decision"),
        (b"file_x,file_y,Decision\na.jpg\n", r"pairs\.txt:2: expected 3 fields"),
        (
            b"file_x,file_y,Decision\na.jpg,b.jpg,Yes\nc.jpg,d.jpg,Same\n",
            r"pairs\.txt:3: Decision 'Same'",
        ),
        (b"\xff\xfe1\x00", r"pairs\.txt: not UTF-8 text"),
        (b"1 1\nA 1 2\nA 1 B 1\n", r"pairs\.txt: all 2 pair\(s\) are in one fold"),
        (b"file_x,file_y,Decision\na.jpg,b.jpg,Yes\n", r"pairs\.txt: all 1 pair\(s\) are in one"),
        (b"file_x,file_y,Decision\n", r"pairs\.txt: no pairs"),
        (b"10 300\n", r"pairs\.txt: no pairs"),
        (  # over the csv module's field limit: its own error, not a ValueError
            b'file_x,file_y,Decision\n"' + b"a" * 140_000 + b'",b.jpg,Yes\n',
            r"pairs\.txt:2: field larger than field limit",
        ),
    ],
)
def test_a_malformed_pairs_file_is_refused_naming_file_and_line(
    tmp_path: Path, text: bytes, problem: str
) -> None:
    """gateway eval prints a ValueError as its error: an IndexError or TypeError was a
    traceback."""
    bad = tmp_path / "pairs.txt"
    bad.write_bytes(text)
    with pytest.raises(ValueError, match=problem):
        read_pairs(bad, tmp_path)


@pytest.fixture(scope="module")
def lfw_figures(lfw_faces: FaceSet, faces_dir: Path) -> Figures:
    lfw = faces_dir / "lfw-dev"
    pairs = read_pairs(lfw / "pairs.txt", lfw)
    return evaluate_faces(Errata.read(ERRATA).apply(lfw_faces), pairs, gallery_size=1000)


def test_lfw_1to1_accuracy_by_5_fold_cross_validation(lfw_figures: Figures) -> None:
    pairs = lfw_figures.pairs
    assert pairs is not None
    assert pairs.pairs == 3000 and pairs.folds == 5 and pairs.unusable_pairs == 0
    assert pairs.accuracy >= 0.993
    tar, threshold = pairs.tar_at_far["0.001"]
    assert tar >= 0.97
    assert 0.2 < threshold < 0.5


def test_lfw_open_set_figures(lfw_figures: Figures, lfw_faces: FaceSet) -> None:
    reports = lfw_figures.open_set
    sizes = [r.gallery_size for r in reports]
    labels = [lb for lb, ok in zip(lfw_faces.labels, lfw_faces.usable, strict=True) if ok]
    assert sizes[0] == 1000 and sizes[1] >= largest_gallery(labels) - 50
    at_1000 = reports[0]
    assert at_1000.nonmated_searches >= 10_000 and at_1000.mated_searches >= 10_000
    point = next(p for p in at_1000.points if p.fpir_target == 1e-3 and p.margin == 0.0)
    assert point.fpir <= 1e-3
    assert point.fnir < 0.25


def test_more_enrolment_photos_miss_fewer_elders_on_the_same_searches(
    lfw_figures: Figures,
) -> None:
    effect = lfw_figures.enrolment
    assert effect is not None
    assert effect.gallery_size == 1000 and effect.mated_searches >= 1000
    fnir = [p.fnir for p in effect.points]
    assert [p.templates for p in effect.points] == [1, 2, 3]
    assert fnir[0] > fnir[1] > fnir[2]
    assert fnir[2] < fnir[0] / 2


def test_probes_from_searches_the_same_photos_whatever_the_templates() -> None:
    rng = np.random.default_rng(3)
    people = [f"p{i}" for i in range(12) for _ in range(5 if i < 6 else 1)]
    vectors = rng.normal(size=(len(people), 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ok = np.ones(len(people), dtype=bool)
    faces = FaceSet(
        [Path(f"{i}.jpg") for i in range(len(people))], people, vectors, ok, [None] * len(people)
    )
    # people p0..p5 have five photos: photos 4 and 5 are searched, the first 1-3 enrolled
    sizes = {open_set(faces, 6, t, rotations=2, probes_from=3).mated_score.size for t in (1, 2, 3)}
    assert sizes == {6 * 2 * 2}
    assert open_set(faces, 6, 1, rotations=2).mated_score.size == 6 * 4 * 2


def _random_faces(people: list[str], seed: int = 3) -> FaceSet:
    """Unit vectors around one random centre per person, as photos of them would be."""
    rng = np.random.default_rng(seed)
    centres = {p: rng.normal(size=128) for p in sorted(set(people))}
    vectors = np.array([centres[p] + 0.6 * rng.normal(size=128) for p in people], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ok = np.ones(len(people), dtype=bool)
    paths = [Path(f"{i}.jpg") for i in range(len(people))]
    return FaceSet(paths, people, vectors, ok, [None] * len(people))


def test_the_report_says_how_many_templates_its_elders_really_had() -> None:
    """--templates 3 on a folder where most people have two or three photos gives most
    elders one or two: the figures were read as those of three per elder, as at a site."""
    people = [f"two{i}" for i in range(5) for _ in range(2)]
    people += [f"three{i}" for i in range(3) for _ in range(3)]
    people += [f"five{i}" for i in range(2) for _ in range(5)] + ["s1", "s2", "s3", "s4"]
    faces = _random_faces(people)
    assert open_set(faces, 10, templates=3).templates == {3: 2, 2: 3, 1: 5}
    figures = evaluate_faces(faces, None, gallery_size=10, templates=3)
    text = EvalReport("site", len(people), 14, {}, {}, {}, 0.0, figures).text()
    assert "  templates per elder: 3 for 2, 2 for 3, 1 for 5 (one photo of each" in text
    alone = evaluate_faces(faces, None, gallery_size=10)
    assert "templates per elder" not in EvalReport("site", 0, 0, {}, {}, {}, 0.0, alone).text()


def test_a_site_with_one_elder_is_evaluated_with_the_counters_margin() -> None:
    """`gateway eval --n 1`: with nobody else enrolled the lead is over 0.0, as at the counter."""
    faces = _random_faces([f"p{i}" for i in range(4) for _ in range(3)] + ["s1", "s2"])
    searches = open_set(faces, 1, rotations=3)
    assert searches.mated_score.size == 3 * 2 and searches.nonmated_score.size == 3 * 11
    assert np.array_equal(searches.mated_margin, searches.mated_score)
    assert np.array_equal(searches.nonmated_margin, searches.nonmated_score)
    assert evaluate_faces(faces, None, gallery_size=1).open_set[0].gallery_size == 1


def test_the_recommended_margin_is_one_the_configuration_takes() -> None:
    """Strangers who always stand clear of the runner-up gain nothing from a margin, while
    some elders lead only narrowly: the lowest FNIR would be at margin 0, which the
    configuration refuses (a tie between two elders must never be accepted)."""
    rng = np.random.default_rng(0)
    mated = rng.uniform(0.5, 0.9, 2000).astype(np.float32)
    narrow = np.where(rng.random(2000) < 0.05, 0.01, 0.3).astype(np.float32)
    strangers = rng.uniform(0.1, 0.6, 5000).astype(np.float32)
    searches = OpenSetSearches(
        100,
        10,
        np.ones(2000, bool),
        mated,
        narrow,
        strangers,
        np.full(5000, 0.2, np.float32),
        500,
        mated_photos=2000,
        nonmated_photos=5000,
    )
    rec = recommend(searches, VerifyReport(0, 0, 1e-4, 0.4, 0.9))
    assert rec.margin > 0 and all(p.margin > 0 for p in rec.by_margin)
    DecisionSection(
        accept_threshold=rec.accept_threshold,
        margin=rec.margin,
        candidate_threshold=rec.candidate_threshold,
    )


def test_a_wide_margin_alone_never_brings_the_accept_threshold_down_to_any_score() -> None:
    """Elders who look alike leave strangers only small leads, so at a margin of 0.08 no
    stranger passes whatever the score: the threshold for that margin fell to -1.00, which
    had the lowest FNIR and was recommended, and a face like no elder was charged for a
    lead of 0.08. The candidates' threshold followed it down, offering everyone to staff."""
    rng = np.random.default_rng(3)
    mated = rng.uniform(0.3, 0.9, 3000).astype(np.float32)
    mated_lead = rng.uniform(0.0, 0.4, 3000).astype(np.float32)
    strangers = rng.uniform(0.1, 0.7, 1200).astype(np.float32)
    stranger_lead = rng.exponential(0.012, 1200).astype(np.float32)
    searches = OpenSetSearches(
        100,
        10,
        np.ones(3000, bool),
        mated,
        mated_lead,
        strangers,
        stranger_lead,
        1200,
        mated_photos=3000,
        nonmated_photos=1200,
    )
    rec = recommend(searches, VerifyReport(0, 0, 1e-4, 0.4, 0.9))
    at_candidates = round_up(float(np.sort(strangers)[-12]) + 1e-6)
    assert rec.candidate_threshold == pytest.approx(at_candidates, abs=0.011)
    assert rec.accept_threshold >= rec.candidate_threshold > 0.5
    assert all(p.threshold is not None and p.threshold >= 0.5 for p in rec.by_margin)


def test_too_few_strangers_for_the_target_fpir_recommend_nothing() -> None:
    """A site folder of its enrolled elders and a few people who are not: 30 non-mated
    searches cannot show FPIR 1e-3 (or 1e-2), and a threshold just above every stranger seen
    must not be offered as one that meets it. With no stranger at all, not -1 either."""
    few = _random_faces([f"e{i}" for i in range(30) for _ in range(2)] + ["s1", "s2", "s3"])
    no_strangers = _random_faces([f"e{i}" for i in range(20) for _ in range(3)])
    for faces, elders, photos in ((few, 30, 3), (no_strangers, 20, 0)):
        figures = evaluate_faces(faces, None, gallery_size=elders)
        assert figures.recommendation is None and figures.confirmation is None
        assert figures.no_recommendation is not None
        needs = "at least 1,000 different photos of people who are not enrolled"
        assert f"{needs}, the folder gives {photos} (" in figures.no_recommendation
        assert all(p.threshold is None for o in figures.open_set for p in o.points)
        text = EvalReport("site", 63, 33, {}, {}, {}, 0.0, figures).text()
        assert "FPIR 0.001 (margin 0.00): not measurable" in text
        assert "no thresholds recommended: FPIR 0.001 needs" in text
        assert "accept_threshold" not in text


def test_strangers_searched_in_every_rotation_count_once_towards_a_rate() -> None:
    """Every rotation enrolls all the people with several photos, so the same 150 strangers
    are searched in each of the 10: 1,500 searches, but 150 photos cannot show FPIR 1e-3 and
    the threshold they would set lets unseen strangers through far more often."""
    people = [f"e{i}" for i in range(60) for _ in range(2)] + [f"s{i}" for i in range(150)]
    searches = open_set(_random_faces(people), 60, rotations=10)
    assert searches.nonmated_score.size == 1500 and searches.nonmated_photos == 150
    assert searches.mated_photos == 60
    assert searches.threshold_for(1e-3, 0.0) is None
    assert searches.threshold_for(1e-2, 0.0) is not None  # 150 photos do show 1 in 100
    with pytest.raises(NotMeasurable, match="the folder gives 150 \\(150 people, searched 1,500"):
        recommend(searches, VerifyReport(0, 0, 1e-4, 0.4, 0.9))


def test_a_gallery_larger_than_the_folder_allows_is_said_not_silently_shrunk() -> None:
    """Thresholds for 30 elders offered as the answer for 5,000 would be far too loose."""
    faces = _random_faces([f"e{i}" for i in range(30) for _ in range(2)] + ["s1", "s2"])
    figures = evaluate_faces(faces, None, gallery_size=5000)
    assert [o.gallery_size for o in figures.open_set] == [31]
    text = EvalReport("site", 62, 32, {}, {}, {}, 0.0, figures).text()
    assert "a gallery of 5,000 elders was asked for; this folder allows at most 31" in text
    assert evaluate_faces(faces, None, gallery_size=31).smaller_gallery is None


def test_a_gallery_larger_than_the_folder_allows_keeps_every_section_of_the_report() -> None:
    """Photos per elder and staff confirmations are shown for the largest gallery the folder
    allows, as the open-set figures and thresholds are, not left out without a word."""
    people = [f"e{i}" for i in range(40) for _ in range(5)] + [f"s{i}" for i in range(200)]
    faces = _random_faces(people)
    figures = evaluate_faces(faces, None, gallery_size=5000, target_fpir=0.05)
    assert figures.smaller_gallery is not None
    assert figures.recommendation is not None and figures.recommendation.gallery_size == 140
    assert figures.enrolment is not None and figures.enrolment.gallery_size == 140
    assert figures.confirmation is not None and figures.confirmation.gallery_size == 140


def test_photos_only_the_pairs_file_names_are_nobodys_in_the_identity_figures() -> None:
    """A site folder of people plus loose photos a pairs CSV names: those have no person
    (label ""), so two strangers' loose photos are neither a genuine pair nor an elder."""
    people = [f"e{i}" for i in range(4) for _ in range(3)]
    faces = _random_faces([*people, "x1", "x1", "x2", "x2"])
    faces.labels[len(people) :] = [""] * 4
    figures = evaluate_faces(faces, None, gallery_size=4)
    assert figures.verify is not None
    assert figures.verify.genuine_pairs == 4 * 3
    assert figures.verify.impostor_pairs == 12 * 11 // 2 - 4 * 3
    assert figures.open_set[0].mated_searches == 10 * 4 * 2


def test_a_gallery_beyond_its_calibration_says_how_to_recalibrate() -> None:
    assert beyond_calibration(1000, 1000) is None
    problem = beyond_calibration(2500, 1000)
    assert problem is not None
    assert "about 2.5x as often" in problem and "gateway eval --faces DIR --n 2500" in problem


def test_defaults_are_the_recommendation_for_1000_elders_at_fpir_1e3(
    lfw_figures: Figures,
) -> None:
    rec = lfw_figures.recommendation
    defaults = DecisionSection()
    assert rec is not None
    assert rec.gallery_size == 1000 and rec.target_fpir == 1e-3
    assert defaults.calibrated_for_elders == rec.gallery_size
    assert (rec.accept_threshold, rec.margin, rec.candidate_threshold, rec.verify_threshold) == (
        defaults.accept_threshold,
        defaults.margin,
        defaults.candidate_threshold,
        defaults.verify_threshold,
    )


def test_staff_confirmations_get_uncertain_elders_accepted_later_without_false_alarms(
    lfw_figures: Figures,
) -> None:
    effect = lfw_figures.confirmation
    assert effect is not None
    assert effect.gallery_size == 1000 and effect.learned >= 100 and effect.next_visits >= 300
    assert effect.accepted_with >= effect.accepted_without + 0.2
    assert effect.wrong_with <= 0.01
    assert effect.fpir_with <= 1e-3
