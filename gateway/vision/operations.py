"""Platform requests about faces: ``face.enrol``, ``face.confirm``, ``face.unlearn`` and
``face.remove``.

They run on the downlink's thread and answer whether or not a camera is configured: a site's
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
import sqlite3
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway.private import ExposedDirectory, private_dir
from gateway.store.db import StoreError
from gateway.store.erasure import Journal, erase_answers, erase_events
from gateway.sync.downlink import Reply, RequestError
from gateway.vision.config import VisionSection
from gateway.vision.elders import check_elder_id
from gateway.vision.errors import BadImage, GalleryError, VisionError

if TYPE_CHECKING:
    import numpy as np

    from gateway.vision.analyze import Analyzer
    from gateway.vision.confirm import Confirmations
    from gateway.vision.enroll import Enrolment, Photo
    from gateway.vision.gallery import Gallery

log = logging.getLogger(__name__)


class Erased(NamedTuple):
    templates: int
    audit_frames: int
    decisions: int  # delivered decisions that named her, taken out of the journal
    decisions_at_delivery: int  # those still to be sent, taken out once delivered
    decisions_rewritten: int  # other elders' acceptances naming her, kept without her


def erase_elder(cfg: VisionSection, data_dir: Path, elder: str, journal: Journal) -> Erased:
    """Everything the device keeps of one elder goes: templates, look-alike entries, the
    saved cooldown, the audit frames of decisions that named her (kept while the option was
    on, whether or not it is now) and the delivered decisions in the journal that were hers
    (``events.erasing``). Hers not yet delivered are still sent (an acceptance is her meal's
    record, which the platform must get; a face not told apart that lists her, without her)
    and leave the journal at their delivery; other
    elders' acceptances that name her as a candidate or look-alike stay, without her. The
    stored answers to platform requests that name her keep only that they were answered. The
    one erasure for the platform's request and the CLI alike.

    Each part is done whatever another's failure: a gallery file damaged on the card must not
    keep the pictures of her face and her decisions. Any failure is a GalleryError naming
    what was not erased, so the request is not answered (nor stored) as done and is sent
    again."""
    from gateway.vision import cooldown
    from gateway.vision.events import FACE_DECISION, erasing
    from gateway.vision.gallery import erase
    from gateway.vision.retention import ExpiredFrames

    try:  # root's rewrite of the cooldown file would leave it unreadable to the service
        if data_dir.exists():
            private_dir(data_dir)
    except ExposedDirectory as exc:
        raise GalleryError(f"nothing erased: data directory {exc}") from None
    except OSError as exc:
        raise GalleryError(f"nothing erased: data directory {data_dir}: {exc.strerror}") from None
    # listed for a counter that may have her in memory; without a camera none runs, nothing
    # would take the entry in, and her sealed id would stay beside the key for good
    key_path = None if cfg.camera.source is None else cfg.gallery.key_path(data_dir)
    missed: list[str] = []
    templates = audit_frames = answers = 0
    decisions = (0, 0, 0)
    try:
        templates = erase(cfg.gallery.db_path(data_dir), elder, key_path=key_path)
    except (VisionError, sqlite3.Error, OSError) as exc:
        missed.append(f"her templates ({exc})")
    try:
        cooldown.forget(data_dir / cooldown.FILE, elder)
    except OSError as exc:
        missed.append(f"her cooldown entry ({exc})")
    frames = ExpiredFrames(cfg.audit.path(data_dir), cfg.audit.retention_days)
    try:
        audit_frames = frames.erase_elder(elder)
    except OSError as exc:
        missed.append(f"every audit frame ({exc})")
    try:
        decisions = erase_events(journal, FACE_DECISION.name, partial(erasing, elders={elder}))
    except (StoreError, sqlite3.Error) as exc:
        missed.append(f"her decisions in the journal ({exc})")
    try:
        answers = erase_answers(journal, elder)
    except (StoreError, sqlite3.Error) as exc:
        missed.append(f"the stored answers naming her ({exc})")
    if answers:
        log.info("face gallery: %d stored answers to platform requests erased with her", answers)
    if missed:
        raise GalleryError(
            f"not erased: {'; '.join(missed)}. Erased: {templates} template(s), "
            f"{audit_frames} audit frame(s), {decisions[0]} delivered decision(s); mend what "
            "is named and erase her again"
        )
    return Erased(templates, audit_frames, *decisions)


def face_remove(
    cfg: VisionSection, data_dir: Path, journal: Journal, request: Mapping[str, Any]
) -> Reply:
    """Consent withdrawn, or the elder left (``erase_elder``)."""
    elder = _elder(request)
    try:
        erased = erase_elder(cfg, data_dir, elder, journal)
    except VisionError as exc:
        raise RequestError(str(exc)) from None
    log.info(
        "face gallery: %d template(s), %d audit frame(s) and %d delivered decision(s) erased "
        "on the platform's request, %d decision(s) still to be sent erased once delivered, "
        "%d other elders' decision(s) rewritten without her",
        *erased,
    )
    return Reply(
        {
            "elder_id": elder,
            "templates_erased": erased.templates,
            "audit_frames_erased": erased.audit_frames,
            "decisions_erased": erased.decisions,
            "decisions_erased_at_delivery": erased.decisions_at_delivery,
            "decisions_rewritten": erased.decisions_rewritten,
        }
    )


class GalleryFile:
    """The gallery as the downlink thread writes it: its own handle on the file (the counter's
    handle sees the changes at its next refresh), opened at the first request that needs it."""

    def __init__(self, cfg: VisionSection, data_dir: Path) -> None:
        self.cfg = cfg
        self.data_dir = data_dir
        self._gallery: Gallery | None = None

    def exists(self) -> bool:
        return self._gallery is not None or self.cfg.gallery.db_path(self.data_dir).exists()

    def holds_rows_of(self, elder: str) -> bool | None:
        """Read without the key, for when the gallery cannot be opened (None: nor so)."""
        from gateway.vision.gallery import has_rows

        return has_rows(self.cfg.gallery.db_path(self.data_dir), elder)

    def current(self) -> Gallery:
        """Opened (created if need be) once, then brought up to date with other writers (a CLI
        enrolment, an erasure); a failure (wrong key) is retried at the next request."""
        if self._gallery is None:
            from gateway.vision.gallery import Gallery

            self._gallery = Gallery.configured(self.cfg, self.data_dir, create=True)
        else:
            self._gallery.refresh_if_changed()
        return self._gallery


class FaceEnrol:
    """Enrol an elder from photos the platform sends, by the same rules as ``gateway enroll``.

    A refused or flagged enrolment is a processed request (status ok, ``outcome`` says what
    happened, each photo has its verdict): the platform asked, the gateway decided. A retried
    request whose reply was lost adds nothing twice (enrolment skips pictures already held).
    """

    def __init__(self, cfg: VisionSection, gallery: GalleryFile) -> None:
        self.cfg = cfg
        self.gallery = gallery
        self._analyzer: Analyzer | None = None

    def __call__(self, request: Mapping[str, Any]) -> Reply:
        from gateway.vision.enroll import enrol

        elder = _elder(request)
        photos = [_photo(i, item) for i, item in enumerate(request["photos"], start=1)]
        try:
            gallery = self.gallery.current()
            result = enrol(
                gallery,
                self._open_analyzer(),
                elder,
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

    def _open_analyzer(self) -> Analyzer:
        """Load once; a failure (models missing or altered) is retried at the next request."""
        if self._analyzer is None:
            from gateway.vision.analyze import Analyzer

            self._analyzer = Analyzer.from_config(self.cfg)
        return self._analyzer


class FaceConfirm:
    """Staff say who an ``uncertain`` elder was: the face the counter saw joins that elder's
    templates (``enroll.learn``), so the next visit is recognised.

    Refused, and nothing learned, unless the decision is still held (``confirm_within_s``),
    its face passed liveness on most frames, the elder was among its candidates and the face
    itself scores at least ``candidate_threshold`` against her (staff cannot teach the counter
    a face that did not resemble the elder) with the enrolment they had then (not erased and
    enrolled again since), and the face does not look like another elder. A candidate named
    goes into the cooldown whether or not her face is learned: staff settled her by hand; the
    first one named is the decision's, and naming another afterwards is refused.
    """

    def __init__(
        self, cfg: VisionSection, gallery: GalleryFile, confirmations: Confirmations
    ) -> None:
        self.cfg = cfg
        self.gallery = gallery
        self.confirmations = confirmations

    def __call__(self, request: Mapping[str, Any]) -> Reply:
        from gateway.vision.enroll import learn

        event_id, elder = str(request["event_id"]), _elder(request)
        pending = self.confirmations.get(event_id)
        if pending is None:
            raise RequestError(
                f"decision {event_id}: nothing to confirm (not an uncertain decision of this "
                f"counter, confirmed already, or over "
                f"{self.cfg.decision.confirm_within_s:.0f} s old)",
                personal=True,
            )
        candidates = [e for e, _ in pending.candidates]
        if elder not in candidates:
            raise RequestError(
                f"{elder} was not among the decision's candidates ({', '.join(candidates)}): "
                "nothing learned; enrol photos (face.enrol) instead",
                personal=True,
            )
        try:
            gallery: Gallery | None = self.gallery.current()
            unreadable = ""
        except VisionError as exc:  # she is settled all the same: her meal was, by hand
            gallery, unreadable = None, str(exc)
        if gallery is not None:
            erased = gallery.snapshot.count(elder) == 0
        else:  # the file says so without the key
            erased = self.gallery.holds_rows_of(elder) is False
        if erased:
            # consent withdrawn: the counter must not hold her again, nor name her in a later
            # decision as the one her face was served as
            raise RequestError(
                f"{elder} is not enrolled (erased since?): not taken as settled", personal=True
            )
        # her meal was settled by hand, learned or not: a face too like a twin's (enrolled
        # with allow_similar) must not leave her to be settled again when she turns back
        settled = self.confirmations.settle(event_id, elder)
        if settled is not None and settled != elder:
            raise RequestError(
                f"decision {event_id} was confirmed as {settled} already: nothing learned, "
                f"and {elder} is not taken as settled; enrol photos (face.enrol) instead",
                personal=True,
            )
        probe = pending.probe
        if probe is None:
            raise RequestError(
                f"{elder} is taken as settled, but nothing learned: the face did not look live "
                "on most frames, or the frames showed more than one person; enrol photos "
                "(face.enrol) instead",
                personal=True,
            )
        if gallery is None:
            raise RequestError(
                f"{elder} is taken as settled, but nothing learned: {unreadable}", personal=True
            )
        try:
            self._check_resembles(gallery, elder, probe)
            result = learn(
                gallery,
                elder,
                probe,
                rules=self.cfg.decision,
                decision=event_id,
                anchor=pending.anchors.get(elder),
            )
        except VisionError as exc:
            raise RequestError(str(exc), personal=True) from None
        if result.status != "enrolled":
            raise RequestError(f"nothing learned: {result.message}", personal=True)
        self.confirmations.done(event_id)
        log.info("face gallery: a confirmed decision added %d template(s)", result.added)
        return Reply(
            {
                "event_id": event_id,
                "elder_id": elder,
                "templates": result.templates,
                "replaced": result.replaced,
            }
        )

    def _check_resembles(self, gallery: Gallery, elder: str, probe: np.ndarray) -> None:
        """The face learned is the mean of the live frames, while she may have become a
        candidate through other frames (ones that failed liveness: a photo of her held up):
        the face itself must score at least ``candidate_threshold`` against her enrolled
        photos. Not against faces learned before: each confirmation would then only need to
        resemble the last, and the learned faces could wander off to someone else. An elder
        no longer enrolled is left to ``learn``, which says so."""
        templates = gallery.snapshot.enrolled_of(elder)
        if not templates.size:
            return
        best = float((templates @ probe).max())
        floor = self.cfg.decision.candidate_threshold
        if best < floor:
            raise RequestError(
                f"nothing learned: the face seen scores {best:.2f} against {elder}'s "
                f"enrolled photos, under the candidate threshold {floor:.2f}; enrol photos "
                "(face.enrol) instead",
                personal=True,
            )


class FaceUnlearn:
    """Staff confirmed the wrong elder: the faces learned from their confirmations go (those of
    one decision, or all of the elder's), the enrolled photos stay. Asking again, or for an
    elder with nothing learned, succeeds with nothing removed."""

    def __init__(self, cfg: VisionSection, gallery: GalleryFile) -> None:
        self.cfg = cfg
        self.gallery = gallery

    def __call__(self, request: Mapping[str, Any]) -> Reply:
        from gateway.vision.enroll import unlearn

        elder = _elder(request)
        decision = request.get("event_id")
        if not self.gallery.exists():
            return Reply({"elder_id": elder, "templates_removed": 0, "templates": 0})
        try:
            gallery = self.gallery.current()
            removed = unlearn(
                gallery,
                elder,
                rules=self.cfg.decision,
                decision=None if decision is None else str(decision),
            )
        except VisionError as exc:
            raise RequestError(str(exc)) from None
        log.info("face gallery: %d learned template(s) removed on the platform's request", removed)
        return Reply(
            {
                "elder_id": elder,
                "templates_removed": removed,
                "templates": gallery.snapshot.count(elder),
            }
        )


def _elder(request: Mapping[str, Any]) -> str:
    try:
        return check_elder_id(str(request["elder_id"]))
    except VisionError as exc:
        raise RequestError(str(exc)) from None


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
