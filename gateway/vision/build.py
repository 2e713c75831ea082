"""Composition: the face stage's services and platform requests from config (light module;
heavy imports deferred)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from gateway.lifecycle import Service
from gateway.store import Store
from gateway.store.erasure import Journal
from gateway.sync.downlink import Handler, Operation
from gateway.vision.config import VisionSection
from gateway.vision.confirm import Confirmations
from gateway.vision.operations import (
    FaceConfirm,
    FaceEnrol,
    FaceUnlearn,
    GalleryFile,
    face_remove,
)
from gateway.vision.retention import AuditRetention


def build(
    cfg: VisionSection, data_dir: Path, store: Store
) -> tuple[list[Service], list[Operation]]:
    """The counter (only with a camera: otherwise no model or gallery file is touched), the
    retention of audit frames (always: a site may have removed its camera), and the platform's
    face requests, answered with or without a camera."""
    confirmations = Confirmations(cfg.decision.confirm_within_s)
    gallery = GalleryFile(cfg, data_dir)
    handlers: dict[str, Handler] = {
        "face.enrol": FaceEnrol(cfg, gallery),
        "face.confirm": FaceConfirm(cfg, gallery, confirmations),
        "face.unlearn": FaceUnlearn(cfg, gallery),
        "face.remove": partial(face_remove, cfg, data_dir, Journal(store.path, store.key_path)),
    }
    # each writes faces.db (an erasure deletes delivered events too), not the store's
    # outbox: applied even if its response cannot be stored
    operations = [Operation(name, h, applies_elsewhere=True) for name, h in handlers.items()]
    retention = AuditRetention.configured(cfg.audit, data_dir, store.steady_ms)
    if cfg.camera.source is None:
        return [retention], operations
    from gateway.vision.service import VisionService

    return [retention, VisionService(cfg, data_dir, store, confirmations=confirmations)], operations
