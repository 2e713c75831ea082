"""Kept decision frames leave on time whatever else the face stage does."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.clock import ClockSync, SystemClock
from gateway.config import StoreSection
from gateway.lifecycle import Supervisor
from gateway.store import Store
from gateway.vision.audit import AuditFrames
from gateway.vision.build import build
from gateway.vision.config import AuditSection, CameraSection, VisionSection
from gateway.vision.gallery import Gallery


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    Gallery.open(folder / "faces.db", folder / "faces.key", "m", create=True)
    return folder


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    s = Store(StoreSection(), data_dir / "gateway.db", SystemClock(), ClockSync("never", 30))
    yield s
    s.stop()


def keep_frames(data_dir: Path, ages_days: list[float]) -> Path:
    """Frames kept by an earlier run with the audit option on, as old as given."""
    folder = data_dir / "audit"
    frames = AuditFrames(folder, data_dir / "faces.key", retention_days=7)
    for i, age in enumerate(ages_days):
        event_id = f"019a0000-0000-7000-8000-00000000000{i}"
        frames.keep(event_id, np.zeros((8, 8, 3), np.uint8))
        then = time.time() - age * 86_400
        os.utime(folder / f"{event_id}.frame", (then, then))
    return folder


def start(cfg: VisionSection, data_dir: Path, store: Store) -> Supervisor:
    services, _ = build(cfg, data_dir, store)
    supervisor = Supervisor([store, *services])
    supervisor.start_all()
    return supervisor


def test_frames_kept_before_the_option_and_the_camera_were_removed_still_leave_on_time(
    data_dir: Path, store: Store, vision_cfg: VisionSection
) -> None:
    folder = keep_frames(data_dir, [3, 1])
    cfg = vision_cfg.model_copy(update={"audit": AuditSection(enabled=False, retention_days=2)})
    assert cfg.camera.source is None
    supervisor = start(cfg, data_dir, store)
    try:
        assert [p.stem[-1] for p in folder.iterdir()] == ["1"]  # the day-old one stays
        assert supervisor.healthy()
        (retention,) = [s for s in supervisor.services if s.name == "audit-retention"]
        assert retention.health() == {"purged": 1, "failures": 0}
    finally:
        supervisor.stop_all()


def test_frames_leave_on_time_when_the_face_stage_cannot_start(
    tmp_path: Path, data_dir: Path, store: Store, vision_cfg: VisionSection
) -> None:
    folder = keep_frames(data_dir, [8, 1])
    camera = CameraSection(source=str(tmp_path), fps=15)
    cfg = vision_cfg.model_copy(update={"camera": camera, "models_dir": tmp_path / "no-models"})
    supervisor = start(cfg, data_dir, store)
    try:
        assert supervisor.health()["vision"]["state"] == "not started"
        assert [p.stem[-1] for p in folder.iterdir()] == ["1"]
    finally:
        supervisor.stop_all()
