"""The counter pipeline frame by frame with real models: what each decision carries along."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.vision.analyze import Analyzer
from gateway.vision.audit import AuditFrames
from gateway.vision.camera import EMPTY_GREY, Frame
from gateway.vision.config import DecisionSection, VisionSection, unreachable
from gateway.vision.confirm import Confirmations
from gateway.vision.decide import Decision, Outcome, Policy
from gateway.vision.detect import Face
from gateway.vision.enroll import enrol, learn
from gateway.vision.errors import GalleryError
from gateway.vision.gallery import Gallery
from gateway.vision.images import fit_within, read_image
from gateway.vision.pipeline import CounterPipeline, DecisionEvent
from gateway.vision.still import StillGate

FPS = 15.0


@pytest.fixture(scope="module")
def two_people(faces_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    def photo(name: str) -> np.ndarray:
        return fit_within(read_image(faces_dir / "deepface" / name), 640)

    return photo("img1.jpg"), photo("img20.jpg")


def counter(analyzer: Analyzer, tmp_path: Path) -> tuple[CounterPipeline, AuditFrames, Gallery]:
    gallery = Gallery.open(tmp_path / "faces.db", tmp_path / "faces.key", "m", create=True)
    audit = AuditFrames(tmp_path / "audit", tmp_path / "faces.key", retention_days=1)
    policy = Policy.from_config(DecisionSection())
    return CounterPipeline(analyzer, gallery, policy, "counter-1", {}, audit=audit), audit, gallery


def enrolled(analyzer: Analyzer, gallery: Gallery, elder: str, photo: np.ndarray) -> None:
    embedding = analyzer.analyze(photo).embedding
    assert embedding is not None
    gallery.add(elder, [embedding])
    gallery.reload()


def show(pipeline: CounterPipeline, images: list[np.ndarray]) -> list[DecisionEvent]:
    out: list[DecisionEvent] = []
    for i, image in enumerate(images):
        out += pipeline.process(Frame(image, i / FPS, i))
    return out


def test_the_audit_frame_of_a_track_ended_by_the_next_person_shows_that_track(
    analyzer: Analyzer, tmp_path: Path, two_people: tuple[np.ndarray, np.ndarray]
) -> None:
    first, second = two_people
    pipeline, audit, gallery = counter(analyzer, tmp_path)
    enrolled(analyzer, gallery, "elder-2", second)
    # the first person is not enrolled and steps aside before the decision time; the second
    # steps straight up, which ends the first track
    ended, *_ = show(pipeline, [first] * 10 + [second] * 3)
    assert ended.decision.outcome is Outcome.UNKNOWN
    assert ended.event.data["audit_frame"] is True
    kept = cv2.imdecode(np.frombuffer(audit.export(ended.event.event_id), np.uint8), 1)
    assert kept.shape == first.shape
    assert float(np.mean(cv2.absdiff(kept, first))) < 3
    # its timings are those of its own frames, not of the empty or next person's frame
    assert {"detect", "embed", "search"} <= set(ended.event.data["timings_ms"])


def test_a_track_ended_by_the_gap_on_a_frame_of_two_people_keeps_its_own_frame(
    analyzer: Analyzer, tmp_path: Path, two_people: tuple[np.ndarray, np.ndarray], faces_dir: Path
) -> None:
    """At a Pi's few frames a second, the frame that crosses the 0.7 s gap may show two other
    people: the ended decision's audit frame is still its own person, never the bystanders."""
    first, second = two_people
    couple = fit_within(read_image(faces_dir / "deepface" / "couple.jpg"), 640)
    pipeline, audit, gallery = counter(analyzer, tmp_path)
    enrolled(analyzer, gallery, "elder-2", second)
    events = show(pipeline, [first] * 10)
    events += pipeline.process(Frame(couple, 10 / FPS + 0.8, 10))
    (ended,) = events
    assert ended.decision.outcome is Outcome.UNKNOWN and ended.event.data["audit_frame"]
    kept = cv2.imdecode(np.frombuffer(audit.export(ended.event.event_id), np.uint8), 1)
    assert kept.shape == first.shape
    assert float(np.mean(cv2.absdiff(kept, first))) < 3


