from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from gateway.vision.analyze import Analyzer, AnalyzerSettings
from gateway.vision.config import VisionSection
from gateway.vision.images import fit_within, read_image
from gateway.vision.models import Models

# live, printed photo, phone screen, a crowd, two people, one person
PHOTOS = [
    "antispoof/image_T1.jpg",
    "antispoof/image_F1.jpg",
    "antispoof/image_F2.jpg",
    "deepface/selfie-many-people.jpg",
    "deepface/couple.jpg",
    "deepface/img1.jpg",
]


def _liveness_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("liveness")}


def test_liveness_alongside_gives_the_same_analysis_as_in_turn(
    models: Models, vision_cfg: VisionSection, faces_dir: Path
) -> None:
    serial = Analyzer(
        models,
        AnalyzerSettings.from_config(vision_cfg.model_copy(update={"liveness_alongside": False})),
    )
    alongside = Analyzer(
        models,
        AnalyzerSettings.from_config(vision_cfg.model_copy(update={"liveness_alongside": True})),
    )
    images = [read_image(faces_dir / p) for p in PHOTOS]
    images.append(fit_within(images[-1], 80))  # too small to judge: no liveness at all
    before = _liveness_threads()
    for image in images:
        a, b = serial.analyze(image), alongside.analyze(image)
        assert (a.kind, a.reason, a.faces) == (b.kind, b.reason, b.faces)
        assert (a.embedding is None) == (b.embedding is None)
        if a.embedding is not None and b.embedding is not None:
            np.testing.assert_array_equal(a.embedding, b.embedding)
        assert a.liveness == b.liveness
        assert ("liveness" in a.timings) == ("liveness" in b.timings) == (a.liveness is not None)
    assert [serial.analyze(i).liveness is not None for i in images] == [
        True,
        True,
        True,
        False,
        False,
        True,
        False,
    ]
    assert len(_liveness_threads() - before) == 1  # one thread, reused for every frame
    alongside.close()
    assert _liveness_threads() == before


@pytest.mark.parametrize(
    ("cores", "threads", "configured", "expected"),
    [
        (4, 2, None, True),  # a Pi 4 at the default two threads per inference
        (2, 2, None, False),  # the models would fight for the cores
        (2, 1, None, True),
        (4, 2, False, False),  # the installer's word wins
        (1, 1, True, True),
    ],
)
def test_liveness_runs_alongside_only_with_cores_to_spare(
    monkeypatch: pytest.MonkeyPatch,
    cores: int,
    threads: int,
    configured: bool | None,
    expected: bool,
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    section = VisionSection(threads=threads, liveness_alongside=configured)
    assert AnalyzerSettings.from_config(section).liveness_alongside is expected
