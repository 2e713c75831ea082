"""Platform requests about faces, against a counter pipeline fed real photos."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gateway.store.erasure import Journal
from gateway.sync.downlink import RequestError
from gateway.vision import cooldown
from gateway.vision.analyze import Analysis, Analyzer
from gateway.vision.camera import EMPTY_GREY, Frame
from gateway.vision.config import VisionSection
from gateway.vision.confirm import Confirmations
from gateway.vision.decide import Decider, Observation, Outcome, Policy
from gateway.vision.enroll import enrol
from gateway.vision.errors import GalleryError
from gateway.vision.gallery import Gallery, erase
from gateway.vision.images import fit_within, read_image
from gateway.vision.liveness import LivenessResult
from gateway.vision.operations import FaceConfirm, GalleryFile, erase_elder
from gateway.vision.pipeline import CounterPipeline, DecisionEvent

FPS = 15.0

Show = Callable[[str | None, float, float], list[DecisionEvent]]


def twins(
    analyzer: Analyzer, vision_cfg: VisionSection, tmp_path: Path, faces_dir: Path
) -> tuple[CounterPipeline, FaceConfirm, Show]:
    """Twins enrolled with allow_similar (here two photos of one woman under two ids, E1 and
    E2): a counter that cannot tell them apart, the platform's face.confirm, and a way to
    show it a photo (None: nobody) for some seconds. With a margin of 0.02 whatever the
    default: at a wider one no photo of hers is sure enough to be one twin rather than the
    other."""
    df = faces_dir / "deepface"
    rules = vision_cfg.decision.model_copy(update={"margin": 0.02})
    gallery = Gallery.open(
        tmp_path / "faces.db", tmp_path / "faces.key", analyzer.embedder.model_id, create=True
    )
    for elder, photo in (("E1", "img2.jpg"), ("E2", "img7.jpg")):
        added = enrol(gallery, analyzer, elder, [df / photo], rules=rules, allow_similar=True)
        assert added.status == "enrolled"
    gallery.reload()
    confirmations = Confirmations(rules.confirm_within_s)
    pipeline = CounterPipeline(
        analyzer, gallery, Policy.from_config(rules), "counter-1", {}, confirmations=confirmations
    )

    def show(photo: str | None, seconds: float, start: float) -> list[DecisionEvent]:
        """The photo in view, or (None) the counter with nobody at it."""
        empty = np.full((480, 640, 3), EMPTY_GREY, np.uint8)
        image = empty if photo is None else fit_within(read_image(df / photo), 640)
        out: list[DecisionEvent] = []
        for i in range(int(seconds * FPS)):
            out += pipeline.process(Frame(image, start + i / FPS, i))
        return out

    confirm = FaceConfirm(vision_cfg, GalleryFile(vision_cfg, tmp_path), confirmations)
    return pipeline, confirm, show


def test_a_twin_staff_settled_by_hand_is_not_settled_again_when_her_face_cannot_be_learned(
    analyzer: Analyzer, vision_cfg: VisionSection, tmp_path: Path, faces_dir: Path
) -> None:
    """The counter cannot tell the twins apart, staff settle the meal by hand and say who it
    was. Her face is too like her sister's to be learned, so the confirmation is refused; she
    turns to staff for a second and back, at an angle the counter is sure of: not settled a
    second time."""
    pipeline, confirm, show = twins(analyzer, vision_cfg, tmp_path, faces_dir)
    (unsure,) = show("img4.jpg", 3.0, 0.0)
    assert unsure.decision.outcome is Outcome.UNCERTAIN
    assert [e for e, _ in unsure.decision.candidates] == ["E1", "E2"]
    with pytest.raises(RequestError, match="nothing learned: looks like"):
        confirm({"event_id": unsure.event.event_id, "elder_id": "E1"})
    assert show(None, 1.0, 3.0) == []
    assert show("img11.jpg", 2.0, 4.0) == []  # E1 clearly, were she not settled already
    assert pipeline.decider.counters["cooldown_suppressed"] == 1


def test_one_uncertain_decision_settles_one_twin_however_often_staff_confirm_it(
    analyzer: Analyzer, vision_cfg: VisionSection, tmp_path: Path, faces_dir: Path
) -> None:
    """Staff settle E1 by hand; the counter refuses to learn her face ("looks like E2"), so
    they try again naming her sister, then E1 once more. One meal was settled: her sister is
    not put in cooldown, where she would be kept from her own meal at her turn."""
    pipeline, confirm, show = twins(analyzer, vision_cfg, tmp_path, faces_dir)
    (unsure,) = show("img4.jpg", 3.0, 0.0)
    event_id = unsure.event.event_id
    with pytest.raises(RequestError, match="nothing learned: looks like"):
        confirm({"event_id": event_id, "elder_id": "E1"})
    with pytest.raises(RequestError, match="confirmed as E1 already"):
        confirm({"event_id": event_id, "elder_id": "E2"})
    with pytest.raises(RequestError, match="nothing learned: looks like"):
        confirm({"event_id": event_id, "elder_id": "E1"})
    assert show(None, 1.0, 3.0) == []
    assert sorted(pipeline.decider.cooldowns(4.0)) == ["E1"]
    assert pipeline.decider.settlements == 1


def test_a_face_that_does_not_resemble_the_elder_named_is_not_learned(
    analyzer: Analyzer, vision_cfg: VisionSection, tmp_path: Path
) -> None:
    """A track in which E1 is a candidate only through frames that failed liveness (a photo
    of her held up by someone else, say): the face staff could confirm is the mean of the live
    frames, a face that scores far below the candidate threshold against her. Staff naming E1
    must not make it her template, or that person would be accepted as E1 from then on."""
    gallery = Gallery.open(
        tmp_path / "faces.db", tmp_path / "faces.key", analyzer.embedder.model_id, create=True
    )
    rng = np.random.default_rng(11)
    her, other = (v / np.linalg.norm(v) for v in rng.standard_normal((2, 128)))
    other = other - (other @ her) * her
    other /= np.linalg.norm(other)
    gallery.add("E1", [her.astype(np.float32)])
    stranger = (0.2 * her + np.sqrt(1 - 0.04) * other).astype(np.float32)  # 0.20 against E1
    photo = (0.5 * her + np.sqrt(1 - 0.25) * other).astype(np.float32)  # 0.50: a candidate
    rules = vision_cfg.decision
    decider = Decider(Policy.from_config(rules))
    decisions = []
    for i in range(45):
        face, live = (photo, 0.2) if i % 3 == 0 else (stranger, 0.95)
        search = gallery.search(face)
        decisions += decider.observe(Observation(i / FPS, "face", face, search, live))
    (unsure,) = decisions
    assert unsure.outcome is Outcome.UNCERTAIN and unsure.probe is not None
    assert [e for e, _ in unsure.candidates] == ["E1"]
    confirmations = Confirmations(rules.confirm_within_s)
    confirmations.hold(
        "d-1", unsure.probe, unsure.candidates, {"E1": gallery.snapshot.anchor("E1")}
    )
    confirm = FaceConfirm(vision_cfg, GalleryFile(vision_cfg, tmp_path), confirmations)

    with pytest.raises(RequestError, match=r"nothing learned: the face seen scores 0\.20"):
        confirm({"event_id": "d-1", "elder_id": "E1"})
    reopened = Gallery.open(gallery.db_path, gallery.key_path, gallery.model_id)
    assert reopened.snapshot.count("E1") == 1 and reopened.learned() == []
    assert [s.elder for s in confirmations.take_settled()] == ["E1"]  # her meal still settled


def test_a_track_the_next_in_the_queue_stepped_into_settles_her_and_teaches_nothing(
    vision_cfg: VisionSection, tmp_path: Path
) -> None:
    """She scores 0.50 against an old photo (not sure yet) and steps aside; the next in the
    queue steps up within the track gap and scores 0.35 against her, enough for the looser
    track continuity. Staff rightly confirm her, but the mean of the track is a blend of the
    two that passed the resemblance check and, once learned, accepted the stranger as her."""
    gallery = Gallery.configured(vision_cfg, tmp_path, create=True)
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((128, 3)))
    photo, x, y = (q[:, i].astype(np.float32) for i in range(3))
    gallery.add("E1", [photo])
    gallery.reload()
    her = (0.5 * photo + np.sqrt(1 - 0.25) * x).astype(np.float32)
    stranger = (0.3 * photo + 0.231 * x + np.sqrt(1 - 0.3**2 - 0.231**2) * y).astype(np.float32)
    assert float(stranger @ her) == pytest.approx(0.35, abs=1e-3)
    rules = vision_cfg.decision
    decider = Decider(Policy.from_config(rules))
    decisions = []
    for i in range(45):
        face, t = (her, i / FPS) if i < 15 else (stranger, i / FPS + 0.4)
        decisions += decider.observe(Observation(t, "face", face, gallery.search(face), 0.95))
    (unsure,) = decisions
    assert unsure.outcome is Outcome.UNCERTAIN
    assert [e for e, _ in unsure.candidates] == ["E1"]
    confirmations = Confirmations(rules.confirm_within_s)
    confirmations.hold(
        "d-1", unsure.probe, unsure.candidates, {"E1": gallery.snapshot.anchor("E1")}
    )
    confirm = FaceConfirm(vision_cfg, GalleryFile(vision_cfg, tmp_path), confirmations)

    with pytest.raises(RequestError, match="the frames showed more than one person"):
        confirm({"event_id": "d-1", "elder_id": "E1"})
    assert [s.elder for s in confirmations.take_settled()] == ["E1"]  # her meal is settled
    gallery.refresh_if_changed()
    assert gallery.learned() == []
    assert gallery.search(stranger).top_score < rules.candidate_threshold


def test_a_face_like_only_a_learned_face_is_not_learned(
    vision_cfg: VisionSection, tmp_path: Path
) -> None:
    """Each confirmation had only to resemble a face learned before: confirmed one after
    another, the learned faces could wander off to someone who scores like a stranger
    against her enrolled photos. A face is learned only if it resembles those."""
    gallery = Gallery.configured(vision_cfg, tmp_path, create=True)  # as FaceConfirm opens it
    q, _ = np.linalg.qr(np.random.default_rng(8).standard_normal((128, 3)))
    her, x, y = (q[:, i].astype(np.float32) for i in range(3))
    gallery.add("E1", [her])
    learned = (0.55 * her + np.sqrt(1 - 0.55**2) * x).astype(np.float32)
    gallery.add("E1", [learned], learned_from="d-0")
    gallery.reload()
    drifted = (0.3 * her + 0.5 * x + np.sqrt(1 - 0.09 - 0.25) * y).astype(np.float32)
    assert float(drifted @ learned) > vision_cfg.decision.accept_threshold
    confirmations = Confirmations(vision_cfg.decision.confirm_within_s)
    confirmations.hold("d-1", drifted, (("E1", 0.58),), {"E1": gallery.snapshot.anchor("E1")})
    confirm = FaceConfirm(vision_cfg, GalleryFile(vision_cfg, tmp_path), confirmations)

    with pytest.raises(RequestError, match=r"scores 0\.30 against E1's enrolled photos"):
        confirm({"event_id": "d-1", "elder_id": "E1"})
    assert Gallery.open(gallery.db_path, gallery.key_path, gallery.model_id).learned() == ["d-0"]


class Shown:
    """An analyzer for a counter shown set faces: each frame's embedding and live score."""

    def __init__(self) -> None:
        self.face = np.zeros(128, dtype=np.float32)
        self.live = 0.99

    def analyze(
        self, image: np.ndarray, with_embedding: Callable[[np.ndarray], None], ignore: object
    ) -> Analysis:
        with_embedding(self.face)
        liveness = LivenessResult(self.live, 1, self.live)
        return Analysis("face", 1, embedding=self.face, liveness=liveness)


