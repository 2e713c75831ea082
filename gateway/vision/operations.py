"""Platform requests about faces: ``face.enrol`` and ``face.remove``.

Both run on the downlink's thread and answer whether or not a camera is configured: a site's
elders are registered on the platform, often before the counter camera is installed, and an
erasure must never wait for the face stage. Models are loaded at the first enrolment request
and kept (about 25 MB): a platform enrolling a whole site sends hundreds in a row.

Heavy imports (OpenCV, onnxruntime) are deferred so that a gateway without faces never pays
for them.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.sync.downlink import Reply, RequestError
from gateway.vision.config import VisionSection
from gateway.vision.errors import BadImage, VisionError

if TYPE_CHECKING:
    from gateway.vision.analyze import Analyzer
    from gateway.vision.enroll import Enrolment, Photo
    from gateway.vision.gallery import Gallery

log = logging.getLogger(__name__)


def face_remove(db_path: Path, request: Mapping[str, Any]) -> Reply:
    """Consent withdrawn, or the elder left: their templates and look-alike entries go."""
    from gateway.vision.gallery import erase

    elder = str(request["elder_id"])
    try:
        erased = erase(db_path, elder)
    except VisionError as exc:
        raise RequestError(str(exc)) from None
    log.info("face gallery: %d template(s) erased on the platform's request", erased)
    return Reply({"elder_id": elder, "templates_erased": erased})


class FaceEnrol:
    """Enrol an elder from photos the platform sends, by the same rules as ``gateway enroll``.

    A refused or flagged enrolment is a processed request (status ok, ``outcome`` says what
    happened, each photo has its verdict): the platform asked, the gateway decided. A retried
    request whose reply was lost adds nothing twice (enrolment skips pictures already held).
    """

    def __init__(self, cfg: VisionSection, data_dir: Path) -> None:
        self.cfg = cfg
        self.data_dir = data_dir
        self._analyzer: Analyzer | None = None
        self._gallery: Gallery | None = None

    def __call__(self, request: Mapping[str, Any]) -> Reply:
        from gateway.vision.enroll import enrol

        photos = [_photo(i, item) for i, item in enumerate(request["photos"], start=1)]
        try:
            analyzer, gallery = self._open()
            gallery.refresh_if_changed()  # a CLI enrolment or an erasure since the last request
            result = enrol(
                gallery,
                analyzer,
                str(request["elder_id"]),
                photos,
                rules=self.cfg.decision,
                allow_similar=bool(request.get("allow_similar", False)),
            )
        except VisionError as exc:
            raise RequestError(str(exc)) from None
        log.info(
            "face gallery: platform enrolment %s, %d template(s) added", result.status, result.added
        )
        return Reply(reply_data(result))

    def _open(self) -> tuple[Analyzer, Gallery]:
        """Load once; a failure (models missing, wrong key) is retried at the next request."""
        if self._analyzer is None or self._gallery is None:
            from gateway.vision.analyze import Analyzer, AnalyzerSettings
            from gateway.vision.gallery import Gallery
            from gateway.vision.models import Models, load_manifest, resolve_models_dir

            cfg = self.cfg
            manifest = load_manifest(cfg.manifest)
            gallery = Gallery.open(
                cfg.gallery.db_path(self.data_dir),
                cfg.gallery.key_path(self.data_dir),
                manifest.recognizer.model_id,
                create=True,
            )
            models = Models.open(resolve_models_dir(cfg.models_dir), manifest, cfg.threads)
            settings = AnalyzerSettings.from_config(cfg)
            self._analyzer, self._gallery = Analyzer(models, settings), gallery
        return self._analyzer, self._gallery


def _photo(index: int, item: Mapping[str, Any]) -> Photo:
    """A photo whose bytes are not base64 gets its own verdict, like a corrupt file."""
    from gateway.vision.enroll import Photo

    name = str(item.get("name") or f"photo {index}")
    try:
        data = base64.b64decode(item["data"], validate=True)
    except (binascii.Error, ValueError):

        def refuse() -> Any:
            raise BadImage("corrupt", "not base64")

        return Photo(name, refuse)
    return Photo.data(name, data)


def reply_data(result: Enrolment) -> dict[str, Any]:
    return {
        "elder_id": result.elder_id,
        "outcome": result.status,
        "message": result.message,
        "templates_added": result.added,
        "already_enrolled": result.already,
        "templates": result.templates,
        "photos": [
            {"name": v.name, "ok": v.ok, "reason": v.reason, "detail": v.detail}
            for v in result.photos
        ],
        "conflicts": [{"elder_id": e, "score": round(s, 4)} for e, s in result.conflicts],
        "confusable": [{"elder_id": e, "score": round(s, 4)} for e, s in result.confusable],
    }
