"""The still-scene gate with real models and real photos: an empty counter that does not change
is not analysed frame after frame, and nobody who steps up is decided any later for it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.vision.analyze import Analyzer
from gateway.vision.camera import Frame
from gateway.vision.config import DecisionSection, VisionSection
from gateway.vision.decide import Outcome, Policy
from gateway.vision.gallery import Gallery
from gateway.vision.images import fit_within, read_image
from gateway.vision.pipeline import CounterPipeline, DecisionEvent
from gateway.vision.quality import inter_pupil
from gateway.vision.still import StillGate, difference, thumbnail

FPS = 16.0  # frame times exact in binary: a second is 16 frames


@pytest.fixture(scope="module")
def empty_counter(faces_dir: Path) -> np.ndarray:
    """A 640 x 480 scene without a face: the window front beside the woman in img22."""
    photo = read_image(faces_dir / "deepface" / "img22.jpg")
    scale = 720 / min(photo.shape[:2])
    scene = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(scene[:480, :640])


def head(analyzer: Analyzer, photo: Path, ipd_px: float) -> np.ndarray:
    """The head in a portrait (its face box grown 1.8 times), scaled to the given inter-pupil
    distance: someone at the counter, at the camera's distance for that size."""
    image = fit_within(read_image(photo), 1280)
    face = max(analyzer.detector.detect(image), key=lambda f: f.width)
    cx, cy = face.center
    w, h = face.width * 0.9, face.height * 0.9
    crop = image[
        max(0, int(cy - h)) : int(cy + h),
        max(0, int(cx - w)) : int(cx + w),
    ]
    scale = ipd_px / inter_pupil(face.landmarks)
    return cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def stepped_up(scene: np.ndarray, face: np.ndarray) -> np.ndarray:
    frame = scene.copy()
    y, x = (scene.shape[0] - face.shape[0]) // 2, (scene.shape[1] - face.shape[1]) // 2
    frame[y : y + face.shape[0], x : x + face.shape[1]] = face
    return frame


def camera(frames: list[np.ndarray], seed: int = 1, sigma: float = 4.0) -> list[np.ndarray]:
    """The frames as a camera sensor delivers them: each with its own noise."""
    rng = np.random.default_rng(seed)
    return [
        np.clip(f.astype(np.float32) + rng.normal(0, sigma, f.shape), 0, 255).astype(np.uint8)
        for f in frames
    ]


def counter(analyzer: Analyzer, gallery: Gallery, cfg: VisionSection) -> CounterPipeline:
    return CounterPipeline(
        analyzer,
        gallery,
        Policy.from_config(DecisionSection()),
        "counter-1",
        {},
        still=StillGate.from_config(cfg),
    )


def show(pipeline: CounterPipeline, images: list[np.ndarray]) -> list[DecisionEvent]:
    out: list[DecisionEvent] = []
    for i, image in enumerate(images):
        out += pipeline.process(Frame(image, i / FPS, i))
    return out


def between(hidden: np.ndarray, shown: np.ndarray, empty: np.ndarray) -> VisionSection:
    """A gate that takes the faces shown again after a hand hid them for no change, yet takes
    them stepping up for one (a hand far less unlike the face than here): what keeps their
    frames analysed is then only that the decider is not at rest."""
    hand = difference(thumbnail(hidden), thumbnail(shown))
    stepping_up = difference(thumbnail(empty), thumbnail(shown))
    assert hand + 10 < stepping_up  # sensor noise (sigma 4) moves a cell by less than 1
    return VisionSection(still_threshold=(hand + stepping_up) / 2)


@pytest.fixture
def gallery(tmp_path: Path, analyzer: Analyzer) -> Gallery:
    return Gallery.open(
        tmp_path / "faces.db", tmp_path / "faces.key", analyzer.embedder.model_id, create=True
    )


def test_an_unchanged_empty_counter_is_analysed_once_a_second(
    analyzer: Analyzer, gallery: Gallery, empty_counter: np.ndarray
) -> None:
    pipeline = counter(analyzer, gallery, VisionSection())
    assert show(pipeline, camera([empty_counter] * int(3 * FPS))) == []
    # the first frame, then one each second: at 0, 1 and 2 s
    assert pipeline.counts["frames"] == pipeline.counts["no_face"] == 3
    assert pipeline.counts["still_skipped"] == 3 * FPS - 3


