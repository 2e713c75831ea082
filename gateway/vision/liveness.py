"""Passive liveness from one frame: the MiniFASNet V2 + V1SE pair (Silent-Face-Anti-Spoofing).

Each model sees a crop around the detector box, expanded 2.7x and 4.0x so that the edges of a
printed photo or a phone screen are in view, resized to 80x80, BGR 0-255 without normalisation.
The two softmax outputs are summed as upstream does; class 1 is a live face. The live score is
that class's share of the sum (0..1). One frame is weak evidence; the decision asks for most
frames of a track to pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from gateway.vision.models import ModelSpec
from gateway.vision.runtime import Session

LIVE_CLASS = 1


def expanded_box(
    box: tuple[float, float, float, float], scale: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Upstream ``CropImage._get_new_box``: scale the box about its centre, shift it back
    inside the frame, and shrink the scale when the frame is too small for it."""
    x, y = box[0], box[1]
    bw, bh = max(box[2] - box[0], 1.0), max(box[3] - box[1], 1.0)
    scale = min((height - 1) / bh, (width - 1) / bw, scale)
    nw, nh = bw * scale, bh * scale
    cx, cy = x + bw / 2, y + bh / 2
    x1, y1, x2, y2 = cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2
    if x1 < 0:
        x2 -= x1
        x1 = 0
    if y1 < 0:
        y2 -= y1
        y1 = 0
    if x2 > width - 1:
        x1 -= x2 - width + 1
        x2 = width - 1
    if y2 > height - 1:
        y1 -= y2 - height + 1
        y2 = height - 1
    return int(x1), int(y1), int(x2), int(y2)


def crop(
    image: np.ndarray, box: tuple[float, float, float, float], scale: float, size: tuple[int, int]
) -> np.ndarray:
    height, width = image.shape[:2]
    x1, y1, x2, y2 = expanded_box(box, scale, width, height)
    return cv2.resize(image[y1 : y2 + 1, x1 : x2 + 1], size)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    result: np.ndarray = shifted / shifted.sum()
    return result


@dataclass(frozen=True)
class LivenessResult:
    live_score: float
    label: int
    score: float

    @property
    def live(self) -> bool:
        """Upstream's verdict: the class with the highest summed probability."""
        return self.label == LIVE_CLASS


class LivenessChecker:
    def __init__(self, pairs: list[tuple[Session, ModelSpec]]) -> None:
        self.pairs = pairs
        self.model_ids = [spec.model_id for _, spec in pairs]

    def check(self, image: np.ndarray, box: tuple[float, float, float, float]) -> LivenessResult:
        total = np.zeros(3, dtype=np.float64)
        for session, spec in self.pairs:
            assert spec.crop_scale is not None
            patch = crop(image, box, spec.crop_scale, spec.input_size)
            (logits,) = session.run(spec.tensor(patch))[:1]
            total += softmax(logits.reshape(-1).astype(np.float64))
        label = int(np.argmax(total))
        share = total / total.sum()
        return LivenessResult(
            live_score=float(share[LIVE_CLASS]), label=label, score=float(share[label])
        )
