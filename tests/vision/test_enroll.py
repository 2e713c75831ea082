from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from gateway.vision.analyze import Analyzer
from gateway.vision.config import VisionSection
from gateway.vision.elders import BadElderId
from gateway.vision.enroll import (
    ENROL_UP_TO,
    LEARN_UP_TO,
    Enrolment,
    Photo,
    assess_photo,
    enrol,
    learn,
    unlearn,
)
from gateway.vision.gallery import Gallery, Written, erase


@pytest.fixture
def gallery(tmp_path: Path, analyzer: Analyzer) -> Gallery:
    return Gallery.open(
        tmp_path / "faces.db", tmp_path / "faces.key", analyzer.embedder.model_id, create=True
    )


@pytest.fixture(scope="module")
def df(faces_dir: Path) -> Path:
    return faces_dir / "deepface"


RULES = VisionSection().decision


def _faces(count: int, seed: int) -> list[np.ndarray]:
    """Unit vectors standing in for enrolled templates: random, so they match nobody."""
    v = np.random.default_rng(seed).standard_normal((count, 128)).astype(np.float32)
    return list(v / np.linalg.norm(v, axis=1, keepdims=True))


def test_photos_of_one_person_are_enrolled(gallery: Gallery, analyzer: Analyzer, df: Path) -> None:
    result = enrol(gallery, analyzer, "elder-1", [df / "img13.jpg", df / "img14.jpg"], rules=RULES)
    assert result.status == "enrolled" and result.added == 2
    assert all(v.ok for v in result.photos)
    assert gallery.snapshot.elders == ("elder-1",)
    assert result.templates == 2 and "enrol 3 photos" in result.message