@pytest.mark.parametrize("photo", ["img1.jpg", "img20.jpg", "img8.jpg", "img16.jpg"])
def test_the_smallest_usable_face_stepping_up_is_analysed_on_its_first_frame(
    analyzer: Analyzer, gallery: Gallery, empty_counter: np.ndarray, faces_dir: Path, photo: str
) -> None:
    """Inter-pupil distance 26 px, just above the least the gates use (24): the smallest
    change a face at the counter makes to the picture."""
    pipeline = counter(analyzer, gallery, VisionSection())
    face = head(analyzer, faces_dir / "deepface" / photo, 26)
    frames = camera([empty_counter] * 10 + [stepped_up(empty_counter, face)])
    show(pipeline, frames[:10])
    assert pipeline.counts["frames"] == 1 and pipeline.counts["still_skipped"] == 9
    pipeline.process(Frame(frames[10], 10 / FPS, 10))
    assert pipeline.counts["frames"] == 2
    assert pipeline.counts["face"] + pipeline.counts["poor_quality"] == 1


def test_a_small_face_at_full_hd_is_analysed_on_its_first_frame(
    analyzer: Analyzer, gallery: Gallery, empty_counter: np.ndarray, faces_dir: Path
) -> None:
    """A 1920 x 1080 camera: a face 26 px between the pupils is a sliver of the picture, yet
    its first frame goes to the detector, not the next recheck a second later."""
    scene = cv2.resize(empty_counter, (1920, 1440), interpolation=cv2.INTER_LINEAR)[180:1260]
    pipeline = counter(analyzer, gallery, VisionSection())
    face = head(analyzer, faces_dir / "deepface" / "img20.jpg", 26)
    frames = camera([scene] * 10 + [stepped_up(scene, face)])
    show(pipeline, frames[:10])
    assert pipeline.counts["frames"] == 1 and pipeline.counts["still_skipped"] == 9
    pipeline.process(Frame(frames[10], 10 / FPS, 10))
    assert pipeline.counts["frames"] == 2 and pipeline.counts["still_skipped"] == 9


def test_a_slow_change_adds_up_until_the_detector_looks(
    analyzer: Analyzer, gallery: Gallery, empty_counter: np.ndarray
) -> None:
    """Dusk, or someone edging into view: each frame barely differs from the one before, but
    the gate compares with the last frame the detector saw, not the previous one."""
    pipeline = counter(analyzer, gallery, VisionSection())
    dimming = [cv2.convertScaleAbs(empty_counter, beta=-2.0 * i) for i in range(int(FPS))]
    show(pipeline, dimming)
    assert pipeline.counts["frames"] >= 3  # within the second, not only once it has passed


def test_the_gate_changes_no_decision_and_re_engages_after_each_visit(
    analyzer: Analyzer, gallery: Gallery, empty_counter: np.ndarray, faces_dir: Path
) -> None:
    """An enrolled elder steps up and leaves, then a stranger does (their portraits fill the
    picture, as in a photo replay): with the gate on, the same decisions on the same frames as
    with the detector on every frame (gate off), the stranger's decided by the gap after her."""
    df = faces_dir / "deepface"
    embedding = analyzer.analyze(fit_within(read_image(df / "img20.jpg"), 640)).embedding
    assert embedding is not None
    gallery.add("elder-1", [embedding])
    gallery.reload()
    elder = fit_within(read_image(df / "img21.jpg"), 640)
    stranger = fit_within(read_image(df / "img1.jpg"), 640)
    second = int(FPS)
    frames = camera(
        [empty_counter] * 20
        + [elder] * second
        + [empty_counter] * 2 * second
        + [stranger] * 10
        + [empty_counter] * 2 * second
    )

    def decisions(cfg: VisionSection) -> tuple[list[tuple[Outcome, str | None, float]], int]:
        pipeline = counter(analyzer, gallery, cfg)
        out = [
            (e.decision.outcome, e.decision.elder_id, e.decision.t) for e in show(pipeline, frames)
        ]
        return out, pipeline.counts["frames"]

    gated, analysed = decisions(VisionSection())
    every, all_frames = decisions(VisionSection(still_threshold=0))
    assert [(o, e) for o, e, _ in gated] == [
        (Outcome.ACCEPTED, "elder-1"),
        (Outcome.UNKNOWN, None),
    ]
    assert gated == every
    assert all_frames == len(frames)  # off: the detector sees every frame
    # on: every frame with a face; in the first empty stretch its first frame and one a second
    # later; after each visit every frame until the gap (0.7 s) has ended the track, the 12th,
    # then one a second later
    assert analysed == 2 + second + 13 + 10 + 13


