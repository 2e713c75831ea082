"""Audit frames leave on time by the wall clock and by running time, whichever comes first."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from gateway.cli import main
from gateway.clock import ClockSync
from gateway.config import StoreSection
from gateway.keys import create_key
from gateway.store import Store
from gateway.vision import retention
from gateway.vision.audit import AuditFrames
from gateway.vision.errors import GalleryError
from gateway.vision.images import read_image
from gateway.vision.retention import ExpiredFrames
from tests.support.clock import ManualClock
from tests.support.disk import fill

DAY_MS = 86_400_000
EVENT = "019a0000-0000-7000-8000-000000000001"


class RunningClock:
    def __init__(self) -> None:
        self.ms = 5_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def photo(faces_dir: Path) -> np.ndarray:
    return read_image(faces_dir / "antispoof" / "image_T1.jpg")


@pytest.fixture
def frames(tmp_path: Path) -> tuple[AuditFrames, RunningClock]:
    key = tmp_path / "faces.key"
    create_key(key)
    clock = RunningClock()
    return AuditFrames(tmp_path / "audit", key, retention_days=1, running_ms=clock), clock


def test_a_kept_frame_comes_back_as_the_same_picture(
    frames: tuple[AuditFrames, RunningClock], photo: np.ndarray
) -> None:
    audit, _ = frames
    audit.keep(EVENT, photo)
    back = cv2.imdecode(np.frombuffer(audit.export(EVENT), np.uint8), cv2.IMREAD_COLOR)
    assert back is not None and back.shape == photo.shape
    assert float(np.mean(cv2.absdiff(back, photo))) < 3  # JPEG at quality 90


def test_no_frame_is_kept_below_the_stores_free_disk_floor(
    tmp_path: Path, photo: np.ndarray
) -> None:
    key = tmp_path / "faces.key"
    create_key(key)
    folder = tmp_path / "audit"
    free = shutil.disk_usage(tmp_path).free
    audit = AuditFrames(folder, key, retention_days=1, min_free_bytes=free + 2**30)
    with pytest.raises(OSError, match="kept for alarms"):
        audit.keep(EVENT, photo)
    assert list(folder.iterdir()) == [] and audit.kept == 0
    AuditFrames(folder, key, retention_days=1, min_free_bytes=free // 2).keep(EVENT, photo)
    assert len(list(folder.iterdir())) == 1


def test_a_wall_clock_set_back_cannot_keep_a_frame_past_retention(
    frames: tuple[AuditFrames, RunningClock], photo: np.ndarray
) -> None:
    audit, clock = frames
    audit.keep(EVENT, photo)
    clock.ms += DAY_MS - 1000
    assert audit.purge() == 0
    clock.ms += 2000  # a day of running time, while the wall clock says the file is new
    assert audit.purge() == 1
    assert list(audit.folder.iterdir()) == []


def test_time_switched_off_counts_by_the_wall_clock(
    frames: tuple[AuditFrames, RunningClock], photo: np.ndarray
) -> None:
    audit, _ = frames
    audit.keep(EVENT, photo)
    assert audit.purge(now=time.time() + 86_400 + 1) == 1  # running time has hardly moved


def test_a_frame_past_its_retention_is_not_exported_but_deleted(
    frames: tuple[AuditFrames, RunningClock], photo: np.ndarray
) -> None:
    """The gateway purges hourly and only while it runs: `gateway audit export` on a site
    switched off for a month handed out a face kept for one day."""
    audit, _ = frames
    audit.keep(EVENT, photo)
    kept = audit.folder / f"{EVENT}.frame"
    month_ago = time.time() - 30 * 86_400
    os.utime(kept, (month_ago, month_ago))
    with pytest.raises(GalleryError, match="none kept"):
        audit.export(EVENT)
    assert not kept.exists()


def test_a_frame_names_every_elder_given_or_is_not_kept(
    frames: tuple[AuditFrames, RunningClock], photo: np.ndarray
) -> None:
    """A name cut off would leave the frame to that elder's erasure."""
    audit, _ = frames
    many = [f"elder-{n:05d}-{'x' * 48}" for n in range(1000)]
    with pytest.raises(ValueError, match="can name elders in"):
        audit.keep(EVENT, photo, many)
    audit.keep(EVENT, photo, many[:800])
    assert audit.erase_elder(many[799]) == 1


def test_a_frame_moved_to_another_decision_or_restamped_does_not_open(
    frames: tuple[AuditFrames, RunningClock], photo: np.ndarray
) -> None:
    audit, _ = frames
    audit.keep(EVENT, photo)
    kept = audit.folder / f"{EVENT}.frame"
    other = EVENT[:-1] + "2"
    os.rename(kept, audit.folder / f"{other}.frame")
    with pytest.raises(GalleryError, match="wrong key or damaged file"):
        audit.export(other)
    blob = bytearray((audit.folder / f"{other}.frame").read_bytes())
    blob[4:12] = (10**12).to_bytes(8, "big")  # a later stamp would keep it longer
    (audit.folder / f"{EVENT}.frame").write_bytes(bytes(blob))
    with pytest.raises(GalleryError, match="wrong key or damaged file"):
        audit.export(EVENT)


