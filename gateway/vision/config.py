"""The ``[vision]`` section: camera, models, gates, decision policy, gallery and audit.

Only pydantic here: the config is loaded by every command, the face stage's heavy imports
(OpenCV, onnxruntime) happen only where it runs.

Thresholds are for the recognizer in ``models/manifest.toml``; they are what
``gateway eval --faces lfw-dev --errata eval/lfw-dev-errata.txt`` recommends for an FPIR of
1e-3 with 1,000 enrolled elders (see docs/faces.md). A site with many more elders, or another
recognizer, should run ``gateway eval`` on its own photos and set them here.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, model_validator

from gateway.configfile import Strict, check_order


def shown_source(target: str | int) -> str:
    """A camera address for logs and health that never carries stream credentials.

    Not ``urlsplit``: a password with a '/' or '#' in it, not percent-encoded (cameras' web
    pages accept them), would end its host part early and keep the password. Everything up to
    the last '@' after the scheme is dropped whatever it holds."""
    text = str(target)
    scheme, sep, rest = text.partition("://")
    if not sep:
        # a device or file path, or a URL written wrong (rtsp:/admin:pw@host, admin:pw@host),
        # which the camera library may still open: nothing that could be a password is shown
        text = re.sub(r"^.*@", "***@", text)
        return re.sub(r"[?#=;&].*$", "...", text)
    host, slash, path = rest.rpartition("@")[2].partition("/")
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    # some cameras take the password in the path ("/user=admin&password=..."): a path with
    # parameters is not shown, and neither is a query
    shown = "/..." if re.search(r"[=;&]", path) else slash + path
    return f"{scheme.lower()}://{host}{shown}"


def source_holds_secret(source: str) -> bool:
    """Whether the address holds what ``shown_source`` hides (a user and password, a path
    or query that may carry one): a secret in the config, like ``mqtt.password``."""
    scheme, sep, rest = source.partition("://")
    return shown_source(source) != (f"{scheme.lower()}://{rest}" if sep else source)


MOST_IGNORED = 0.5  # of the picture, for one ignore region


class CameraSection(Strict):
    source: str | None = Field(
        None,
        description='V4L2 device (any path under /dev/, best its /dev/v4l/by-id/ name; or "0"), '
        "rtsp:// or http:// (MJPEG) stream URL, video file, or a folder of photos replayed as "
        "frames. None: no camera, the face stage does not run. A URL with a user and password "
        "(or parameters, which may carry one) is a secret: the config must not be readable by "
        "every user.",
    )
    id: str = Field("counter-1", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Camera id.")
    width: int = Field(640, ge=160, le=3840, description="Frame width asked of the camera.")
    height: int = Field(480, ge=120, le=2160, description="Frame height asked of the camera.")
    fps: float = Field(15.0, gt=0, le=60, description="Frame rate asked of the camera or replay.")
    replay_hold_s: float = Field(
        1.5, gt=0, le=60, description="Image folder: how long each photo stays in view."
    )
    replay_gap_s: float = Field(
        1.0, ge=0, le=60, description="Image folder: empty frames between photos."
    )
    replay_loop: bool = Field(
        False, description="Image folder: start again at the end, with the photos it then holds."
    )
    reopen_min_s: float = Field(
        0.5, gt=0, le=60, description="First delay before reopening a lost camera; doubles."
    )
    reopen_max_s: float = Field(30.0, gt=0, le=600, description="Longest reopen delay.")
    stall_s: float = Field(
        5.0, gt=0, le=600, description="No frame for this long: the camera is reopened."
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Network camera: longest wait to connect to the stream."
    )
    frozen_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Live camera: the same picture, byte for byte, for this long is a frozen "
        "stream (a real sensor's noise changes every frame): the camera is reported lost and "
        "reopened, and stays lost until the picture changes. 0: not checked.",
    )

    ignore: list[tuple[float, float, float, float]] = Field(
        default_factory=list,
        max_length=16,
        description="Parts of the picture whose faces are nobody at the counter: a poster, a "
        "TV or a mirror behind it, which would otherwise be decided (spoof, or a stranger) "
        "after every visit and keep the still-scene gate from resting. Each [left, top, "
        "right, bottom] as fractions of the picture, 0 to 1: [0.7, 0.0, 1.0, 0.4] is its top "
        "right corner. A face whose centre lies in one is nobody (counted in health as "
        "ignored_faces): when it is the largest, most central face, the frame has no subject, "
        "so the elder's face must never be in one. At most half the picture each.",
    )

    @model_validator(mode="after")
    def _backoff(self) -> CameraSection:
        check_order(self.reopen_min_s, self.reopen_max_s, "reopen_min_s", "reopen_max_s")
        for left, top, right, bottom in self.ignore:
            shown = f"[{left:g}, {top:g}, {right:g}, {bottom:g}]"
            if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
                raise ValueError(
                    f"ignore: {shown} is not a part of the picture: [left, top, right, "
                    "bottom], fractions from 0 to 1, left < right and top < bottom"
                )
            if (right - left) * (bottom - top) > MOST_IGNORED:
                raise ValueError(
                    f"ignore: {shown} is more than half the picture: the elder at the counter "
                    "stands in it too, and would never be recognised; name only the poster's "
                    "or the screen's part"
                )
        return self


class QualitySection(Strict):
    min_ipd_px: float = Field(24.0, ge=8, description="Least inter-pupil distance, pixels.")
    max_beyond_edge: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Most of the aligned face crop (what the recognizer sees) that may lie "
        "beyond the picture's edge; more is a face the edge cuts through (cut_off). A face cut "
        "off just above the brows has a third of it beyond the edge.",
    )
    max_yaw_deg: float = Field(
        35.0, gt=0, le=90, description="Most head turn (left/right) from landmarks."
    )
    max_pitch_deg: float = Field(
        30.0, gt=0, le=90, description="Most head tilt (up/down) from landmarks."
    )
    max_roll_deg: float = Field(40.0, gt=0, le=90, description="Most in-plane head roll.")
    min_sharpness: float = Field(40.0, ge=0, description="Laplacian variance of the crop.")
    min_brightness: float = Field(
        40.0, ge=0, le=255, description="Darkest usable face crop (mean grey level)."
    )
    max_brightness: float = Field(
        220.0, ge=0, le=255, description="Brightest usable face crop (mean grey level)."
    )
    similar_face_ratio: float = Field(
        0.7,
        gt=0,
        le=1,
        description="A second face at least this fraction of the subject's size makes the "
        "frame ambiguous (multiple_faces).",
    )

    @model_validator(mode="after")
    def _brightness(self) -> QualitySection:
        # equal or crossed, no face crop could pass: the counter would never recognise anyone
        if self.max_brightness <= self.min_brightness:
            raise ValueError("max_brightness must be above min_brightness")
        return self


class DecisionSection(Strict):
    accept_threshold: float = Field(
        0.52, ge=-1, le=1, description="Least cosine score to accept an identity (1:N)."
    )
    margin: float = Field(
        0.02,
        ge=0.001,
        le=2,
        description="Least lead of the best elder over the runner-up (at least 0.001: a tie "
        "between two elders must not be accepted).",
    )
    candidate_threshold: float = Field(
        0.47, ge=-1, le=1, description="Elders scoring this or more are offered to staff."
    )
    verify_threshold: float = Field(
        0.41,
        ge=-1,
        le=1,
        description="1:1 same-person threshold (FMR 1e-4), for enrolment, and for the frames "
        "of a track whose face staff confirm: every two must reach it for it to be learned.",
    )
    calibrated_for_elders: int = Field(
        1000,
        ge=1,
        description="Gallery size the thresholds were calibrated for (`gateway eval --n`). "
        "More elders enrolled: a warning in the log, health and enrolment; recalibrate.",
    )
    k: int = Field(3, ge=1, le=30, description="Frames that must agree ...")
    n: int = Field(5, ge=1, le=60, description="... out of the last n usable frames.")
    window_s: float = Field(1.0, gt=0, le=30, description="... within this many seconds.")
    liveness_threshold: float = Field(
        0.5, gt=0, le=1, description="Least live score (never 0: a printed photo would pass)."
    )
    decide_within_s: float = Field(
        2.0, gt=0, le=60, description="Then say uncertain/unknown rather than keep waiting."
    )
    cooldown_s: float = Field(
        60.0,
        ge=10,
        le=43_200,
        description="No second acceptance of an elder this long after she was last seen "
        "accepted (or confirmed by staff). At most 12 h: longer, an elder seen one evening "
        "would go unrecognised at the next day's meals.",
    )
    confirm_within_s: float = Field(
        600.0,
        ge=0,
        le=3600,
        description="Staff may confirm an uncertain decision (face.confirm) this long; its face "
        "is held in memory only until then. 0: not at all.",
    )
    track_gap_s: float = Field(0.7, gt=0, le=30, description="No face this long ends a track.")
    same_person: float = Field(
        0.3,
        ge=-1,
        le=0.5,
        description="A face less similar than this to the track starts anew. At most 0.5: two "
        "photos of one person score as low as that, and near 1 every frame would start a new "
        "track, so nobody would ever be decided.",
    )
    ambiguity_frames: int = Field(
        3, ge=1, le=60, description="Frames with a second similar-size face before multiple_faces."
    )
    bridge_outage_s: float = Field(
        300.0,
        ge=0,
        le=3600,
        description="A camera outage (no frame for 2 s, or track_gap_s if longer: a USB camera "
        "replugged, an IP camera rebooting) up to this long does not end a decided track: her "
        "face after it (at accept_threshold) goes on with her track, and an elder accepted before "
        "counts as still there meanwhile, so she is not charged again. Longer, and a face after "
        "it is a new visit. 0: every outage ends the track.",
    )

    @model_validator(mode="after")
    def _order(self) -> DecisionSection:
        if self.k > self.n:
            raise ValueError("k must not exceed n")
        if self.candidate_threshold > self.accept_threshold:
            raise ValueError("candidate_threshold must not exceed accept_threshold")
        return self


class GallerySection(Strict):
    path: Path | None = Field(None, description="Default <data_dir>/faces.db.")
    key_file: Path | None = Field(None, description="Default <data_dir>/faces.key (mode 0600).")
    refresh_s: float = Field(5.0, gt=0, le=3600, description="Check for new enrolments.")

    def db_path(self, data_dir: Path) -> Path:
        return self.path if self.path is not None else data_dir / "faces.db"

    def key_path(self, data_dir: Path) -> Path:
        return self.key_file if self.key_file is not None else data_dir / "faces.key"


class AuditSection(Strict):
    enabled: bool = Field(
        False, description="Keep the frame of each decision (encrypted) for later review."
    )
    retention_days: float = Field(
        7.0, gt=0, le=365, description="Kept decision frames are deleted after this long."
    )
    dir: Path | None = Field(None, description="Default <data_dir>/audit.")

    def path(self, data_dir: Path) -> Path:
        return self.dir if self.dir is not None else data_dir / "audit"


class VisionSection(Strict):
    camera: CameraSection = CameraSection()
    models_dir: Path | None = Field(
        None,
        description="Model files; default $GATEWAY_MODELS_DIR, else the installation's models/ "
        "(beside its manifest, whatever the working directory).",
    )
    manifest: Path | None = Field(
        None, description="Default: the installation's models/manifest.toml."
    )
    threads: int = Field(
        1,
        ge=1,
        le=8,
        description=(
            "Threads per inference. A second gains these small models 0-20 %; one leaves a "
            "Pi 4's other cores to liveness alongside, the camera and the alarms."
        ),
    )
    liveness_alongside: bool | None = Field(
        None,
        description=(
            "Run liveness on a second thread while the face is embedded; default: when the "
            "machine has at least twice `threads` cores."
        ),
    )
    detector_input_side: int = Field(
        320, ge=128, le=1280, description="Longer side the detector runs at, pixels."
    )
    detector_score: float = Field(
        0.6,
        gt=0,
        le=0.95,
        description=(
            "Least detector confidence for a face. Real frontal faces at the smallest size the "
            "gates pass score under 0.95 one time in 20, under 0.99 one in 5, under 0.999 four "
            "in 5 (`no_face`)."
        ),
    )
    still_threshold: float = Field(
        12.0,
        ge=0,
        le=255,
        description=(
            "Still-scene gate: a frame in which no 20x20-pixel cell's mean grey level differs "
            "by this much from the last frame the detector found no face in is taken as that "
            "empty scene, without running the detector (the same at any camera resolution). "
            "Measured on real photos at 640x480 to 1920x1080: sensor noise (sigma up to 12), "
            "JPEG re-encoding (quality 60-80) and brightness jitter (+-2) changed a cell by at "
            "most 7, the smallest usable face stepping up at least 40, and at least 21 with its "
            "mean moved to the background's and its contrast halved. 0: off, every frame is "
            "analysed."
        ),
    )
    still_recheck_s: float = Field(
        1.0,
        gt=0,
        le=10,
        description=(
            "Still-scene gate: the detector still looks at an unchanged empty scene this often, "
            "the longest a face the gate missed waits to be found."
        ),
    )
    quality: QualitySection = QualitySection()
    decision: DecisionSection = DecisionSection()
    gallery: GallerySection = GallerySection()
    audit: AuditSection = AuditSection()

    @model_validator(mode="after")
    def _reachable(self) -> VisionSection:
        problem = unreachable(self.decision, self.camera.fps, f"camera.fps = {self.camera.fps}")
        if problem is not None:
            raise ValueError(problem)
        return self


def unreachable(d: DecisionSection, fps: float, at: str) -> str | None:
    """Why nobody can be accepted at ``fps`` frames a second (``at`` says whose), or None.
    k frames must fit in the window, and a track must outlast the time between two frames:
    otherwise every elder ends uncertain, or (each frame a track of its own) is never decided
    at all. Checked against the fps asked of the camera at start, and against the rate the
    counter really gets once it runs."""
    if (d.k - 1) / fps > d.window_s:
        return (
            f"decision.k = {d.k} frames cannot fit in decision.window_s = {d.window_s} s "
            f"at {at}: raise window_s or lower k"
        )
    if 1 / fps > d.track_gap_s:
        return (
            f"decision.track_gap_s = {d.track_gap_s} s is shorter than the time between "
            f"two frames at {at}: every frame would start a new track; raise track_gap_s or fps"
        )
    return None