def test_photos_added_later_count_towards_the_three_recommended(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    first = enrol(gallery, analyzer, "elder-1", [df / "img13.jpg", df / "img14.jpg"], rules=RULES)
    assert "2 in all" in first.message
    more = enrol(gallery, analyzer, "elder-1", [df / "img15.jpg"], rules=RULES)
    assert more.status == "enrolled" and more.added == 1 and more.templates == 3
    assert more.message == "1 template(s) added"


def test_each_photo_gets_a_verdict_with_a_reason(
    gallery: Gallery, analyzer: Analyzer, df: Path, tmp_path: Path, faces_dir: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 nothing")
    looking_up = faces_dir / "lfw-dev" / "images" / "Katie_Smith" / "Katie_Smith_0001.jpg"
    photos = [df / "img13.jpg", df / "couple.jpg", looking_up, broken, df / "img14.jpg"]
    result = enrol(gallery, analyzer, "elder-1", photos, rules=RULES)
    assert [v.reason for v in result.photos] == [None, "multiple_faces", "tilted", "corrupt", None]
    assert "pitch" in result.photos[2].detail
    # a new elder: a photo that could not be used may be hers beside somebody else's photos
    assert result.status == "refused" and "must all be usable" in result.message
    assert gallery.snapshot.elders == ()
    again = enrol(gallery, analyzer, "elder-1", [photos[0], photos[4]], rules=RULES)
    assert again.status == "enrolled" and again.added == 2
    later = enrol(gallery, analyzer, "elder-1", photos, rules=RULES)  # checked against hers
    assert later.status == "enrolled" and later.added == 0 and later.already == 2


@pytest.mark.parametrize("width", [120, 30])
def test_a_new_elder_whose_own_photo_cannot_be_used_is_not_enrolled_from_somebody_elses(
    gallery: Gallery, analyzer: Analyzer, df: Path, tmp_path: Path, width: int
) -> None:
    """Her photo is too small to be checked, or so small no face is found in it; two photos
    of somebody else would otherwise be enrolled under her id."""
    image = cv2.imread(str(df / "img8.jpg"))
    small = tmp_path / "small.png"
    scale = width / image.shape[1]
    face = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = np.full((960, 1280, 3), 96, np.uint8)  # taken from across the room
    frame[: face.shape[0], : face.shape[1]] = face
    cv2.imwrite(str(small), frame if width < 60 else face)
    result = enrol(
        gallery, analyzer, "elder-1", [small, df / "img13.jpg", df / "img14.jpg"], rules=RULES
    )
    assert result.photos[0].reason == ("too_small" if width == 120 else "no_face")
    assert result.status == "refused" and gallery.snapshot.elders == ()


def test_photos_of_two_people_are_refused(gallery: Gallery, analyzer: Analyzer, df: Path) -> None:
    result = enrol(gallery, analyzer, "elder-1", [df / "img13.jpg", df / "img8.jpg"], rules=RULES)
    assert result.status == "refused"
    assert result.message == "the photos do not show the same person"
    assert gallery.snapshot.elders == ()


def test_two_photos_each_of_two_people_are_refused(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    """Each photo matches another, but not all one person: keeping them would let the
    second person be charged as the elder."""
    photos = [df / "img13.jpg", df / "img20.jpg", df / "img14.jpg", df / "img21.jpg"]
    result = enrol(gallery, analyzer, "elder-1", photos, rules=RULES)
    assert (result.status, result.message) == ("refused", "the photos show more than one person")
    assert gallery.snapshot.elders == ()


def test_photos_added_later_must_show_the_elder_already_enrolled(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    """A mix-up on the platform (another elder's photo sent under this id) adds nobody."""
    enrol(gallery, analyzer, "elder-1", [df / "img13.jpg", df / "img14.jpg"], rules=RULES)
    for photos in ([df / "img20.jpg"], [df / "img20.jpg", df / "img21.jpg"]):
        other = enrol(gallery, analyzer, "elder-1", photos, rules=RULES)
        assert other.status == "refused" and other.message.startswith(
            "the photos do not show the elder enrolled under this id"
        )
        assert {v.reason for v in other.photos} == {"does_not_match_other_photos"}
    mixed = enrol(gallery, analyzer, "elder-1", [df / "img15.jpg", df / "img20.jpg"], rules=RULES)
    assert mixed.status == "enrolled" and mixed.added == 1
    assert [v.reason for v in mixed.photos] == [None, "does_not_match_other_photos"]
    assert gallery.snapshot.count("elder-1") == 3
    # an elder enrolled decades ago still takes a recent photo (she scores 0.49-0.50)
    enrol(gallery, analyzer, "elder-2", [df / "img12.jpg"], rules=RULES)
    assert enrol(gallery, analyzer, "elder-2", [df / "img3.jpg"], rules=RULES).added == 1


def _copy(src: Path, dst: Path, *, crop: float = 0.0, quality: int = 70) -> Path:
    """The same picture as a platform or a phone passes it on: cropped, re-encoded."""
    image = cv2.imread(str(src))
    h, w = image.shape[:2]
    dy, dx = int(h * crop), int(w * crop)
    cv2.imwrite(str(dst), image[dy : h - dy, dx : w - dx], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return dst


def _grey_copy(src: Path, dst: Path) -> Path:
    """The same picture scanned from a black-and-white print, 400 pixels across."""
    image = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    scale = 400 / max(image.shape)
    cv2.imwrite(str(dst), cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    return dst


def _mirrored_copy(src: Path, dst: Path) -> Path:
    """The same picture as a phone's front camera saves it: mirrored."""
    cv2.imwrite(str(dst), cv2.imread(str(src))[:, ::-1])
    return dst


COPIES: list[tuple[str, Callable[[Path, Path], Path]]] = [
    ("img1.jpg", _copy),
    ("img43.jpg", _grey_copy),  # 0.89 against the photo
    ("img27.jpg", _mirrored_copy),  # 0.90
]


@pytest.mark.parametrize("case", COPIES, ids=["re-encoded", "grey-and-smaller", "mirrored"])
def test_a_picture_sent_twice_does_not_outvote_the_elders_own(
    gallery: Gallery,
    analyzer: Analyzer,
    df: Path,
    tmp_path: Path,
    case: tuple[str, Callable[[Path, Path], Path]],
) -> None:
    """Someone else's photo uploaded as two of the three views is one picture, not two: it
    must not become the elder while her own photo is dropped."""
    stranger, copied = case
    copy = copied(df / stranger, tmp_path / "left.jpg")
    photos = [df / stranger, copy, df / "img18.jpg"]
    result = enrol(gallery, analyzer, "elder-1", photos, rules=RULES)
    assert (result.status, result.message) == ("refused", "the photos do not show the same person")
    assert gallery.snapshot.elders == ()
    alone = enrol(gallery, analyzer, "elder-1", [df / stranger, copy], rules=RULES)
    assert alone.status == "enrolled"


def test_a_new_elders_photos_that_do_not_all_match_are_refused(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    """Nothing says which group is the elder: the odd photo out may be her own, beside two
    of somebody else's (two real photos, or two copies of one that score under 0.85 against
    each other). Refused, the odd photo named; sent alone, her photos enrol."""
    photos = [df / "img13.jpg", df / "img14.jpg", df / "img8.jpg"]
    result = enrol(gallery, analyzer, "elder-1", photos, rules=RULES)
    assert (result.status, result.message) == (
        "refused",
        "the photos do not all show the same person",
    )
    assert [v.reason for v in result.photos] == [None, None, "does_not_match_other_photos"]
    someone_else = [df / "img1.jpg", df / "img20.jpg", df / "img21.jpg"]
    assert enrol(gallery, analyzer, "elder-1", someone_else, rules=RULES).status == "refused"
    assert gallery.snapshot.elders == ()
    alone = enrol(gallery, analyzer, "elder-1", photos[:2], rules=RULES)
    assert alone.status == "enrolled" and alone.added == 2


def test_someone_already_enrolled_under_another_id_is_flagged(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    enrol(gallery, analyzer, "elder-1", [df / "img20.jpg"], rules=RULES)
    again = enrol(gallery, analyzer, "elder-2", [df / "img21.jpg"], rules=RULES)
    assert again.status == "flagged"
    assert [e for e, _ in again.conflicts] == ["elder-1"]
    assert "elder-2" not in gallery.snapshot.elders
    confirmed = enrol(
        gallery, analyzer, "elder-2", [df / "img21.jpg"], rules=RULES, allow_similar=True
    )
    assert confirmed.status == "enrolled"
    (pair,) = gallery.confusables()
    assert (pair.elder_a, pair.elder_b) == ("elder-1", "elder-2")
    assert pair.score >= RULES.accept_threshold


def test_elder_ids_are_checked(gallery: Gallery, analyzer: Analyzer, df: Path) -> None:
    # "E1024\n" would pass a regex ending in $ and be a second E1024 that erasure misses
    for bad in ("Zhang San", "E1024\n", "", "E" * 129):
        with pytest.raises(BadElderId, match="elder id"):
            enrol(gallery, analyzer, bad, [df / "img1.jpg"], rules=RULES)
    assert gallery.snapshot.elders == ()


def test_a_picture_already_enrolled_is_not_stored_twice(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    enrol(gallery, analyzer, "elder-1", [df / "img13.jpg", df / "img14.jpg"], rules=RULES)
    again = enrol(
        gallery,
        analyzer,
        "elder-1",
        [df / "img14.jpg", df / "img15.jpg", df / "img15.jpg"],
        rules=RULES,
    )
    assert again.status == "enrolled" and again.added == 1 and again.already == 2
    assert again.templates == 3 and gallery.snapshot.count("elder-1") == 3
    assert again.message == "1 template(s) added, 2 already enrolled"


def test_photos_sent_as_bytes_are_judged_like_files(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    left = (df / "img14.jpg").read_bytes()
    photos = [
        Photo.data("front", (df / "img13.jpg").read_bytes()),
        Photo.data("cut off", left[: len(left) // 2]),
        Photo.data("left", left),
    ]
    result = enrol(gallery, analyzer, "elder-1", photos, rules=RULES)
    assert [(v.name, v.reason) for v in result.photos] == [
        ("front", None),
        ("cut off", "truncated"),
        ("left", None),
    ]
    assert (result.status, result.added) == ("refused", 0)  # a new elder's must all be usable


def test_the_look_alike_register_counts_photos_enrolled_earlier(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    enrol(gallery, analyzer, "elder-1", [df / "img20.jpg"], rules=RULES)
    enrol(gallery, analyzer, "elder-2", [df / "img21.jpg"], rules=RULES, allow_similar=True)
    assert [(p.elder_a, p.elder_b) for p in gallery.confusables()] == [("elder-1", "elder-2")]
    seen = assess_photo(analyzer, df / "img13.jpg").embedding
    assert seen is not None
    more = learn(gallery, "elder-2", seen, rules=RULES, decision="d-1")
    assert more.status == "enrolled"  # img13 alone resembles nobody; img21 still does
    assert [(p.elder_a, p.elder_b) for p in gallery.confusables()] == [("elder-1", "elder-2")]


def test_a_confirmed_face_is_learned_within_limits(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    probe = assess_photo(analyzer, df / "img3.jpg").embedding  # as the counter saw her
    assert probe is not None
    assert learn(gallery, "elder-1", probe, rules=RULES, decision="d-1").message.startswith(
        "not enrolled"
    )
    enrol(gallery, analyzer, "elder-1", [df / "img12.jpg"], rules=RULES)
    learned = learn(gallery, "elder-1", probe, rules=RULES, decision="d-1")
    assert learned.status == "enrolled" and learned.added == 1 and learned.templates == 2
    # the same face is not taught to a second elder: it would be accepted as the first
    enrol(gallery, analyzer, "elder-2", [df / "img8.jpg"], rules=RULES)
    other = learn(gallery, "elder-2", probe, rules=RULES, decision="d-1")
    assert other.status == "flagged" and [e for e, _ in other.conflicts] == ["elder-1"]
    gallery.add("elder-1", _faces(LEARN_UP_TO - 2, seed=3))
    # at the limit the oldest learned view gives way; the enrolled photos stay
    newer = learn(gallery, "elder-1", -probe, rules=RULES, decision="d-2")
    assert newer.status == "enrolled" and newer.replaced == "d-1"
    assert "replaces the face learned from d-1" in newer.message
    assert gallery.learned("elder-1") == ["d-2"] and newer.templates == LEARN_UP_TO
    reopened = Gallery.open(gallery.db_path, gallery.key_path, gallery.model_id)
    assert reopened.snapshot.count("elder-1") == LEARN_UP_TO
    # ten enrolled photos and nothing learned: nothing to give way
    gallery.add("elder-3", _faces(LEARN_UP_TO, seed=5))
    full = learn(gallery, "elder-3", probe, rules=RULES, decision="d-3")
    assert full.status == "refused" and f"at most {LEARN_UP_TO}" in full.message


def test_a_wrong_confirmation_is_undone_and_the_enrolled_photos_stay(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    enrol(gallery, analyzer, "elder-1", [df / "img12.jpg"], rules=RULES)
    enrol(gallery, analyzer, "elder-2", [df / "img8.jpg"], rules=RULES)
    enrolled = gallery.snapshot.templates_of("elder-1").copy()
    her = assess_photo(analyzer, df / "img3.jpg").embedding
    assert her is not None
    assert learn(gallery, "elder-1", her, rules=RULES, decision="d-1").status == "enrolled"
    # a face halfway to elder-2 (cosine 0.5: a candidate for both) confirmed as elder-1
    two = gallery.snapshot.templates_of("elder-2")[0]
    other = np.random.default_rng(4).standard_normal(128).astype(np.float32)
    other -= (other @ two) * two
    other /= np.linalg.norm(other)
    between = (0.5 * two + np.sqrt(0.75) * other).astype(np.float32)
    wrong = learn(gallery, "elder-1", between, rules=RULES, decision="d-2")
    assert wrong.status == "enrolled" and [e for e, _ in wrong.confusable] == ["elder-2"]
    assert gallery.learned("elder-1") == ["d-1", "d-2"]
    assert gallery.look_alikes("elder-1") == ("elder-2",)

    assert unlearn(gallery, "elder-1", rules=RULES, decision="d-2") == 1
    assert gallery.snapshot.count("elder-1") == 2 and gallery.learned() == ["d-1"]
    assert gallery.confusables() == []  # worked out again without the wrong face
    assert unlearn(gallery, "elder-1", rules=RULES, decision="d-2") == 0  # asked again
    assert unlearn(gallery, "elder-2", rules=RULES) == 0  # nothing learned
    assert unlearn(gallery, "elder-1", rules=RULES) == 1  # all learned faces
    assert np.array_equal(gallery.snapshot.templates_of("elder-1"), enrolled)
    fresh = Gallery.open(gallery.db_path, gallery.key_path, gallery.model_id)
    assert np.array_equal(fresh.snapshot.templates_of("elder-1"), enrolled)
    assert fresh.snapshot.count("elder-2") == 1


class _PausedBeforeWriting(Gallery):
    """A gallery that runs ``meanwhile`` just before it writes templates: after every check
    an enrolment or a confirmation makes, the moment another process could slip in."""

    meanwhile: Callable[[], None] | None = None

    def add(self, *args: Any, **kwargs: Any) -> Written:
        if self.meanwhile is not None:
            self.meanwhile()
        return super().add(*args, **kwargs)


def _write_lock_free(db: Path) -> bool:
    probe = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def _as_another_process(
    db: Path, act: Callable[[], object], started: list[threading.Thread]
) -> None:
    """``act`` through its own connection, as another process would: at once when nobody holds
    the gallery's write lock, else on a thread of its own that waits for the lock."""
    if _write_lock_free(db):
        act()
        return
    thread = threading.Thread(target=act)
    thread.start()
    started.append(thread)


def test_a_wrong_confirmation_does_not_let_that_persons_photos_be_enrolled_as_hers(
    gallery: Gallery, analyzer: Analyzer, faces_dir: Path
) -> None:
    """Staff confirm a stranger as the elder (a mistake), then the platform sends that
    stranger's photos under her id (a mix-up): they matched the learned face and were stored
    as enrolled photos, which face.unlearn cannot take out, and the stranger was accepted as
    her from then on. Only her enrolled photos say who she is."""
    lfw = faces_dir / "lfw-dev" / "images"
    hers = sorted((lfw / "Renee_Zellweger").glob("*.jpg"))
    usable = [p for p in hers if assess_photo(analyzer, p).ok][:3]
    assert enrol(gallery, analyzer, "E1", usable, rules=RULES).status == "enrolled"
    stranger = lfw / "Nicole_Kidman"
    seen = assess_photo(analyzer, stranger / "Nicole_Kidman_0011.jpg").embedding
    assert seen is not None
    assert learn(gallery, "E1", seen, rules=RULES, decision="d-1").status == "enrolled"
    photos = [stranger / "Nicole_Kidman_0003.jpg", stranger / "Nicole_Kidman_0008.jpg"]
    mixed_up = enrol(gallery, analyzer, "E1", photos, rules=RULES)
    assert mixed_up.status == "refused"
    assert "do not show the elder enrolled under this id" in mixed_up.message
    assert gallery.snapshot.count("E1") == 4 and gallery.learned("E1") == ["d-1"]


def test_no_more_than_ten_photos_are_enrolled_per_elder(
    gallery: Gallery, analyzer: Analyzer, faces_dir: Path
) -> None:
    """Request after request of a few photos each grew an elder without limit: each photo is
    one more chance for a stranger to match her, and each had only to match one before it."""
    photos = sorted((faces_dir / "lfw-dev" / "images" / "Tony_Blair").glob("*.jpg"))
    usable = [p for p in photos if assess_photo(analyzer, p).ok][: ENROL_UP_TO + 1]
    assert len(usable) == ENROL_UP_TO + 1
    first = enrol(gallery, analyzer, "E1", usable[:5], rules=RULES)
    assert first.status == "enrolled" and first.added == 5
    over = enrol(gallery, analyzer, "E1", usable[5:], rules=RULES)
    assert over.status == "refused" and f"pass the {ENROL_UP_TO} kept per elder" in over.message
    assert gallery.snapshot.count("E1") == 5
    again = enrol(gallery, analyzer, "E1", [*usable[:5], *usable[5:ENROL_UP_TO]], rules=RULES)
    assert again.status == "enrolled" and gallery.snapshot.count("E1") == ENROL_UP_TO


def test_an_elder_erased_while_a_confirmation_is_being_learned_stays_erased(
    tmp_path: Path, analyzer: Analyzer, df: Path
) -> None:
    """Consent withdrawn (`gateway gallery remove`, another process) after the confirmation
    found the elder enrolled but before the face is written: the erased elder must not come
    back with the learned face."""
    db, key, model = tmp_path / "faces.db", tmp_path / "faces.key", analyzer.embedder.model_id
    gallery = _PausedBeforeWriting.open(db, key, model, create=True)
    enrol(gallery, analyzer, "elder-1", [df / "img12.jpg"], rules=RULES)
    probe = assess_photo(analyzer, df / "img3.jpg").embedding
    assert probe is not None
    erasing: list[threading.Thread] = []
    gallery.meanwhile = partial(_as_another_process, db, partial(erase, db, "elder-1"), erasing)
    learn(gallery, "elder-1", probe, rules=RULES, decision="d-1")
    for thread in erasing:
        thread.join()
    assert Gallery.open(db, key, model).snapshot.count("elder-1") == 0
    gallery.refresh_if_changed()
    assert gallery.snapshot.count("elder-1") == 0


def test_one_person_enrolled_under_two_ids_at_the_same_moment_is_flagged_once(
    tmp_path: Path, analyzer: Analyzer, df: Path
) -> None:
    """`gateway enroll` and a platform request (two processes, each with its own handle on the
    file) enrol one person under two ids at once: whichever writes second must see the other
    and be flagged, not slip past the look-alike check."""
    db, key, model = tmp_path / "faces.db", tmp_path / "faces.key", analyzer.embedder.model_id
    cli = _PausedBeforeWriting.open(db, key, model, create=True)
    platform = Gallery.open(db, key, model)
    results: dict[str, Enrolment] = {}

    def platform_enrols() -> None:
        results["elder-2"] = enrol(platform, analyzer, "elder-2", [df / "img21.jpg"], rules=RULES)

    waiting: list[threading.Thread] = []
    cli.meanwhile = partial(_as_another_process, db, platform_enrols, waiting)
    results["elder-1"] = enrol(cli, analyzer, "elder-1", [df / "img20.jpg"], rules=RULES)
    for thread in waiting:
        thread.join()
    assert sorted(r.status for r in results.values()) == ["enrolled", "flagged"]
    assert len(Gallery.open(db, key, model).snapshot.elders) == 1


def test_a_face_seen_before_an_erasure_is_not_learned_into_a_new_enrolment(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    """Consent withdrawn (`face.remove`) while staff still had her uncertain decision on screen,
    then the elder enrolled again under the same id: confirming the old decision must not carry
    the face seen before the erasure into the new enrolment. Photos added to an enrolment that
    was never erased do not stand in the way."""
    enrol(gallery, analyzer, "elder-1", [df / "img12.jpg"], rules=RULES)
    seen = assess_photo(analyzer, df / "img3.jpg").embedding
    assert seen is not None
    anchor = gallery.snapshot.anchor("elder-1")  # as the counter holds it with the decision
    assert anchor is not None

    erase(gallery.db_path, "elder-1")
    enrol(gallery, analyzer, "elder-1", [df / "img12.jpg"], rules=RULES)
    stale = learn(gallery, "elder-1", seen, rules=RULES, decision="d-1", anchor=anchor)
    assert stale.status == "refused" and "enrolled again" in stale.message
    assert gallery.learned("elder-1") == [] and gallery.snapshot.count("elder-1") == 1

    anchor = gallery.snapshot.anchor("elder-1")
    gallery.add("elder-1", _faces(1, seed=9))  # another photo of her, later
    fresh = learn(gallery, "elder-1", seen, rules=RULES, decision="d-2", anchor=anchor)
    assert fresh.status == "enrolled" and gallery.learned("elder-1") == ["d-2"]


def test_the_same_picture_is_never_enrolled_for_two_elders_whatever_staff_allow(
    gallery: Gallery, analyzer: Analyzer, df: Path, tmp_path: Path
) -> None:
    """Twins may look alike and staff may vouch for them; one photo is one person."""
    enrol(gallery, analyzer, "elder-1", [df / "img13.jpg"], rules=RULES)
    again = enrol(gallery, analyzer, "elder-2", [df / "img13.jpg"], rules=RULES, allow_similar=True)
    assert again.status == "flagged" and "the same picture is enrolled for elder-1" in again.message
    cropped = _copy(df / "img13.jpg", tmp_path / "cropped.jpg", crop=0.05)
    edited = enrol(gallery, analyzer, "elder-2", [cropped], rules=RULES, allow_similar=True)
    assert edited.status == "flagged" and "the same picture" in edited.message
    assert gallery.snapshot.count("elder-2") == 0


def test_photos_for_an_elder_whose_templates_cannot_be_read_are_refused(
    gallery: Gallery, analyzer: Analyzer, df: Path
) -> None:
    """Her rows no longer decrypt (a damaged card): nothing can say whether new photos show
    her, and taken for a new elder, a mix-up on the platform would add someone else under
    her id. Refused, with what to do; the others' enrolments go on."""
    enrol(gallery, analyzer, "elder-1", [df / "img1.jpg", df / "img2.jpg"], rules=RULES)
    with sqlite3.connect(gallery.db_path) as conn:
        conn.execute(
            "UPDATE templates SET ciphertext = zeroblob(length(ciphertext))"
            " WHERE elder_id = 'elder-1'"
        )
    conn.close()
    reopened = Gallery.open(gallery.db_path, gallery.key_path, gallery.model_id)
    assert reopened.damaged == ("elder-1",)
    mixed_up = enrol(reopened, analyzer, "elder-1", [df / "img13.jpg"], rules=RULES)
    assert mixed_up.status == "refused" and "cannot be read" in mixed_up.message
    assert reopened.snapshot.count("elder-1") == 0
    other = enrol(reopened, analyzer, "elder-2", [df / "img13.jpg"], rules=RULES)
    assert other.status == "enrolled"