def test_a_frame_that_cannot_be_read_does_not_keep_her_other_frames(
    frames: tuple[AuditFrames, RunningClock], photo: np.ndarray
) -> None:
    """A failing card gives an I/O error on one frame: the erasure stopped there, and the
    frames after it that named her stayed. They all go; the erasure still says it failed."""
    audit, _ = frames
    audit.keep(EVENT, photo, ["E1"])
    (audit.folder / f"{EVENT[:-1]}0.frame").mkdir()  # reads fail (here: a folder in its place)
    audit.keep(EVENT[:-1] + "9", photo, ["E1"])
    with pytest.raises(IsADirectoryError):
        ExpiredFrames(audit.folder, retention_days=30).erase_elder("E1")
    assert [p.name for p in audit.folder.iterdir()] == [f"{EVENT[:-1]}0.frame"]


def test_an_erased_elders_frames_go_at_once_and_the_others_stay(
    frames: tuple[AuditFrames, RunningClock],
    photo: np.ndarray,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Consent withdrawn: the frames of decisions that named her, accepted or as a candidate,
    are deleted with her templates, not after their retention."""
    audit, _ = frames
    accepted, candidate, other = (EVENT[:-1] + n for n in "234")
    audit.keep(accepted, photo, ["E1"])
    audit.keep(candidate, photo, ["E2", "E1"])
    audit.keep(other, photo, ["E2"])
    header = retention.MAGIC + retention.STAMP.pack(5_000)  # kept before frames named elders
    nonce = os.urandom(12)
    old = header + nonce + audit._aead.encrypt(nonce, b"jpeg", EVENT.encode() + header)
    (audit.folder / f"{EVENT}.frame").write_bytes(old)
    config = tmp_path / "g.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\n')
    assert main(["gallery", "remove", "-c", str(config), "--elder", "E1"]) == 0
    out = capsys.readouterr().out
    assert "E1: 0 template(s) erased, 2 audit frame(s) and 0 delivered decision(s)" in out
    assert sorted(p.stem for p in audit.folder.iterdir()) == sorted([EVENT, other])
    assert audit.export(EVENT) == b"jpeg" and audit.export(other)[:2] == b"\xff\xd8"
    # the names are bound to the picture like its stamp: changed, it no longer opens
    blob = (audit.folder / f"{other}.frame").read_bytes()
    (audit.folder / f"{other}.frame").write_bytes(blob.replace(b"E2", b"E3", 1))
    with pytest.raises(GalleryError, match="wrong key or damaged file"):
        audit.export(other)


def test_a_foreign_file_is_refused_and_does_not_stop_the_purge(
    frames: tuple[AuditFrames, RunningClock], photo: np.ndarray
) -> None:
    audit, clock = frames
    audit.keep(EVENT, photo)
    (audit.folder / "019a0000-0000-7000-8000-00000000000f.frame").write_bytes(b"JFIF")
    with pytest.raises(GalleryError, match="not a frame this gateway kept"):
        audit.export("019a0000-0000-7000-8000-00000000000f")
    clock.ms += DAY_MS + 1
    assert audit.purge() == 1
    assert [p.name for p in audit.folder.iterdir()] == [
        "019a0000-0000-7000-8000-00000000000f.frame"
    ]


def test_expired_frames_go_without_the_key_and_one_that_cannot_does_not_keep_the_others(
    frames: tuple[AuditFrames, RunningClock], photo: np.ndarray, tmp_path: Path
) -> None:
    audit, clock = frames
    audit.keep(EVENT, photo)
    stuck = "019a0000-0000-7000-8000-000000000002.frame"
    (audit.folder / stuck).mkdir()  # cannot be unlinked
    (tmp_path / "faces.key").unlink()  # the option was turned off and the key is gone
    clock.ms += DAY_MS + 1
    expired = ExpiredFrames(audit.folder, retention_days=1, running_ms=clock)
    assert expired.purge(now=time.time() + 86_400 + 1) == 1
    assert expired.purge_failures == 1
    assert [p.name for p in audit.folder.iterdir()] == [stuck]


def test_a_frame_cut_short_while_being_written_also_leaves_on_time(
    frames: tuple[AuditFrames, RunningClock],
) -> None:
    audit, _ = frames
    (audit.folder / f"{EVENT}.partial").write_bytes(b"GAF2")  # power lost mid-write
    assert audit.purge() == 0
    assert audit.purge(now=time.time() + 86_400 + 1) == 1
    assert list(audit.folder.iterdir()) == []


def test_a_frame_cut_short_leaves_no_piece_of_a_face_behind_an_erasure(
    small_disk: Path, photo: np.ndarray
) -> None:
    """The disk filled up while a frame was written, or the power was cut: the part written
    names the elder in its header and holds part of her picture."""
    key = small_disk / "faces.key"
    create_key(key)
    audit = AuditFrames(small_disk / "audit", key, retention_days=30)
    audit.keep(EVENT, photo, ["E1"])
    kept = (audit.folder / f"{EVENT}.frame").read_bytes()
    cut = EVENT[:-1] + "2"
    (audit.folder / f"{cut}.partial").write_bytes(kept[: len(kept) // 2])  # power lost
    filler = fill(small_disk)
    os.truncate(filler, filler.stat().st_size - len(kept) // 2)  # room for half a frame

    with pytest.raises(OSError):
        audit.keep(EVENT[:-1] + "3", photo, ["E1"])
    assert sorted(p.name for p in audit.folder.iterdir()) == [f"{EVENT}.frame", f"{cut}.partial"]
    assert ExpiredFrames(audit.folder, retention_days=30).erase_elder("E1") == 2
    assert list(audit.folder.iterdir()) == []


def _kept_frame(tmp_path: Path, photo: np.ndarray, running_ms: int | None = None) -> Path:
    """A data directory holding EVENT's frame; returns the config naming it."""
    data = tmp_path / "var"
    data.mkdir()
    create_key(data / "faces.key")
    running = None if running_ms is None else lambda: running_ms
    AuditFrames(data / "audit", data / "faces.key", 1, running).keep(EVENT, photo)
    config = tmp_path / "g.toml"
    config.write_text(f'[gateway]\ndata_dir = "{data}"\n')
    return config


def test_the_export_command_writes_the_face_for_the_user_alone(
    tmp_path: Path, photo: np.ndarray
) -> None:
    """Default umask 022: still 0600. A link planted where the file goes is not followed."""
    config = _kept_frame(tmp_path, photo)
    out = tmp_path / "frame.jpg"
    old = os.umask(0o022)
    try:
        assert main(["audit", "export", "-c", str(config), EVENT, str(out)]) == 0
        victim = tmp_path / "victim.txt"
        victim.write_text("keep me")
        (tmp_path / "link.jpg").symlink_to(victim)
        assert main(["audit", "export", "-c", str(config), EVENT, str(tmp_path / "link.jpg")]) == 1
        shared = tmp_path / "shared.jpg"
        shared.write_bytes(b"")
        shared.chmod(0o644)  # written over: not with the mode it had
        assert main(["audit", "export", "-c", str(config), EVENT, str(shared)]) == 0
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert os.stat(shared).st_mode & 0o777 == 0o600
    assert out.read_bytes()[:2] == b"\xff\xd8" and victim.read_text() == "keep me"


def test_the_export_command_counts_retention_in_running_time_too(
    tmp_path: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    """The wall clock was set back a month (a Pi without RTC): the frame's file looks new,
    but the store has run eight days since it was kept for seven (the default). The
    gateway's own purge would delete it; the export handed it out until then."""
    config = _kept_frame(tmp_path, photo, running_ms=1_000)
    data = tmp_path / "var"
    clock = ManualClock()
    store = Store(StoreSection(), data / "gateway.db", clock, ClockSync("never", 30))
    store.start()
    clock.advance(8 * 86_400_000)
    store.stop()
    kept = data / "audit" / f"{EVENT}.frame"
    ahead = time.time() + 30 * 86_400
    os.utime(kept, (ahead, ahead))
    assert main(["audit", "export", "-c", str(config), EVENT, str(tmp_path / "f.jpg")]) == 1
    assert "none kept" in capsys.readouterr().err
    assert not kept.exists() and not (tmp_path / "f.jpg").exists()


def test_an_export_the_disk_has_no_room_for_leaves_no_part_of_the_face(
    tmp_path: Path, small_disk: Path, photo: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    """A USB stick that is nearly full: not half a JPEG where the export was asked for, and
    a message that names the file, not a bare errno."""
    config = _kept_frame(tmp_path, photo)
    filler = fill(small_disk)
    os.truncate(filler, filler.stat().st_size - 4096)  # room for a piece of the picture
    out = small_disk / "frame.jpg"
    assert main(["audit", "export", "-c", str(config), EVENT, str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot write {out}: No space left on device; nothing kept of it\n"
    assert not out.exists()


def test_an_export_into_a_device_leaves_the_device_as_it_was(
    tmp_path: Path, photo: np.ndarray
) -> None:
    """`gateway audit export ID /dev/null` (as root, as a trial): written to, not made 0600,
    which would shut every other user out of it."""
    config = _kept_frame(tmp_path, photo)
    null = tmp_path / "null"
    try:
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    null.chmod(0o666)
    assert main(["audit", "export", "-c", str(config), EVENT, str(null)]) == 0
    assert stat.S_IMODE(null.stat().st_mode) == 0o666


def test_exporting_a_frame_that_was_not_kept_says_why_it_may_be_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "var"
    data.mkdir()
    create_key(data / "faces.key")
    config = tmp_path / "g.toml"
    config.write_text(f'[gateway]\ndata_dir = "{data}"\n[vision.audit]\nretention_days = 7\n')
    out = tmp_path / "frame.jpg"
    assert main(["audit", "export", "-c", str(config), EVENT, str(out)]) == 1
    err = capsys.readouterr().err
    assert f"audit frame {EVENT}: none kept" in err and "7 days of retention" in err
    assert "Errno" not in err and not out.exists()