def test_an_audit_frame_of_a_spoof_goes_with_the_erasure_of_the_elder_it_showed(
    analyzer: Analyzer, tmp_path: Path, faces_dir: Path
) -> None:
    """A spoof names nobody, yet its frame may be an elder's face (a photo of her, or she in
    backlight): the frame's header names the elders its frames came closest to, so that her
    erasure finds it. A frame with nobody searched in it (two faces) is not kept at all."""
    pipeline, audit, gallery = counter(analyzer, tmp_path)
    enrolled(analyzer, gallery, "elder-2", read_image(faces_dir / "antispoof" / "image_T1.jpg"))
    screen = fit_within(read_image(faces_dir / "antispoof" / "image_F2.jpg"), 640)
    couple = fit_within(read_image(faces_dir / "deepface" / "couple.jpg"), 640)
    (spoof,) = show(pipeline, [screen] * 40) + pipeline.flush()
    assert spoof.decision.outcome is Outcome.SPOOF and spoof.event.data["audit_frame"]
    assert "elder-2" not in str(spoof.event.data)  # named in the frame's header only
    (two,) = show(pipeline, [couple] * 5)
    assert two.decision.outcome is Outcome.MULTIPLE_FACES and not two.event.data["audit_frame"]
    assert audit.erase_elder("elder-2") == 1
    with pytest.raises(GalleryError, match="none kept"):
        audit.export(spoof.event.event_id)


def test_a_decision_is_recorded_when_its_audit_frame_cannot_be_written(
    analyzer: Analyzer, tmp_path: Path, two_people: tuple[np.ndarray, np.ndarray]
) -> None:
    elder, _ = two_people
    pipeline, audit, gallery = counter(analyzer, tmp_path)
    enrolled(analyzer, gallery, "elder-1", elder)
    shutil.rmtree(audit.folder)
    audit.folder.write_bytes(b"")  # the folder is gone, a file in its place: every write fails
    (accepted,) = show(pipeline, [elder] * 10)
    assert accepted.decision.outcome is Outcome.ACCEPTED
    assert accepted.decision.elder_id == "elder-1"
    assert accepted.event.data["audit_frame"] is False
    assert pipeline.counts["audit_frame_errors"] == 1


def test_an_elder_confirmed_by_staff_is_not_settled_again_when_the_counter_knows_her(
    analyzer: Analyzer, tmp_path: Path, faces_dir: Path
) -> None:
    """img12 and img3: one woman decades apart. The counter is unsure; staff settle her meal
    by hand and confirm who she was, and the counter learns her face. Still at the counter a
    moment later, she is recognised: the meal is not settled a second time."""
    df = faces_dir / "deepface"
    gallery = Gallery.open(
        tmp_path / "faces.db", tmp_path / "faces.key", analyzer.embedder.model_id, create=True
    )
    rules = DecisionSection()
    assert enrol(gallery, analyzer, "E3", [df / "img12.jpg"], rules=rules).status == "enrolled"
    confirmations = Confirmations(rules.confirm_within_s)
    pipeline = CounterPipeline(
        analyzer, gallery, Policy.from_config(rules), "counter-1", {}, confirmations=confirmations
    )
    her = fit_within(read_image(df / "img3.jpg"), 640)
    (unsure,) = show(pipeline, [her] * int(3 * FPS))
    assert unsure.decision.outcome is Outcome.UNCERTAIN
    held = confirmations.get(unsure.event.event_id)
    assert held is not None
    learned = learn(gallery, "E3", held.probe, rules=rules, decision=unsure.event.event_id)
    assert learned.status == "enrolled"
    confirmations.done(unsure.event.event_id, "E3")
    # no frame meanwhile (the camera is of no help, or lost): she is in cooldown all the same
    assert pipeline.idle(3.5) == [] and "E3" in pipeline.decider.cooldowns(3.5)

    away = np.full((480, 640, 3), EMPTY_GREY, np.uint8)  # she looked away for a second
    later = int(3 * FPS) + int(FPS)
    events: list[DecisionEvent] = []
    for i in range(int(3.6 * FPS), later):
        events += pipeline.process(Frame(away, i / FPS, i))
    for i in range(later, later + int(2 * FPS)):
        events += pipeline.process(Frame(her, i / FPS, i))
    assert events == []
    assert pipeline.decider.counters["cooldown_suppressed"] == 1


