from __future__ import annotations

import logging
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.sync.service import service_state
from gateway.vision.camera import (
    CameraError,
    CameraReader,
    EndOfStream,
    ImageFolder,
    Lockstep,
    OpenCVCapture,
    _reason,
    open_feed,
    open_source,
)
from gateway.vision.config import CameraSection, shown_source, source_holds_secret
from gateway.vision.images import fit_within, read_image
from tests.support.deadpeer import Silent
from tests.support.netcam import CameraServer, NetworkCamera
from tests.support.rtspcam import RtspCamera


@pytest.fixture
def photo_folder(tmp_path: Path, faces_dir: Path) -> Path:
    folder = tmp_path / "replay"
    folder.mkdir()
    for name in ("img1.jpg", "img2.jpg"):
        shutil.copyfile(faces_dir / "deepface" / name, folder / name)
    return folder


def test_a_folder_replays_each_photo_then_an_empty_scene(photo_folder: Path) -> None:
    cfg = CameraSection(fps=10, replay_hold_s=0.5, replay_gap_s=0.3)
    feed = Lockstep(ImageFolder(photo_folder, cfg), cfg.fps, cfg.stall_s)
    feed.start()
    frames = []
    while (frame := feed.next_frame(0.1)) is not None:
        frames.append(frame)
    assert feed.ended and feed.state == "ended"
    assert len(frames) == 2 * (5 + 3)
    assert [f.seq for f in frames] == list(range(1, 17))
    assert frames[3].t == pytest.approx(0.4)
    shapes = {f.image.shape for f in frames}
    assert all(max(s[:2]) <= 640 for s in shapes)  # fitted to the camera's frame size
    assert np.all(frames[5].image == frames[5].image.flat[0])  # the empty scene


def test_unusable_photos_are_counted_and_skipped(photo_folder: Path) -> None:
    (photo_folder / "img0_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0broken")
    (photo_folder / "img1_half.jpg").write_bytes((photo_folder / "img1.jpg").read_bytes()[:5000])
    cfg = CameraSection(fps=10, replay_hold_s=0.2, replay_gap_s=0.0)
    source = ImageFolder(photo_folder, cfg)
    feed = Lockstep(source, cfg.fps, cfg.stall_s)
    feed.start()
    count = 0
    while feed.next_frame(0.1) is not None:
        count += 1
    assert count == 4
    assert source.bad_files == 2
    assert feed.stats.failed_reads == 2  # one each, not one for every frame of its hold


