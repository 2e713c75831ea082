from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.vision.analyze import Analyzer
from gateway.vision.config import VisionSection
from gateway.vision.evaluate import embed_photo, read_pairs


@pytest.fixture(scope="module")
def deepface_pairs(analyzer: Analyzer, faces_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = faces_dir / "deepface"
    pairs = read_pairs(folder / "master.csv", folder)
    vectors = {}
    for path in sorted({p for pair in pairs for p in (pair.a, pair.b)}):
        vector, _ = embed_photo(analyzer, path)
        assert vector is not None, path.name
        vectors[path] = vector
    scores = np.array([vectors[p.a] @ vectors[p.b] for p in pairs])
    return scores, np.array([p.same for p in pairs])


def test_embeddings_are_unit_vectors(analyzer: Analyzer, faces_dir: Path) -> None:
    vector, _ = embed_photo(analyzer, faces_dir / "antispoof" / "image_T1.jpg")
    assert vector is not None and vector.shape == (128,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_every_deepface_pair_is_decided_right_at_the_default_threshold(
    deepface_pairs: tuple[np.ndarray, np.ndarray],
) -> None:
    scores, same = deepface_pairs
    threshold = VisionSection().decision.verify_threshold
    assert (same.sum(), (~same).sum()) == (38, 262)
    wrong = np.flatnonzero((scores >= threshold) != same)
    assert wrong.size == 0, f"pairs {wrong.tolist()} wrong at {threshold}"
    # and with some room: the classes do not touch the threshold
    assert scores[same].min() > threshold + 0.05
    assert scores[~same].max() < threshold - 0.01