@pytest.mark.parametrize("fps", [15.0, 1.5])
def test_the_pace_the_counter_gets_of_a_face_says_whether_anyone_can_be_accepted(
    analyzer: Analyzer, tmp_path: Path, two_people: tuple[np.ndarray, np.ndarray], fps: float
) -> None:
    """At 1.5 frames a second, 3 frames never fit in the 1 s window: she is left uncertain
    every time, and the pace the counter measured is what says why."""
    her = two_people[1]
    pipeline, _, gallery = counter(analyzer, tmp_path)
    enrolled(analyzer, gallery, "elder-2", her)
    empty = np.full_like(her, EMPTY_GREY)
    frames = [empty] * 3 + [her] * 8
    decided = [
        d.decision.outcome
        for i, image in enumerate(frames)
        for d in pipeline.process(Frame(image, i / fps, i))
    ]
    pace = pipeline.pace.per_s()
    assert pace == pytest.approx(fps)  # the empty frames before her are no part of it
    problem = unreachable(DecisionSection(), pace, "the counter's pace")
    if fps == 15.0:
        assert decided == [Outcome.ACCEPTED] and problem is None
    else:
        assert decided == [Outcome.UNCERTAIN]
        assert problem is not None and "cannot fit in decision.window_s" in problem


def _cutout(analyzer: Analyzer, image: np.ndarray, ipd: float) -> np.ndarray:
    """The face of a photo cut out and scaled so its eyes are ``ipd`` px apart: a poster on
    the wall, or someone further back."""
    face = max(analyzer.detector.detect(image), key=lambda f: f.width)
    (cx, cy), w, h = face.center, face.width * 0.9, face.height * 0.9
    crop = image[max(0, int(cy - h)) : int(cy + h), max(0, int(cx - w)) : int(cx + w)]
    scale = ipd / float(np.linalg.norm(face.landmarks[1] - face.landmarks[0]))
    return cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def _ignoring(
    analyzer: Analyzer, gallery: Gallery, regions: list[tuple[float, float, float, float]]
) -> CounterPipeline:
    """A counter with the default policy and still-scene gate, ignoring ``regions``."""
    policy = Policy.from_config(DecisionSection())
    still = StillGate.from_config(VisionSection())
    return CounterPipeline(analyzer, gallery, policy, "counter-1", {}, still=still, ignore=regions)


def _watched(pipeline: CounterPipeline, frames: list[np.ndarray]) -> list[Decision]:
    """The decisions over ``frames``, each with a sensor's noise (seeded)."""
    rng = np.random.default_rng(1)
    out = []
    for i, frame in enumerate(frames):
        noisy = np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)
        out += [d.decision for d in pipeline.process(Frame(noisy, i / FPS, i))]
    return out