def shown_counter(
    vision_cfg: VisionSection, gallery: Gallery, confirmations: Confirmations
) -> tuple[CounterPipeline, Shown]:
    shown = Shown()
    pipeline = CounterPipeline(
        shown,  # type: ignore[arg-type]
        gallery,
        Policy.from_config(vision_cfg.decision),
        "counter-1",
        {},
        confirmations=confirmations,
    )
    return pipeline, shown


def test_an_uncertain_face_too_seldom_live_to_learn_can_still_be_settled_by_hand(
    vision_cfg: VisionSection, tmp_path: Path
) -> None:
    """Dim light: half the frames of her uncertain visit fail liveness, so her face cannot be
    learned. Staff settle her by hand and say so; turning back to the counter, now recognised
    clearly, she is not settled a second time."""
    gallery = Gallery.configured(vision_cfg, tmp_path, create=True)  # as FaceConfirm opens it
    rng = np.random.default_rng(5)
    her, other = (v / np.linalg.norm(v) for v in rng.standard_normal((2, 128)))
    other = other - (other @ her) * her
    other /= np.linalg.norm(other)
    gallery.add("E1", [her.astype(np.float32)])
    gallery.reload()
    confirmations = Confirmations(vision_cfg.decision.confirm_within_s)
    pipeline, shown = shown_counter(vision_cfg, gallery, confirmations)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    shown.face = (0.5 * her + np.sqrt(0.75) * other).astype(np.float32)  # 0.50: a candidate
    events: list[DecisionEvent] = []
    for i in range(6):  # a Pi's few frames a second, every other one failing liveness
        shown.live = 0.99 if i % 2 else 0.3
        events += pipeline.process(Frame(image, i * 0.45, i))
    (unsure,) = events
    assert (unsure.decision.outcome, unsure.event.data["confirmable"]) == (Outcome.UNCERTAIN, True)
    confirm = FaceConfirm(vision_cfg, GalleryFile(vision_cfg, tmp_path), confirmations)

    with pytest.raises(RequestError, match="E1 is taken as settled, but nothing learned"):
        confirm({"event_id": unsure.event.event_id, "elder_id": "E1"})
    shown.face, shown.live = (0.7 * her + np.sqrt(0.51) * other).astype(np.float32), 0.99
    back = [pipeline.process(Frame(image, 4.0 + i / FPS, 10 + i)) for i in range(int(2 * FPS))]
    assert [e for events in back for e in events] == []
    assert pipeline.decider.counters["cooldown_suppressed"] == 1
    assert gallery.snapshot.count("E1") == 1  # nothing learned


