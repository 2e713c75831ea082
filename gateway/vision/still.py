"""The still-scene gate: the detector is not run again on an empty counter that has not changed.

A camera watching an empty counter all day would otherwise run the face detector on every
frame (most of what an idle gateway with a camera costs). A frame is compared with the last
frame the detector saw and found nobody in, cell by cell: grey thumbnails whose cells are a
fixed number of frame pixels, so that a small face changes whole cells at any camera
resolution (a mean over the whole picture would dilute it more, the more pixels the camera
has). It is compared with that frame and not the previous one, so that a slow change (dusk, a
person edging into view) adds up until it counts. A frame in which any cell changed by
``threshold`` grey levels or more is analysed on that very frame; an unchanged picture still
goes to the detector once ``recheck_s`` has passed since it last looked, so a person it could
have missed is found within that bound. The gate never engages after a frame with any face in
it, however small or unusable: someone far away and approaching keeps being detected on every
frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from gateway.vision.config import VisionSection

# Cell side in frame pixels: 400 pixels average sensor noise and JPEG artefacts out, and the
# smallest usable face (24 px between the pupils) still covers several whole cells. Whole
# divisor of 640 x 480, 1280 x 720, 1920 x 1080 and 3840 x 2160.
CELL = 20


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The frame as a grey picture of CELL x CELL pixel averages. Rows and columns beyond the
    last whole cell are left out: a whole scale factor takes OpenCV's fast path."""
    h, w = image.shape[:2]
    rows, cols = max(1, h // CELL), max(1, w // CELL)
    whole = image[: min(h, rows * CELL), : min(w, cols * CELL)]
    small = cv2.resize(whole, (cols, rows), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest change of any one cell between two thumbnails, in grey levels (a frame of
    another size differs entirely)."""
    if a.shape != b.shape:
        return 255.0
    return float(cv2.minMaxLoc(cv2.absdiff(a, b))[1])


class StillGate:
    """Says which frames show the same empty scene the detector last found nobody in.
    ``threshold`` 0 turns it off: every frame is analysed."""

    def __init__(self, threshold: float, recheck_s: float) -> None:
        self.threshold = threshold
        self.recheck_s = recheck_s
        self._empty: tuple[np.ndarray, float] | None = None  # thumbnail and time of that frame
        self._looked: tuple[np.ndarray, np.ndarray] | None = None  # a frame skips() let through

    @classmethod
    def from_config(cls, section: VisionSection) -> StillGate:
        return cls(section.still_threshold, section.still_recheck_s)

    def skips(self, image: np.ndarray, t: float) -> bool:
        """Whether the detector may skip this frame: it shows the empty scene it last saw, and
        looked at less than ``recheck_s`` ago. A thumbnail is made only when there is such a
        scene to compare with: never while someone is at the counter."""
        self._looked = None
        empty = self._empty
        if empty is None or t - empty[1] >= self.recheck_s:
            return False
        thumb = thumbnail(image)
        if difference(thumb, empty[0]) < self.threshold:
            return True
        self._looked = (image, thumb)
        return False

    def seen(self, image: np.ndarray, t: float, nobody: bool) -> None:
        """What the detector made of a frame: only a frame without any face is a reference."""
        looked, self._looked = self._looked, None
        if not nobody or self.threshold <= 0:
            self._empty = None
            return
        thumb = looked[1] if looked is not None and looked[0] is image else thumbnail(image)
        self._empty = (thumb, t)
