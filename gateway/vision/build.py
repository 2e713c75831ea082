"""Composition: the face stage's services and platform requests from config (light module;
heavy imports deferred)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from gateway.lifecycle import Service
from gateway.store import Store
from gateway.sync.downlink import Operation, Reply, RequestError
from gateway.vision.config import VisionSection

log = logging.getLogger(__name__)


def build_services(cfg: VisionSection, data_dir: Path, store: Store) -> list[Service]:
    """No camera configured: no face stage, and no model or gallery file is touched."""
    if cfg.camera.source is None:
        return []
    from gateway.vision.service import VisionService

    return [VisionService(cfg, data_dir, store)]


def build_operations(cfg: VisionSection, data_dir: Path) -> list[Operation]:
    """Platform requests about faces, answered with or without a camera: an erasure must
    never wait for the face stage to be able to run."""
    return [Operation("face.remove", partial(_face_remove, cfg.gallery.db_path(data_dir)))]


def _face_remove(db_path: Path, request: Mapping[str, Any]) -> Reply:
    """Consent withdrawn, or the elder left: their templates and look-alike entries go."""
    from gateway.vision.errors import GalleryError
    from gateway.vision.gallery import erase

    elder = str(request["elder_id"])
    try:
        erased = erase(db_path, elder)
    except GalleryError as exc:
        raise RequestError(str(exc)) from None
    log.info("face gallery: %d template(s) erased on the platform's request", erased)
    return Reply({"elder_id": elder, "templates_erased": erased})
