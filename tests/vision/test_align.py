from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.vision.align import (
    ALIGNED_SIZE,
    ARCFACE_TEMPLATE,
    align,
    beyond_edge,
    similarity_transform,
    warp,
)
from gateway.vision.analyze import Analyzer
from gateway.vision.detect import Face
from gateway.vision.images import fit_within, read_image
from gateway.vision.models import Manifest


def test_similarity_transform_recovers_a_known_one() -> None:
    angle, scale, shift = np.deg2rad(17), 2.3, np.array([40.0, -12.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = (ARCFACE_TEMPLATE - shift) @ np.linalg.inv(rot).T
    matrix = similarity_transform(src, ARCFACE_TEMPLATE)
    assert np.allclose(matrix[:, :2], rot)
    assert np.allclose(src @ matrix[:, :2].T + matrix[:, 2], ARCFACE_TEMPLATE)


def test_the_share_of_the_crop_beyond_the_edge_is_measured_in_frame_pixels() -> None:
    """Landmarks at twice the template's scale: the crop covers 224 x 224 frame pixels."""
    marks = ARCFACE_TEMPLATE * 2 + 100
    assert beyond_edge(marks, 424, 424) == 0.0  # the crop from (100, 100) to (324, 324)
    assert beyond_edge(marks, 212, 424) == 0.5  # cut down the middle
    assert beyond_edge(marks - [0, 156], 424, 424) == 0.25  # the top quarter above the frame


def _sf_row(face: Face) -> np.ndarray:
    x1, y1, x2, y2 = face.box
    row = [x1, y1, x2 - x1, y2 - y1, *face.landmarks.reshape(-1), face.score]
    return np.array([row], dtype=np.float32)


@pytest.fixture(scope="module")
def recognizer_sf(models_dir: Path, manifest: Manifest) -> cv2.FaceRecognizerSF:
    return cv2.FaceRecognizerSF.create(str(models_dir / manifest.recognizer.file), "")


def _golden_photos(faces_dir: Path) -> list[np.ndarray]:
    lfw = sorted((faces_dir / "lfw-dev" / "images").glob("*/*_0001.jpg"))[::300]
    return [read_image(p) for p in lfw] + [
        read_image(faces_dir / "antispoof" / "image_T1.jpg"),
        fit_within(read_image(faces_dir / "deepface" / "img1.jpg"), 640),
    ]


def test_alignment_matches_opencv_align_crop(
    analyzer: Analyzer, faces_dir: Path, recognizer_sf: cv2.FaceRecognizerSF
) -> None:
    photos = _golden_photos(faces_dir)
    assert len(photos) >= 12
    for image in photos:
        face = max(analyzer.detector.detect(image), key=lambda f: f.width)
        ours = warp(image, similarity_transform(face.landmarks, ARCFACE_TEMPLATE))
        theirs = recognizer_sf.alignCrop(image, _sf_row(face))
        assert ours.shape == theirs.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        # float64 here, float32 in OpenCV: a rounding step in a few pixels at most
        assert diff.max() <= 1
        assert diff.mean() < 0.002


def test_large_faces_are_shrunk_smoothly_before_the_warp(
    analyzer: Analyzer, faces_dir: Path, recognizer_sf: cv2.FaceRecognizerSF
) -> None:
    # a face 4x larger than the template: align() pre-shrinks with area averaging, so the crop
    # is close to alignCrop's but smoother (less aliasing: lower high-frequency energy)
    image = read_image(faces_dir / "antispoof" / "image_T1.jpg")
    big = cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    face = max(analyzer.detector.detect(big), key=lambda f: f.width)
    ours = align(big, face.landmarks)
    theirs = recognizer_sf.alignCrop(big, _sf_row(face))
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 8

    def detail(img: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())

    assert detail(ours) < detail(theirs)


def test_small_faces_are_warped_directly(analyzer: Analyzer, faces_dir: Path) -> None:
    image = read_image(sorted((faces_dir / "lfw-dev" / "images").glob("*/*_0001.jpg"))[0])
    face = max(analyzer.detector.detect(image), key=lambda f: f.width)
    direct = warp(image, similarity_transform(face.landmarks, ARCFACE_TEMPLATE))
    assert np.array_equal(align(image, face.landmarks), direct)