def test_an_elder_erased_before_staff_confirm_her_is_not_held_nor_named_again(
    vision_cfg: VisionSection, tmp_path: Path
) -> None:
    """An uncertain decision between E1 and E2; E1 withdraws her consent and is erased; then
    staff, unaware, confirm the decision as E1. Refused, and the counter does not take E1
    back into its memory: a face recognised later as E2 is not refused as "served as E1",
    an event that would name the erased elder after her erasure was carried out."""
    gallery = Gallery.configured(vision_cfg, tmp_path, create=True)  # as FaceConfirm opens it
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((128, 3)))
    e1, e2, other = (q[:, i].astype(np.float32) for i in range(3))
    gallery.add("E1", [e1])
    gallery.add("E2", [e2])
    gallery.reload()
    confirmations = Confirmations(vision_cfg.decision.confirm_within_s)
    pipeline, shown = shown_counter(vision_cfg, gallery, confirmations)

    def show(face: np.ndarray, start: float, seconds: float) -> list[DecisionEvent]:
        shown.face = face.astype(np.float32)
        image = np.zeros((8, 8, 3), dtype=np.uint8)
        out: list[DecisionEvent] = []
        for i in range(int(seconds * FPS)):  # a picture that moves, as a camera's does
            out += pipeline.process(Frame(image + (i % 2) * 50, start + i / FPS, i))
        return out

    (unsure,) = show(0.50 * e1 + 0.49 * e2 + np.sqrt(1 - 0.25 - 0.2401) * other, 0.0, 3.0)
    assert [e for e, _ in unsure.decision.candidates] == ["E1", "E2"]
    assert erase(gallery.db_path, "E1", key_path=gallery.key_path) == 1
    gallery.refresh_if_changed()
    pipeline.decider.forget(["E1"])
    confirm = FaceConfirm(vision_cfg, GalleryFile(vision_cfg, tmp_path), confirmations)

    with pytest.raises(RequestError, match=r"E1 is not enrolled \(erased since\?\)"):
        confirm({"event_id": unsure.event.event_id, "elder_id": "E1"})
    assert pipeline.decider.cooldowns(3.0) == {}
    later = show(0.30 * e1 + 0.62 * e2 + np.sqrt(1 - 0.09 - 0.3844) * other, 5.0, 3.0)
    assert [(e.decision.outcome, e.decision.elder_id) for e in later] == [(Outcome.ACCEPTED, "E2")]


