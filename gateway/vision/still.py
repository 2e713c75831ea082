"""The still-scene gate: the detector is not run again on an empty counter that has not changed.

A camera watching an empty counter all day would otherwise run the face detector on every
frame (most of what an idle gateway with a camera costs). A frame is compared with the last
frame the detector saw and found nobody in, by the mean absolute difference of small grey
thumbnails: against that frame and not the previous one, so that a slow change (dusk, a
person edging into view) adds up until it counts. Whatever changes the picture more than
``threshold`` is analysed on that very frame; an unchanged picture still goes to the detector
once ``recheck_s`` has passed since it last looked, so a person it could have missed is
found within that bound. The gate never engages after a frame with any face in it, however
small or unusable: someone far away and approaching keeps being detected on every frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from gateway.vision.config import VisionSection

# 20 x 20 pixel cells of a 640 x 480 frame: sensor noise averages out, a face at the counter
# still covers several cells
THUMBNAIL = (32, 24)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The frame as a tiny grey picture (area-averaged, so noise cancels out)."""
    small = cv2.resize(image, THUMBNAIL, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails, in grey levels."""
    return float(cv2.mean(cv2.absdiff(a, b))[0])


class StillGate:
    """Says which frames show the same empty scene the detector last found nobody in.
    ``threshold`` 0 turns it off: every frame is analysed."""

    def __init__(self, threshold: float, recheck_s: float) -> None:
        self.threshold = threshold
        self.recheck_s = recheck_s
        self._empty: tuple[np.ndarray, float] | None = None  # thumbnail and time of that frame

    @classmethod
    def from_config(cls, section: VisionSection) -> StillGate:
        return cls(section.still_threshold, section.still_recheck_s)

    def look(self, image: np.ndarray) -> np.ndarray | None:
        """The frame's thumbnail, for ``seen`` once the detector has looked at it; None when
        the gate is off (nothing to remember)."""
        return thumbnail(image) if self.threshold > 0 else None

    def unchanged(self, thumb: np.ndarray, t: float) -> bool:
        """Whether the detector may skip this frame: it shows the empty scene it last saw,
        and looked at less than ``recheck_s`` ago."""
        empty = self._empty
        return (
            empty is not None
            and t - empty[1] < self.recheck_s
            and difference(thumb, empty[0]) < self.threshold
        )

    def seen(self, thumb: np.ndarray | None, t: float, nobody: bool) -> None:
        """What the detector made of a frame: only a frame without any face is a reference."""
        self._empty = (thumb, t) if nobody and thumb is not None else None
