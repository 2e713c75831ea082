"""Is this frame fit to identify someone from? Pure functions over landmarks and the crop.

The subject is the largest face near the centre of the frame. Another face of similar size
makes the frame ambiguous: at a counter that means two people are equally close, and the
gateway must not guess which of them is paying. Smaller faces further back (the queue) are
ignored. Pose is estimated from the five landmarks only, which is rough (a few degrees at best)
but enough to reject faces turned well away, which the recognizer handles badly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from gateway.vision.align import beyond_edge
from gateway.vision.config import QualitySection
from gateway.vision.detect import Face

# Nose tip depth in front of the eyes, and eye-to-mouth height, as fractions of the
# inter-pupil distance (average adult head); they turn landmark offsets into angles.
NOSE_DEPTH = 0.55
EYE_MOUTH = 1.15
# In the frontal ArcFace template: where the nose sits between the eye line and the mouth
# line, and how far below the eye line it is for the eyes' distance apart.
FRONTAL_NOSE = 0.494
FRONTAL_NOSE_DROP = 0.572


@dataclass(frozen=True)
class QualityLimits:
    """The gates; defaults and bounds live in the config (``[vision.quality]``)."""

    min_ipd_px: float
    max_beyond_edge: float
    max_yaw_deg: float
    max_pitch_deg: float
    max_roll_deg: float
    min_sharpness: float
    min_brightness: float
    max_brightness: float
    similar_face_ratio: float

    @classmethod
    def from_config(cls, section: QualitySection) -> QualityLimits:
        return cls(**section.model_dump())


@dataclass(frozen=True)
class Pose:
    yaw: float
    pitch: float
    roll: float


@dataclass(frozen=True)
class Quality:
    """Measurements of the subject face and the first gate it failed (None = usable)."""

    ipd_px: float
    pose: Pose
    sharpness: float | None = None
    brightness: float | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def face_size(face: Face) -> float:
    return math.sqrt(max(face.width, 0.0) * max(face.height, 0.0))


def inter_pupil(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[1] - landmarks[0]))


def pose(landmarks: np.ndarray) -> Pose:
    """Yaw, pitch and roll in degrees from eye, nose and mouth positions.

    Pitch has two estimates, each fooled in its own way: where the nose sits between the
    eye line and the mouth line (a broad smile lifts the mouth corners and reads as looking
    down by 30-40 degrees), and how far the nose drops below the eye line for the eyes'
    distance apart (a face turned aside narrows that distance and reads as tilted). A head
    that is really tilted moves both; a face is as tilted as the lesser says."""
    left_eye, right_eye, nose, left_mouth, right_mouth = landmarks.astype(np.float64)
    eye_vec = right_eye - left_eye
    roll = math.atan2(eye_vec[1], eye_vec[0])
    c, s = math.cos(-roll), math.sin(-roll)
    rot = np.array([[c, -s], [s, c]])
    eye_mid = (left_eye + right_eye) / 2
    mouth_mid = (left_mouth + right_mouth) / 2
    ipd = max(float(np.linalg.norm(eye_vec)), 1e-6)
    nose_r = rot @ (nose - eye_mid)
    mouth_r = rot @ (mouth_mid - eye_mid)
    yaw = math.atan2(nose_r[0] / ipd, NOSE_DEPTH)
    height = max(float(mouth_r[1]), 1e-6)
    by_mouth = math.atan2((nose_r[1] / height - FRONTAL_NOSE) * EYE_MOUTH, NOSE_DEPTH)
    # the drop is FRONTAL_NOSE_DROP cos(pitch) + NOSE_DEPTH sin(pitch), solved for pitch (a
    # linear reading of it would never pass ~22 degrees, however far the head bowed)
    reach = math.hypot(FRONTAL_NOSE_DROP, NOSE_DEPTH)
    drop = max(-1.0, min(1.0, nose_r[1] / ipd / reach))
    by_eyes = math.asin(drop) - math.atan2(FRONTAL_NOSE_DROP, NOSE_DEPTH)
    pitch = min(by_mouth, by_eyes, key=abs)
    return Pose(math.degrees(yaw), math.degrees(pitch), math.degrees(roll))


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian over the aligned face: low means blurred or out of focus."""
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def brightness(gray: np.ndarray) -> float:
    """Mean grey level of the central face region (cheeks, eyes, nose; not the background)."""
    h, w = gray.shape
    return float(gray[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean())


Region = tuple[float, float, float, float]  # left, top, right, bottom: fractions of the picture


def in_regions(face: Face, regions: Sequence[Region], width: int, height: int) -> bool:
    """Whether the face's centre lies in one of ``regions``: a poster or a TV behind the
    counter shows a face that is nobody at it."""
    cx, cy = face.center
    return any(
        left * width <= cx < right * width and top * height <= cy < bottom * height
        for left, top, right, bottom in regions
    )


@dataclass(frozen=True)
class Subject:
    face: Face | None
    rivals: int

    @property
    def ambiguous(self) -> bool:
        return self.rivals > 0


def pick_subject(faces: list[Face], width: int, height: int, limits: QualityLimits) -> Subject:
    """The largest face near the centre, and how many others are about as large. Only a face
    large enough to be judged (``min_ipd_px``) can be the subject while there is one: a small
    face in the middle of the picture is someone further back in the queue, and must not hide
    the elder at the counter."""
    if not faces:
        return Subject(None, 0)
    half_diag = math.hypot(width, height) / 2

    def weight(face: Face) -> float:
        cx, cy = face.center
        off_centre = math.hypot(cx - width / 2, cy - height / 2) / half_diag
        return face_size(face) * (1.0 - 0.5 * off_centre)

    near = [f for f in faces if inter_pupil(f.landmarks) >= limits.min_ipd_px]
    subject = max(near or faces, key=weight)
    size = face_size(subject)
    rivals = sum(
        1 for f in faces if f is not subject and face_size(f) >= limits.similar_face_ratio * size
    )
    return Subject(subject, rivals)


def geometry_gate(face: Face, limits: QualityLimits, frame: tuple[int, int]) -> Quality:
    """Gates that need only the landmarks, checked before any crop is made. ``frame``: its
    (width, height). A landmark outside it, or more than ``max_beyond_edge`` of the aligned
    crop beyond it, is a face the frame's edge cuts through (the detector places what is
    missing where it guesses): half a face must not be searched, nor become an elder's
    template. It does not draw strangers closer (measured on LFW), but it scores lower
    against its owner, and a template made from it would for good."""
    ipd = inter_pupil(face.landmarks)
    p = pose(face.landmarks)
    width, height = frame
    xs, ys = face.landmarks[:, 0], face.landmarks[:, 1]
    reason = None
    if ipd < limits.min_ipd_px:
        reason = "too_small"
    elif (
        xs.min() < 0
        or ys.min() < 0
        or xs.max() >= width
        or ys.max() >= height
        or beyond_edge(face.landmarks, width, height) > limits.max_beyond_edge
    ):
        reason = "cut_off"
    elif abs(p.yaw) > limits.max_yaw_deg:
        reason = "turned_away"
    elif abs(p.pitch) > limits.max_pitch_deg:
        reason = "tilted"
    elif abs(p.roll) > limits.max_roll_deg:
        reason = "rolled"
    return Quality(ipd_px=ipd, pose=p, reason=reason)


def crop_gate(geometry: Quality, aligned: np.ndarray, limits: QualityLimits) -> Quality:
    """Blur and exposure, measured on the aligned crop so they do not depend on face size."""
    gray = cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY)
    sharp = sharpness(gray)
    light = brightness(gray)
    reason = geometry.reason
    if reason is None:
        if light < limits.min_brightness:
            reason = "too_dark"
        elif light > limits.max_brightness:
            reason = "too_bright"
        elif sharp < limits.min_sharpness:
            reason = "blurred"  # after exposure: a dark crop has little contrast to measure
    return Quality(geometry.ipd_px, geometry.pose, sharp, light, reason)