def test_a_confirmation_while_the_gallery_cannot_be_read_still_settles_her(
    vision_cfg: VisionSection, tmp_path: Path
) -> None:
    """Staff served her by hand: that stands even if her face cannot be learned now (a key
    file someone made readable to all), or she would be charged once she turns back."""
    gallery = Gallery.configured(vision_cfg, tmp_path, create=True)
    her = np.zeros(128, dtype=np.float32)
    her[0] = 1.0
    gallery.add("E1", [her])
    confirmations = Confirmations(vision_cfg.decision.confirm_within_s)
    confirmations.hold("d-1", her, (("E1", 0.5),), {"E1": gallery.snapshot.anchor("E1")})
    gallery.key_path.chmod(0o644)
    confirm = FaceConfirm(vision_cfg, GalleryFile(vision_cfg, tmp_path), confirmations)

    with pytest.raises(RequestError, match="E1 is taken as settled, but nothing learned: "):
        confirm({"event_id": "d-1", "elder_id": "E1"})
    assert [s.elder for s in confirmations.take_settled()] == ["E1"]
    # erased meanwhile: the file says so without the key, and she is not held again
    confirmations.hold("d-2", her, (("E1", 0.5),), {"E1": None})
    erase(gallery.db_path, "E1")
    with pytest.raises(RequestError, match=r"E1 is not enrolled \(erased since\?\)"):
        confirm({"event_id": "d-2", "elder_id": "E1"})
    assert confirmations.take_settled() == []


def test_root_erasing_in_the_service_users_data_directory_is_refused(
    vision_cfg: VisionSection, tmp_path: Path
) -> None:
    """`sudo gateway gallery remove` rewrote the cooldown file as root's, 0600: the service
    could no longer read it, and forgot who had just eaten."""
    if os.geteuid() != 0:
        pytest.skip("only root can run as root")
    data = tmp_path / "var"
    data.mkdir(mode=0o700)
    cooling = data / cooldown.FILE
    cooldown.save(cooling, {"elder-7": 5_000, "elder-8": 6_000})
    for path in (cooling, data):
        os.chown(path, 65534, 65534)
    journal = Journal(data / "gateway.db", data / "gateway.db.key")
    with pytest.raises(GalleryError, match=r"nothing erased: .* belongs to nobody"):
        erase_elder(vision_cfg, data, "elder-7", journal)
    assert cooling.stat().st_uid == 65534
    assert sorted(json.loads(cooling.read_text())) == ["elder-7", "elder-8"]
