from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.vision.analyze import Analyzer
from gateway.vision.detect import nms, priors
from gateway.vision.images import fit_within, read_image


@pytest.mark.parametrize(("height", "width"), [(256, 320), (320, 320), (224, 160)])
def test_priors_match_the_network_outputs(analyzer: Analyzer, height: int, width: int) -> None:
    detector = analyzer.detector
    loc, conf, landm = detector.session.run(np.zeros((1, 3, height, width), np.float32))
    assert priors(height, width).shape == (loc.shape[1], 4) == (conf.shape[1], 4)
    assert landm.shape[2] == 10


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.8, 0.9, 0.7]), 0.4) == [1, 2]


@pytest.mark.parametrize(("photo", "count"), [("couple.jpg", 2), ("img1.jpg", 1)])
def test_faces_counted_in_real_photos(
    analyzer: Analyzer, faces_dir: Path, photo: str, count: int
) -> None:
    image = fit_within(read_image(faces_dir / "deepface" / photo), 640)
    assert len(analyzer.detector.detect(image)) == count


def test_selfie_finds_the_group(analyzer: Analyzer, faces_dir: Path) -> None:
    image = fit_within(read_image(faces_dir / "deepface" / "selfie-many-people.jpg"), 640)
    assert len(analyzer.detector.detect(image)) >= 5


def test_boxes_and_landmarks_are_in_frame_pixels(analyzer: Analyzer, faces_dir: Path) -> None:
    image = read_image(faces_dir / "antispoof" / "image_T1.jpg")
    (face,) = analyzer.detector.detect(image)
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]
    eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks
    assert eye_l[0] < nose[0] < eye_r[0]
    assert mouth_l[0] < mouth_r[0]
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks)
    assert face.score > 0.9


def test_an_empty_scene_has_no_face(analyzer: Analyzer) -> None:
    assert analyzer.detector.detect(np.full((480, 640, 3), 96, np.uint8)) == []