def test_a_run_of_unusable_photos_does_not_start_a_live_replay_over(
    photo_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each unusable photo cost its whole hold of frames without one: five in a row outlasted
    stall_s, the camera was lost and reopened at photo 1, and the photos after them were
    never shown (nor did the replay end, nor the installer's identify)."""
    for n in range(5):
        (photo_folder / f"img1_{n}_empty.jpg").write_bytes(b"")
    cfg = CameraSection(fps=15, replay_hold_s=1.5, replay_gap_s=0.0, stall_s=2.0)
    reader = CameraReader(ImageFolder(photo_folder, cfg), cfg)
    reader.start()
    try:
        _wait(lambda: reader.ended)
    finally:
        reader.stop()
    assert reader.state == "ended" and reader.stats.reopens == 0
    assert reader.stats.frames == 2 * 22  # img1 and img2, each held 1.5 s
    assert caplog.text.count("replay: photo 2 is not usable") == 1


class CountedReads:
    """A source's reads, counted; ended after ``limit`` of them so a test cannot hang."""

    def __init__(self, source: ImageFolder, limit: int) -> None:
        self.source, self.limit, self.reads = source, limit, 0
        self.name, self.paced = source.name, source.paced

    def open(self) -> None:
        self.source.open()

    def read(self) -> tuple[np.ndarray | None, float]:
        self.reads += 1
        if self.reads > self.limit:
            raise EndOfStream(self.name)
        return self.source.read()

    def close(self) -> None:
        self.source.close()


def test_a_looping_replay_whose_photos_all_went_bad_is_lost_not_read_round_forever(
    photo_folder: Path,
) -> None:
    cfg = CameraSection(fps=10, replay_hold_s=0.2, replay_gap_s=0.0, replay_loop=True)
    source = CountedReads(ImageFolder(photo_folder, cfg), limit=100_000)
    feed = Lockstep(source, cfg.fps, cfg.stall_s)
    feed.start()
    for photo in photo_folder.iterdir():
        photo.write_bytes(b"\xff\xd8\xff\xe0broken")  # replaced while it plays
    assert feed.next_frame(0.2) is None
    assert not feed.ended and feed.health()["state"] == "lost"
    assert source.reads == cfg.stall_s * cfg.fps  # 5 s of frames, then the caller's turn
    assert feed.stats.frames == 0 and feed.stats.failed_reads == source.reads


def test_an_unusable_photo_is_logged_once_however_often_the_replay_loops(
    photo_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (photo_folder / "img0_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0broken")
    cfg = CameraSection(fps=10, replay_hold_s=0.1, replay_gap_s=0.0, replay_loop=True)
    source = ImageFolder(photo_folder, cfg)
    source.open()
    for _ in range(3 * 4):  # four loops of three photos
        source.read()
    assert source.bad_files == 4
    assert caplog.text.count("replay: photo 1 is not usable") == 1


def test_a_looping_replay_shows_the_folder_as_it_is_at_each_loop_start(
    photo_folder: Path, faces_dir: Path
) -> None:
    cfg = CameraSection(fps=10, replay_hold_s=0.1, replay_gap_s=0.0, replay_loop=True)
    source = ImageFolder(photo_folder, cfg)
    source.open()
    first, _ = source.read()
    shutil.copyfile(faces_dir / "deepface" / "img3.jpg", photo_folder / "img3.jpg")
    (photo_folder / "img1.jpg").unlink()
    second, _ = source.read()  # this loop goes on as it was listed

    def shown(name: str) -> np.ndarray:
        return fit_within(read_image(faces_dir / "deepface" / name), source.max_side)

    assert first is not None and np.array_equal(first, shown("img1.jpg"))
    assert second is not None and np.array_equal(second, shown("img2.jpg"))
    third, fourth = source.read()[0], source.read()[0]  # the next loop, listed anew
    assert third is not None and np.array_equal(third, shown("img2.jpg"))
    assert fourth is not None and np.array_equal(fourth, shown("img3.jpg"))
    assert source.bad_files == 0


def test_a_replay_folder_taken_away_is_a_lost_camera_until_it_is_back(
    photo_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a stream of unusable photos with the camera said to be streaming."""
    cfg = CameraSection(
        fps=20, replay_hold_s=0.1, replay_gap_s=0.0, replay_loop=True, reopen_min_s=0.05
    )
    reader = CameraReader(ImageFolder(photo_folder, cfg), cfg)
    reader.start()
    aside = photo_folder.with_name("aside")
    try:
        _wait(lambda: reader.state == "streaming" and reader.stats.frames > 2)
        photo_folder.rename(aside)
        _wait(lambda: reader.state == "lost")
        error = str(reader.health()["last_error"])
        assert error.endswith(("replay: not a folder", "is gone")), error
        assert "not usable" not in caplog.text
        aside.rename(photo_folder)
        frames = reader.stats.frames
        _wait(lambda: reader.state == "streaming" and reader.stats.frames > frames + 2)
        assert reader.stats.source_errors == 0
    finally:
        reader.stop()


def test_a_link_to_a_photo_that_is_gone_is_skipped_and_the_replay_goes_on(
    photo_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Taken for the folder having changed, the link made the camera lost and the replay
    start over at every pass: the photo after it was never shown, and a replay that does not
    loop never ended."""
    (photo_folder / "img1b.jpg").symlink_to(photo_folder / "moved-away.jpg")
    cfg = CameraSection(fps=20, replay_hold_s=0.1, replay_gap_s=0.0, reopen_min_s=0.05)
    reader = CameraReader(ImageFolder(photo_folder, cfg), cfg)
    reader.start()
    try:
        _wait(lambda: reader.ended)
        assert reader.stats.frames == 2 * 2  # both photos, each held for two frames
        assert reader.stats.reopens == 0 and "lost" not in caplog.text
        assert "replay: photo 2 is not usable: unreadable" in caplog.text
    finally:
        reader.stop()


def test_the_reader_keeps_only_the_newest_frame(photo_folder: Path) -> None:
    cfg = CameraSection(fps=30, replay_hold_s=2, replay_gap_s=0, replay_loop=True)
    reader = CameraReader(ImageFolder(photo_folder, cfg), cfg)
    reader.start()
    try:
        first = reader.next_frame(timeout=5)
        assert first is not None
        _wait(lambda: reader.stats.frames > first.seq + 6)  # a slow consumer
        second = reader.next_frame(timeout=5)
        assert second is not None and second.seq > first.seq + 5
        assert reader.stats.dropped >= 5
        assert reader.health()["state"] == "streaming"
    finally:
        reader.stop()
    assert reader.state == "stopped"


class FakeUsbCamera:
    """A USB camera whose cable is pulled after a few frames and plugged back later."""

    paced = True
    name = "fake-usb"

    def __init__(self, frame: np.ndarray) -> None:
        self.frame = frame
        self.plugged = threading.Event()
        self.plugged.set()
        self.opens = 0
        self.reads_left = 5

    def open(self) -> None:
        if not self.plugged.is_set():
            raise CameraError("no such device /dev/video0")
        self.opens += 1

    def read(self) -> tuple[np.ndarray | None, float]:
        if not self.plugged.is_set():
            return None, 0.0
        self.reads_left -= 1
        if self.reads_left == 0:
            self.plugged.clear()
        return self.frame, 0.0

    def close(self) -> None:
        pass


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_a_lost_camera_is_reopened_with_backoff(faces_dir: Path) -> None:
    camera = FakeUsbCamera(read_image(faces_dir / "antispoof" / "image_T1.jpg"))
    cfg = CameraSection(fps=50, reopen_min_s=0.05, reopen_max_s=0.2, stall_s=0.1)
    reader = CameraReader(camera, cfg)
    reader.start()
    try:
        _wait(lambda: reader.state == "lost")
        seen = reader.stats.frames
        assert seen >= 4
        _wait(lambda: reader.stats.reopens >= 3)  # unplugged: open keeps failing
        assert reader.health()["last_error"] == "no such device /dev/video0"
        camera.reads_left = 1000
        camera.plugged.set()
        _wait(lambda: reader.state == "streaming" and reader.stats.frames > seen + 3)
        assert camera.opens == 2
        assert reader.next_frame(timeout=1) is not None
    finally:
        reader.stop()


class SilentCamera(FakeUsbCamera):
    """Opens fine, never delivers a frame (a hung driver)."""

    def read(self) -> tuple[np.ndarray | None, float]:
        return None, 0.0


def test_a_camera_that_returns_nothing_is_reported_lost(faces_dir: Path) -> None:
    camera = SilentCamera(np.zeros((1, 1, 3), np.uint8))
    cfg = CameraSection(fps=50, reopen_min_s=0.05, reopen_max_s=0.1, stall_s=0.2)
    reader = CameraReader(camera, cfg)
    reader.start()
    try:
        _wait(lambda: camera.opens >= 2)
        assert reader.health()["last_error"] == "no frame for 0.2 s"
        assert reader.stats.frames == 0 and reader.stats.failed_reads > 0
        assert reader.next_frame(timeout=0.05) is None
    finally:
        reader.stop()


def test_a_camera_that_connects_but_sends_nothing_is_never_shown_streaming(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An RTSP camera that accepts the connection and sends no picture: reopened again and
    again, it must not read as working (journal "ok") between its stalls."""
    camera = SilentCamera(np.zeros((1, 1, 3), np.uint8))
    cfg = CameraSection(fps=50, reopen_min_s=0.05, reopen_max_s=0.05, stall_s=0.2)
    reader = CameraReader(camera, cfg)
    seen = []
    with caplog.at_level(logging.WARNING, logger="gateway.vision.camera"):
        reader.start()
        try:
            while camera.opens < 4:
                seen.append(reader.health())
                time.sleep(0.005)
        finally:
            reader.stop()
    assert {h["state"] for h in seen} <= {"opening", "lost"}
    assert {service_state({"camera": h}) for h in seen} <= {"camera OPENING", "camera LOST"}
    assert all(h["last_frame_age_s"] is None for h in seen)  # no frame has ever come
    assert [r.getMessage() for r in caplog.records] == ["camera fake-usb lost: no frame for 0.2 s"]


def test_a_video_file_is_a_camera(tmp_path: Path, faces_dir: Path) -> None:
    video = tmp_path / "counter.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (480, 640))
    photo = read_image(faces_dir / "antispoof" / "image_T1.jpg")
    for _ in range(12):
        writer.write(photo)
    writer.release()
    feed = open_feed(CameraSection(source=str(video), fps=15), realtime=False)
    assert isinstance(feed, Lockstep) and isinstance(feed.source, OpenCVCapture)
    feed.start()
    frames = []
    while (frame := feed.next_frame(0.1)) is not None:
        frames.append(frame)
    assert len(frames) == 12 and frames[0].image.shape == (640, 480, 3)


@pytest.mark.parametrize("realtime", [False, True])
def test_a_damaged_frame_in_a_video_file_is_skipped_not_its_end(
    tmp_path: Path, faces_dir: Path, caplog: pytest.LogCaptureFixture, realtime: bool
) -> None:
    """One frame whose picture data is damaged (the container intact) ended the replay there,
    as if the file were over, without a word: the rest was never shown."""
    video = tmp_path / "counter.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (240, 320))
    photo = cv2.resize(read_image(faces_dir / "antispoof" / "image_T1.jpg"), (240, 320))
    for _ in range(30):
        writer.write(photo)
    writer.release()
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xd8"]
    for k in (10, 11):  # picture data overwritten, the frame's place in the file kept
        data[starts[k] + 2 : starts[k + 1] - 8] = bytes(starts[k + 1] - 8 - starts[k] - 2)
    video.write_bytes(bytes(data))
    feed = open_feed(CameraSection(source=str(video), fps=30), realtime=realtime)
    assert isinstance(feed, (Lockstep, CameraReader)) and isinstance(feed.source, OpenCVCapture)
    feed.start()
    try:
        deadline = time.monotonic() + 20
        while not feed.ended and time.monotonic() < deadline:
            feed.next_frame(0.1)
    finally:
        feed.stop()
    assert feed.ended and feed.stats.frames == 28 and feed.source.skipped == 2
    assert caplog.text.count("damaged frames in it are skipped") == 1


def test_a_video_file_claiming_more_frames_than_it_holds_ends_at_its_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its header says 100 million frames and it holds 30: the reader tried the missing ones
    one by one, for hours, and said the file had damaged frames."""
    video = tmp_path / "counter.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (160, 120))
    for i in range(30):
        writer.write(np.full((120, 160, 3), i * 8, np.uint8))
    writer.release()
    data = bytearray(video.read_bytes())
    for chunk, at in ((b"avih", 16), (b"strh", 32)):  # total frames, stream length
        i = data.find(chunk) + 8 + at
        data[i : i + 4] = struct.pack("<I", 100_000_000)
    video.write_bytes(bytes(data))
    source = open_source(str(video), CameraSection())
    source.open()
    frames = 0
    try:
        with pytest.raises(EndOfStream):
            while True:
                source.read()
                frames += 1
    finally:
        source.close()
    assert frames == 30 and "damaged frames" not in caplog.text


def test_sources_are_chosen_from_the_spec(tmp_path: Path) -> None:
    cfg = CameraSection()
    device = open_source("0", cfg)
    assert isinstance(device, OpenCVCapture) and device.target == 0 and not device.paced
    stream = open_source("rtsp://admin:secret@10.0.0.7:554/stream1", cfg)
    assert isinstance(stream, OpenCVCapture)
    assert stream.name == "rtsp://10.0.0.7:554/stream1"  # no credentials in logs or health
    assert isinstance(open_source(str(tmp_path), cfg), ImageFolder)
    with pytest.raises(CameraError, match="no such device"):
        open_source(str(tmp_path / "missing.mp4"), cfg)
    with pytest.raises(CameraError, match="no camera source"):
        open_source("", cfg)  # not the current folder replayed as photos


BY_ID = "/dev/v4l/by-id/usb-Generic_USB_Camera_200901010001-video-index0"


def test_a_usb_camera_by_its_stable_name_not_plugged_in_yet_is_lost_and_retried() -> None:
    cfg = CameraSection(source=BY_ID, reopen_min_s=0.05, reopen_max_s=0.1)
    reader = open_feed(cfg)
    assert isinstance(reader, CameraReader) and isinstance(reader.source, OpenCVCapture)
    assert reader.source.backend == cv2.CAP_V4L2 and not reader.source.paced
    reader.start()
    try:
        _wait(lambda: reader.stats.reopens >= 2)
        assert reader.health()["state"] == "lost"
        assert reader.health()["last_error"] == f"cannot open camera {BY_ID}"
        assert service_state({"camera": reader.health()}) == "camera LOST"  # the journal's line
    finally:
        reader.stop()


def test_a_usb_camera_read_waits_no_longer_than_stall_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV waits 10 s in each read of a hung V4L2 device unless told otherwise; an
    installer's own setting is kept."""
    monkeypatch.delenv("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", raising=False)
    camera = open_source(BY_ID, CameraSection(stall_s=2.5))
    with pytest.raises(CameraError):
        camera.open()
    assert os.environ["OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"] == "3"
    monkeypatch.setenv("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", "7")
    with pytest.raises(CameraError):
        camera.open()
    assert os.environ["OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"] == "7"


def test_a_usb_camera_not_there_leaves_only_the_gateways_own_line_in_the_journal(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Retried every 30 s for as long as it is unplugged: OpenCV's warning at each attempt
    would fill the journal; the gateway says it once."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)  # a new process's
    cfg = CameraSection(source=BY_ID, reopen_min_s=0.05, reopen_max_s=0.05)
    reader = open_feed(cfg)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="gateway.vision.camera"):
        reader.start()
        try:
            _wait(lambda: reader.stats.reopens >= 3)
        finally:
            reader.stop()
    assert capfd.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records] == [
        f"camera {BY_ID} lost: cannot open camera {BY_ID}"
    ]


class BlankFrameCamera(FakeUsbCamera):
    """Opens fine, then hands over zero-size frames only (a driver gone wrong)."""

    def __init__(self) -> None:
        super().__init__(np.zeros((0, 0, 3), np.uint8))
        self.reads = 0

    def read(self) -> tuple[np.ndarray | None, float]:
        self.reads += 1
        return self.frame, 0.0


def test_a_camera_sending_only_unusable_frames_is_lost_not_spun_on() -> None:
    camera = BlankFrameCamera()
    cfg = CameraSection(fps=50, reopen_min_s=0.05, reopen_max_s=0.1, stall_s=0.2)
    reader = CameraReader(camera, cfg)
    started = time.monotonic()
    reader.start()
    try:
        _wait(lambda: camera.opens >= 2)
        assert reader.health()["last_error"] == "no usable frame for 0.2 s"
        assert reader.stats.frames == 0 and reader.stats.bad_frames > 0
        # waits between reads as for a missing frame: about fps reads a second, not a spin
        assert camera.reads < 2 * cfg.fps * (time.monotonic() - started) + 10
    finally:
        reader.stop()


class FailingDriver(FakeUsbCamera):
    """A driver that raises from a read (not a CameraError) once, then works again."""

    def __init__(self, frame: np.ndarray) -> None:
        super().__init__(frame)
        self.reads_left = 10**9
        self.failures = 1

    def read(self) -> tuple[np.ndarray | None, float]:
        if self.opens == 1 and self.failures:
            self.failures -= 1
            raise OSError(5, "Input/output error")
        return self.frame, 0.0


def test_a_source_that_raises_is_reopened_and_the_reader_goes_on(faces_dir: Path) -> None:
    camera = FailingDriver(read_image(faces_dir / "antispoof" / "image_T1.jpg"))
    cfg = CameraSection(fps=50, reopen_min_s=0.05, reopen_max_s=0.1)
    reader = CameraReader(camera, cfg)
    reader.start()
    try:
        _wait(lambda: camera.opens >= 2 and reader.state == "streaming")
        assert reader.next_frame(timeout=1) is not None
        health = reader.health()
        assert health["source_errors"] == 1 and health["reopens"] == 1
        assert health["last_error"] == "OSError: [Errno 5] Input/output error"
    finally:
        reader.stop()


class HungDriver(FakeUsbCamera):
    """A read that blocks in the driver (a V4L2 device wedged by a failing USB hub)."""

    def __init__(self, frame: np.ndarray) -> None:
        super().__init__(frame)
        self.reading = threading.Event()
        self.unblock = threading.Event()
        self.closed_while_reading = False
        self.closed = False

    def read(self) -> tuple[np.ndarray | None, float]:
        self.reading.set()
        self.unblock.wait(10)
        self.reading.clear()
        return self.frame, 0.0

    def close(self) -> None:
        self.closed_while_reading |= self.reading.is_set()
        self.closed = True


def test_stop_never_releases_a_camera_a_read_is_still_inside(faces_dir: Path) -> None:
    camera = HungDriver(read_image(faces_dir / "antispoof" / "image_T1.jpg"))
    reader = CameraReader(camera, CameraSection(fps=50))
    reader.stop_wait_s = 0.2
    reader.start()
    _wait(camera.reading.is_set)
    reader.stop()
    assert reader.state == "stopped" and not camera.closed
    camera.unblock.set()
    _wait(lambda: camera.closed)
    assert not camera.closed_while_reading
    # the frame that read returned is not published: health must not say streaming again
    assert reader.state == "stopped" and reader.stats.frames == 0


def test_stop_does_not_wait_for_a_network_camera_that_never_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A network outage: the RTSP camera takes the connection and says nothing, so the open
    waits out connect_timeout_s. The stop leaves it to the daemon reader instead of holding
    the gateway's stop (systemd kills at 30 s) for the camera's sake."""
    camera = Silent()
    try:
        cfg = CameraSection(source=f"rtsp://127.0.0.1:{camera.port}/counter", connect_timeout_s=60)
        reader = open_feed(cfg)
        assert isinstance(reader, CameraReader)
        reader.start()
        thread = reader._thread
        assert thread is not None and camera.accepted.wait(10), "no attempt to open the camera"
        started = time.monotonic()
        reader.stop()
        assert time.monotonic() - started < 5, "stop() waited for the open"
        assert reader.state == "stopped"
    finally:
        camera.close()  # the open fails at once
    thread.join(10)  # and the reader ends, within the test
    assert not thread.is_alive()
    # the open that failed after the stop is no lost camera: health (which identify prints
    # after the stop) and the log said "lost" for a stage that had stopped
    assert reader.state == "stopped"
    assert not [r for r in caplog.records if " lost: " in r.getMessage()]


@pytest.fixture(params=[NetworkCamera, RtspCamera], ids=["http-mjpeg", "rtsp"])
def netcam(request: pytest.FixtureRequest, faces_dir: Path) -> Iterator[CameraServer]:
    photo = cv2.resize(read_image(faces_dir / "antispoof" / "image_T1.jpg"), (640, 480))
    rng = np.random.default_rng(7)
    pictures = []
    for _ in range(4):  # a sensor's noise, kept to one corner
        frame = photo.copy()
        frame[:16, :16] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        pictures.append(cv2.imencode(".jpg", frame)[1].tobytes())
    camera = request.param(pictures, "installer", "s3cret-Pw")
    camera.start()
    yield camera
    camera.stop()


def _netcam_reader(netcam: CameraServer, **settings: float) -> CameraReader:
    """A reader of the test camera that notices a hang or a loss within a second."""
    given = {"stall_s": 1.0, "connect_timeout_s": 5.0, "reopen_min_s": 0.1, **settings}
    cfg = CameraSection(source=netcam.url("installer:s3cret-Pw"), **given)
    reader = open_feed(cfg)
    assert isinstance(reader, CameraReader)
    return reader


def _streaming_again(reader: CameraReader) -> Callable[[], bool]:
    seen = reader.stats.frames
    return lambda: reader.state == "streaming" and reader.stats.frames >= seen + 3


def test_a_network_camera_that_hangs_or_goes_away_is_reported_and_reopened(
    netcam: CameraServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reader = _netcam_reader(netcam, reopen_max_s=0.4)
    reader.start()
    try:
        _wait(lambda: reader.stats.frames >= 5)
        frame = reader.next_frame(timeout=1)
        assert frame is not None and frame.image.shape == (480, 640, 3)
        sent = cv2.imdecode(np.frombuffer(netcam.pictures[0], np.uint8), cv2.IMREAD_COLOR)
        assert np.abs(frame.image.astype(int) - sent).mean() < 1  # the picture, not noise

        netcam.sending.clear()  # hung: the connection stays open, nothing arrives
        _wait(lambda: reader.state == "lost")
        assert reader.health()["last_error"] == "no frame for 1 s"
        netcam.sending.set()
        _wait(_streaming_again(reader))

        netcam.stop()  # gone from the network
        _wait(lambda: reader.state == "lost")
        reopens = reader.stats.reopens
        _wait(lambda: reader.stats.reopens >= reopens + 2)  # keeps trying, with backoff
        netcam.start()  # back on the same address
        _wait(_streaming_again(reader))
    finally:
        reader.stop()
    health = reader.health()
    assert health["source"] == netcam.url("installer:s3cret-Pw").replace("installer:s3cret-Pw@", "")
    assert "s3cret" not in caplog.text and "s3cret" not in str(health)


def test_a_network_camera_stuck_on_one_picture_is_lost_until_the_picture_changes(
    netcam: CameraServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An encoder or driver that hangs may go on sending its last picture: the stream looks
    alive, but nobody at the counter is recognised. Staff must see the camera lost, and the
    stale picture must not be analysed as if someone were still standing there."""
    reader = _netcam_reader(netcam, frozen_s=1.0, reopen_max_s=0.2)
    with caplog.at_level(logging.WARNING, logger="gateway.vision.camera"):
        reader.start()
        try:
            _wait(lambda: reader.stats.frames >= 30)  # 2 s of a live picture: not frozen
            assert reader.state == "streaming" and reader.stats.freezes == 0

            netcam.frozen.set()
            _wait(lambda: reader.state == "lost")
            assert reader.health()["last_error"] == "the picture has not changed for 1 s"
            assert reader.stats.freezes == 1
            reopens = reader.stats.reopens
            _wait(lambda: reader.stats.reopens >= reopens + 2)  # reopened, still frozen
            reader.next_frame(timeout=0)
            assert reader.state == "lost" and reader.next_frame(timeout=0.5) is None

            netcam.stop()  # the stuck camera also drops off the network for a while
            _wait(lambda: reader.health()["last_error"].startswith("cannot open camera"))
            netcam.start()  # back, and still stuck: staff must read why, not the old outage
            _wait(lambda: reader.health()["last_error"] == "the picture has not changed for 1 s")
            assert reader.state == "lost" and reader.stats.freezes == 1

            netcam.frozen.clear()
            _wait(_streaming_again(reader))
            assert reader.next_frame(timeout=1) is not None
        finally:
            reader.stop()
    frozen = f"camera {reader.source.name} lost: the picture has not changed for 1 s"
    lost = [r.getMessage() for r in caplog.records]
    assert lost[0] == lost[-1] == frozen  # the outage between is logged as it comes


def test_an_http_camera_that_hangs_mid_picture_gives_no_stitched_frame(faces_dir: Path) -> None:
    """FFmpeg gives up on the read after stall_s and hands over the half it received, decoded
    over the picture before: the top of one person on another's body, analysed as a new frame
    while someone steps up. A read that ended by its timeout is no frame."""
    before = cv2.resize(read_image(faces_dir / "antispoof" / "image_T1.jpg"), (480, 640))
    half = cv2.resize(read_image(faces_dir / "deepface" / "img1.jpg"), (480, 640))
    pictures = []
    for i in range(3):  # a sensor's noise in one corner
        frame = before.copy()
        frame[:4, :4] = i * 70
        pictures.append(cv2.imencode(".jpg", frame)[1].tobytes())
    camera = NetworkCamera(pictures, "installer", "s3cret-Pw")
    camera.start()
    reader = _netcam_reader(camera, reopen_min_s=30.0)
    reader.start()
    try:
        _wait(lambda: reader.stats.frames >= 5)
        camera.pictures = [cv2.imencode(".jpg", half)[1].tobytes()]
        camera.cut.set()
        seen = []
        deadline = time.monotonic() + 10
        while reader.state != "lost" and time.monotonic() < deadline:
            if (frame := reader.next_frame(timeout=0.05)) is not None:
                seen.append(frame.image)
        assert reader.state == "lost"
        while (frame := reader.next_frame(timeout=0.2)) is not None:
            seen.append(frame.image)
    finally:
        reader.stop()
        camera.stop()
    top = slice(0, 200)
    assert seen and all(float(np.mean(cv2.absdiff(image[top], before[top]))) < 10 for image in seen)


class StuckFlakyCamera:
    """A live camera stuck on one picture whose stream also drops after every 0.3 s."""

    paced = False
    name = "rtsp://counter/stream"

    def __init__(self) -> None:
        self.picture = np.full((48, 64, 3), 80, np.uint8)
        self.opened_at = 0.0

    def open(self) -> None:
        self.opened_at = time.monotonic()

    def read(self) -> tuple[np.ndarray | None, float]:
        time.sleep(0.02)
        if time.monotonic() - self.opened_at > 0.3:
            return None, 0.0
        return self.picture.copy(), 0.0

    def close(self) -> None:
        pass


def test_a_stuck_camera_whose_stream_also_drops_is_still_found_frozen() -> None:
    """Each reopen must not start the count again: the stream drops more often than
    ``frozen_s``, and the stale picture would be analysed for good."""
    cfg = CameraSection(fps=50, frozen_s=1.0, stall_s=0.1, reopen_min_s=0.05, reopen_max_s=0.1)
    reader = CameraReader(StuckFlakyCamera(), cfg)
    reader.start()
    try:
        _wait(lambda: reader.stats.freezes == 1)
        assert reader.health()["last_error"] == "the picture has not changed for 1 s"
        published = reader.next_frame(timeout=0)
        assert reader.next_frame(timeout=1.0) is None  # not analysed any more
        assert reader.state == "lost" and published is not None
    finally:
        reader.stop()


def test_a_network_camera_refusing_the_password_is_reported_lost(netcam: CameraServer) -> None:
    cfg = CameraSection(source=netcam.url("installer:wrong"), reopen_min_s=0.1, reopen_max_s=0.2)
    reader = open_feed(cfg)
    reader.start()
    try:
        _wait(lambda: reader.stats.reopens >= 2)
        assert netcam.refused >= 2
        health = reader.health()
        assert health["state"] == "lost" and health["frames"] == 0
        assert health["last_error"] == "cannot open camera " + netcam.url("x").replace("x@", "")
    finally:
        reader.stop()


def test_a_camera_password_never_reaches_the_log_or_health() -> None:
    """Some cameras take it in the userinfo, others (XMEye-style) in the path or query."""
    cfg = CameraSection()
    for url in (
        "rtsp://admin:Secr3t@10.0.0.9:554/stream1",
        "rtsp://10.0.0.9:554/user=admin&password=Secr3t&channel=1&stream=0.sdp",
        "http://10.0.0.9/video.cgi?user=admin&pwd=Secr3t",
        # typed into the config as set on the camera, not percent-encoded
        "rtsp://admin:Se/cr3t@10.0.0.9/live",
        "rtsp://admin:12#Secr3t@10.0.0.9:554/Streaming/Channels/101",
        "RTSP://admin:Secr3t/99@10.0.0.9/live",
    ):
        source = open_source(url, cfg)
        assert "Secr3t" not in source.name and "cr3t" not in source.name
        assert source.name.startswith(url.split(":")[0].lower() + "://10.0.0.9")
        reason = _reason(OSError(f"cannot open {url}: timed out"))
        assert "Secr3t" not in reason and "cr3t" not in reason


def test_a_mistyped_stream_address_is_refused_without_its_password() -> None:
    """An address the gateway cannot open (a scheme mistyped, "rtps://") is refused at start,
    and the error is logged at every retry: it must not quote the password."""
    with pytest.raises(CameraError) as err:
        open_source("rtps://admin:Secr3t@10.0.0.5/stream", CameraSection())
    assert "Secr3t" not in str(err.value) and "10.0.0.5/stream" in str(err.value)


def test_an_address_missing_a_slash_or_its_scheme_never_shows_its_password() -> None:
    """`rtsp:/admin:...@host` still opens as a stream, and was shown whole in health (sent
    to the platform) and in every retry's log line; a config holding one, readable by every
    user, passed the check that refuses `rtsp://admin:...@host`."""
    for address in (
        "rtsp:/admin:Secr3t@10.0.0.7/live",
        "rtsp:\\\\admin:Secr3t@10.0.0.7/live",
        "rtsp//admin:Secr3t@10.0.0.7/live",
        "admin:Secr3t@10.0.0.7:554/live",
        "rtsp:/10.0.0.7/user=admin&password=Secr3t",
    ):
        shown = shown_source(address)
        assert "Secr3t" not in shown and "10.0.0.7" in shown, shown
        assert source_holds_secret(address)
    for path in ("/dev/v4l/by-id/usb-046d_C270-video-index0", "0", "/srv/replay", "v.mp4"):
        assert shown_source(path) == path and not source_holds_secret(path)