def test_a_face_hidden_for_a_moment_does_not_cut_its_track_short(
    analyzer: Analyzer, gallery: Gallery, empty_counter: np.ndarray, faces_dir: Path
) -> None:
    """An enrolled elder at the counter raises a hand to her face on her second frame: the
    detector finds nobody in that frame, and the frames after it, her face again, differ
    from it by less than the threshold. They are still analysed, as without the gate: she is
    accepted once, on the same frame, and no track of hers ends for want of frames."""
    df = faces_dir / "deepface"
    embedding = analyzer.analyze(fit_within(read_image(df / "img20.jpg"), 640)).embedding
    assert embedding is not None
    gallery.add("elder-1", [embedding])
    gallery.reload()
    face = head(analyzer, df / "img21.jpg", 30)
    h, w = face.shape[:2]
    hidden = cv2.rectangle(
        face.copy(), (int(w * 0.2), int(h * 0.3)), (int(w * 0.8), int(h * 0.8)), (120, 150, 190), -1
    )
    at_counter, hand_up = stepped_up(empty_counter, face), stepped_up(empty_counter, hidden)
    assert analyzer.analyze(hand_up).kind == "no_face"
    gate = between(hand_up, at_counter, empty_counter)
    second = int(FPS)
    frames = camera(
        [empty_counter] * 20
        + [at_counter]
        + [hand_up]
        + [at_counter] * 2 * second
        + [empty_counter] * 2 * second
    )

    def decisions(cfg: VisionSection) -> list[tuple[Outcome, str | None, float]]:
        pipeline = counter(analyzer, gallery, cfg)
        out = [
            (e.decision.outcome, e.decision.elder_id, e.decision.t) for e in show(pipeline, frames)
        ]
        assert pipeline.decider.counters["tracks_abandoned"] == 0
        return out

    gated = decisions(gate)
    assert len(gated) == 1
    assert gated == decisions(VisionSection(still_threshold=0))


def test_two_people_hidden_for_a_moment_are_reported_once(
    analyzer: Analyzer, gallery: Gallery, empty_counter: np.ndarray, faces_dir: Path
) -> None:
    """Two people side by side at the counter both raise a hand to their faces for a frame:
    the detector finds nobody there, and the frames after it, both faces again, hardly differ
    from it. They are still analysed, as without the gate: the pair is one ``multiple_faces``
    decision, not a second one a second later."""
    df = faces_dir / "deepface"
    pair = [head(analyzer, df / photo, 28) for photo in ("img20.jpg", "img16.jpg")]

    def side_by_side(faces: list[np.ndarray]) -> np.ndarray:
        frame = empty_counter.copy()
        for face, x in zip(faces, (150, 380), strict=True):
            y = (480 - face.shape[0]) // 2
            frame[y : y + face.shape[0], x : x + face.shape[1]] = face
        return frame

    def hand_up(face: np.ndarray) -> np.ndarray:
        h, w = face.shape[:2]
        return cv2.rectangle(
            face.copy(), (w // 4, int(h * 0.35)), (w * 3 // 4, int(h * 0.7)), (120, 150, 190), -1
        )

    both, hidden = side_by_side(pair), side_by_side([hand_up(face) for face in pair])
    assert analyzer.analyze(both).kind == "multiple_faces"
    assert analyzer.analyze(hidden).kind == "no_face"
    second = int(FPS)
    frames = camera(
        [empty_counter] * 20
        + [both] * second
        + [hidden]
        + [both] * 2 * second
        + [empty_counter] * 3 * second
    )

    def decisions(cfg: VisionSection) -> list[tuple[Outcome, float]]:
        pipeline = counter(analyzer, gallery, cfg)
        return [(e.decision.outcome, e.decision.t) for e in show(pipeline, frames)]

    every = decisions(VisionSection(still_threshold=0))
    assert [o for o, _ in every] == [Outcome.MULTIPLE_FACES]
    assert decisions(between(hidden, both, empty_counter)) == every


def test_a_camera_that_changes_resolution_is_analysed_at_once(empty_counter: np.ndarray) -> None:
    """A camera reconnected at another size (its thumbnail has other cells): the new frame is
    a change, not an error and not a skip."""
    gate = StillGate.from_config(VisionSection())
    gate.seen(empty_counter, 0.0, nobody=True)
    larger = cv2.resize(empty_counter, (1280, 960), interpolation=cv2.INTER_LINEAR)
    assert not gate.skips(larger, 0.1)
    assert gate.skips(empty_counter, 0.2)