@pytest.mark.parametrize("ignored", [False, True])
def test_a_face_on_a_poster_behind_the_counter_can_be_ignored(
    analyzer: Analyzer, tmp_path: Path, faces_dir: Path, ignored: bool
) -> None:
    """A poster with a face on the wall behind the counter starts a track whenever nobody
    else is in view: a spoof after every visit (staff learn to ignore the alarm) and the
    detector on every frame all day. The installer names that part of the picture."""
    elder = read_image(faces_dir / "antispoof" / "image_T1.jpg")  # 480 x 640, live
    poster = _cutout(
        analyzer, fit_within(read_image(faces_dir / "deepface" / "img41.jpg"), 1280), 30
    )
    ph, pw = poster.shape[:2]

    def on_the_wall(frame: np.ndarray) -> np.ndarray:
        frame = frame.copy()
        frame[-ph - 5 : -5, -pw - 5 : -5] = poster  # bottom right
        return frame

    empty = on_the_wall(np.full_like(elder, EMPTY_GREY))
    visit = on_the_wall(elder)
    gallery = Gallery.open(tmp_path / "faces.db", tmp_path / "faces.key", "m", create=True)
    enrolled(analyzer, gallery, "E1", elder)
    pipeline = _ignoring(analyzer, gallery, [(0.6, 0.7, 1.0, 1.0)] if ignored else [])
    frames = [empty] * 45 + [visit] * 45 + [empty] * 150 + [visit] * 45 + [empty] * 45
    outcomes = [d.outcome for d in _watched(pipeline, frames)]
    if ignored:
        assert outcomes == [Outcome.ACCEPTED]  # the second visit is within her cooldown
        assert pipeline.counts["ignored_faces"] > 0 and pipeline.counts["still_skipped"] > 100
    else:
        assert outcomes.count(Outcome.SPOOF) >= 2 and Outcome.ACCEPTED in outcomes
        assert pipeline.counts["still_skipped"] == 0


def test_an_elder_standing_in_an_ignored_part_is_nobody_not_the_person_behind_her(
    analyzer: Analyzer, tmp_path: Path, faces_dir: Path
) -> None:
    """The TV on the back wall is ignored, and the elder at the counter stands in front of
    it. Her face was left out before the subject was picked, so the smaller face of the next
    person in the queue became the subject and was accepted in her place."""
    elder = read_image(faces_dir / "antispoof" / "image_T1.jpg")  # face centre (0.43, 0.35)
    behind = fit_within(read_image(faces_dir / "deepface" / "img1.jpg"), 640)
    queue = _cutout(analyzer, behind, 40)
    scene = elder.copy()
    scene[10 : 10 + queue.shape[0], 5 : 5 + queue.shape[1]] = queue  # top left
    gallery = Gallery.open(tmp_path / "faces.db", tmp_path / "faces.key", "m", create=True)
    enrolled(analyzer, gallery, "elder-X", elder)
    enrolled(analyzer, gallery, "elder-Y", behind)
    pipeline = _ignoring(analyzer, gallery, [(0.25, 0.0, 0.75, 0.5)])
    decided = _watched(pipeline, [scene] * 30 + [np.full_like(scene, EMPTY_GREY)] * 15)
    assert [d.elder_id for d in decided if d.outcome is Outcome.ACCEPTED] == []
    assert pipeline.counts["ignored_faces"] > 0


def test_an_ignored_face_as_large_as_the_subject_keeps_the_frame_ambiguous(
    analyzer: Analyzer, faces_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The elder stands off-centre in front of the ignored TV; the person behind her, smaller
    but nearer the middle, weighs more as the subject. Dropping the ignored faces left that
    person alone and recognised: two people in view must stay multiple_faces."""
    frame = read_image(faces_dir / "antispoof" / "image_T1.jpg")  # 480 x 640
    (real,) = [max(analyzer.detector.detect(frame), key=lambda f: f.width)]

    def placed(cx: float, cy: float, scale: float) -> Face:
        shift = np.array([cx, cy]) - np.array(real.center)
        centre = np.array(real.center)
        landmarks = (real.landmarks - centre) * scale + centre + shift
        x0, y0, x1, y1 = real.box
        box = (
            (x0 - centre[0]) * scale + cx,
            (y0 - centre[1]) * scale + cy,
            (x1 - centre[0]) * scale + cx,
            (y1 - centre[1]) * scale + cy,
        )
        return Face(box, landmarks, real.score)

    elder, behind = placed(400, 150, 1.0), placed(240, 300, 0.75)
    monkeypatch.setattr(analyzer.detector, "detect", lambda _image: [elder, behind])
    assert analyzer.analyze(frame).kind == "multiple_faces"
    in_front_of_the_tv = analyzer.analyze(frame, ignore=[(0.7, 0.0, 1.0, 0.4)])
    assert in_front_of_the_tv.kind == "multiple_faces" and in_front_of_the_tv.ignored == 1
