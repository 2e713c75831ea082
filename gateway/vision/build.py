"""Composition: the face stage's services from config (light module; heavy imports deferred)."""

from __future__ import annotations

from pathlib import Path

from gateway.lifecycle import Service
from gateway.store import Store
from gateway.vision.config import VisionSection


def build_services(cfg: VisionSection, data_dir: Path, store: Store) -> list[Service]:
    """No camera configured: no face stage, and no model or gallery file is touched."""
    if cfg.camera.source is None:
        return []
    from gateway.vision.service import VisionService

    return [VisionService(cfg, data_dir, store)]
