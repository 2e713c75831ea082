from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.vision.analyze import Analyzer
from gateway.vision.images import read_image
from gateway.vision.liveness import LIVE_CLASS, expanded_box

# Silent-Face-Anti-Spoofing's published verdicts on its own sample photos
PUBLISHED = {
    "image_F1.jpg": ("spoof", 0.73),  # printed photo held to the camera
    "image_F2.jpg": ("spoof", 0.82),  # face on a phone screen
    "image_T1.jpg": ("live", 0.99),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_verdicts_are_reproduced(analyzer: Analyzer, faces_dir: Path, name: str) -> None:
    image = read_image(faces_dir / "antispoof" / name)
    (face,) = analyzer.detector.detect(image)
    result = analyzer.liveness.check(image, face.box)
    verdict, published_score = PUBLISHED[name]
    assert result.live == (verdict == "live")
    assert (result.label == LIVE_CLASS) == (verdict == "live")
    # our boxes are RetinaFace-mnet's, not upstream's RetinaFace-caffe: scores move a little
    assert result.score >= min(published_score, 0.7)
    expected_live = result.live_score >= 0.5
    assert expected_live == (verdict == "live")


@given(
    x=st.floats(-50, 700),
    y=st.floats(-50, 500),
    w=st.floats(1, 800),
    h=st.floats(1, 600),
    scale=st.sampled_from([2.7, 4.0]),
)
def test_expanded_box_stays_inside_the_frame(
    x: float, y: float, w: float, h: float, scale: float
) -> None:
    x1, y1, x2, y2 = expanded_box((x, y, x + w, y + h), scale, 640, 480)
    assert 0 <= x1 <= x2 <= 639
    assert 0 <= y1 <= y2 <= 479
