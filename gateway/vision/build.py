"""Composition: the face stage's services and platform requests from config (light module;
heavy imports deferred)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from gateway.lifecycle import Service
from gateway.store import Store
from gateway.sync.downlink import Operation
from gateway.vision.config import VisionSection
from gateway.vision.operations import FaceEnrol, face_remove


def build_services(cfg: VisionSection, data_dir: Path, store: Store) -> list[Service]:
    """No camera configured: no face stage, and no model or gallery file is touched."""
    if cfg.camera.source is None:
        return []
    from gateway.vision.service import VisionService

    return [VisionService(cfg, data_dir, store)]


def build_operations(cfg: VisionSection, data_dir: Path) -> list[Operation]:
    """Platform requests about faces, answered with or without a camera."""
    return [
        Operation("face.enrol", FaceEnrol(cfg, data_dir)),
        Operation("face.remove", partial(face_remove, cfg.gallery.db_path(data_dir))),
    ]
