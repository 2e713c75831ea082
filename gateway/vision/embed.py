"""Face embeddings: aligned 112x112 crops to L2-normalised vectors compared by cosine.

Preprocessing comes from the manifest (for MobileFaceNet: RGB, /255, ImageNet mean and std).
MODELS.md shows why it must be exact: OpenCV's ``FaceRecognizerSF.feature()`` feeds raw pixels
to this model and LFW accuracy falls from 99 % to 64 %.
"""

from __future__ import annotations

import numpy as np

from gateway.vision.models import ModelSpec
from gateway.vision.runtime import Session


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit: np.ndarray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


class Embedder:
    def __init__(self, session: Session, spec: ModelSpec) -> None:
        self.session = session
        self.spec = spec
        self.model_id = spec.model_id

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(self.spec.tensor(aligned))[:1]
        return l2_normalise(out.reshape(-1))
