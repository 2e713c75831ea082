"""The platform enrols and erases elders' faces over MQTT, camera or not, each exactly once."""

from __future__ import annotations

import base64
import errno
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from gateway import lifecycle
from gateway.clock import ClockSync, SystemClock
from gateway.config import DownlinkSection, StoreSection
from gateway.events import Event, Lane
from gateway.store import Delivered, Store
from gateway.store.erasure import Journal
from gateway.sync.downlink import Downlink
from gateway.sync.mqtt import Message
from gateway.sync.topics import Topics
from gateway.vision import cooldown
from gateway.vision.analyze import Analyzer
from gateway.vision.build import build
from gateway.vision.config import DecisionSection, VisionSection
from gateway.vision.decide import Decision, Outcome, Policy
from gateway.vision.enroll import enrol
from gateway.vision.errors import GalleryError
from gateway.vision.events import FACE_DECISION, decision_data
from gateway.vision.gallery import Gallery
from gateway.vision.models import fetch, load_manifest
from gateway.vision.operations import Erased, FaceUnlearn, GalleryFile, erase_elder
from gateway.vision.retention import header_for
from tests.support.broker import Mosquitto
from tests.support.gateway import config, running
from tests.support.journal import journal
from tests.support.subscriber import Subscriber
from tests.support.wait import eventually
from tests.sync.test_downlink import BASE, ask, refuse_responses
from tests.vision.test_events import MODELS
from tests.vision.test_service import recorded_events

MODEL = "mobilefacenet-foamliu-128d@b7120c09"


def _enrolled(data_dir: Path) -> Gallery:
    gallery = Gallery.open(data_dir / "faces.db", data_dir / "faces.key", MODEL, create=True)
    vectors = np.random.default_rng(5).standard_normal((3, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gallery.add("E1024", vectors[:2])
    gallery.add("E2048", vectors[2:])
    gallery.set_confusable("E1024", [("E2048", 0.5)])
    return gallery


def _delivered_decisions(data_dir: Path, *decisions: dict[str, Any]) -> None:
    """Face decisions the platform has had, still in the journal for review on site."""
    store = Store(StoreSection(), data_dir / "gateway.db", SystemClock(), ClockSync("never", 30))
    store.start()
    try:
        stored = [store.record(Event(FACE_DECISION, d)) for d in decisions]
        store.mark_delivered([Delivered(e.seq, e.lane) for e in stored]).result()
    finally:
        store.stop()


def test_the_platform_erases_an_elders_face(tmp_path: Path, mosquitto: Mosquitto) -> None:
    data_dir = tmp_path / "var"
    gallery = _enrolled(data_dir)
    hers = {"outcome": "accepted", "elder_id": "E1024", "candidates": [], "confusable_with": []}
    theirs = {
        **hers,
        "elder_id": "E2048",
        "candidates": [{"elder_id": "E2048", "score": 0.7}, {"elder_id": "E1024", "score": 0.6}],
        "confusable_with": ["E1024"],
    }
    _delivered_decisions(data_dir, hers, theirs)
    cooling = data_dir / "face-cooldown.json"  # as a counter leaves it: both in cooldown
    cooling.write_text(json.dumps({"E1024": 1000, "E2048": 2000}))
    sub = Subscriber(mosquitto.port)
    try:
        with running(config(data_dir, mosquitto.port)) as gw:  # no camera configured
            sub.wait_for(lambda m: any(x.topic == f"{BASE}/status" for x in m))
            first = ask(sub, "face.remove", {"transaction": "rm-1", "elder_id": "E1024"})
            assert json.loads(cooling.read_text()) == {"E2048": 2000}  # no trace of E1024
            assert first["status"] == "ok"
            assert first["data"] == {
                "elder_id": "E1024",
                "templates_erased": 2,
                "audit_frames_erased": 0,
                "decisions_erased": 1,
                "decisions_erased_at_delivery": 0,
                "decisions_rewritten": 1,
            }
            again = ask(sub, "face.remove", {"transaction": "rm-1", "elder_id": "E1024"})
            assert again["repeat"] is True and again["data"] == first["data"]
            absent = ask(sub, "face.remove", {"transaction": "rm-2", "elder_id": "E1024"})
            assert absent["status"] == "ok" and absent["data"]["templates_erased"] == 0
            bad = ask(sub, "face.remove", {"transaction": "rm-3", "elder_id": "张三"})
            assert bad["status"] == "error" and "elder_id" in bad["message"]
            # passes the schema's pattern in Python's regex engine; not E2048, and said so
            newline = ask(sub, "face.remove", {"transaction": "rm-4", "elder_id": "E2048\n"})
            assert newline["status"] == "error" and "elder id 'E2048\\n'" in newline["message"]
            assert gw.sync is not None and gw.sync.downlink.counts["ok"] == 2
    finally:
        sub.close()
    assert gallery.refresh_if_changed()
    assert gallery.snapshot.elders == ("E2048",)
    assert gallery.confusables() == []
    # hers went; E2048's acceptance stays (the audit copy, her cooldown at a restart), without E1024
    without_her = {**theirs, "candidates": theirs["candidates"][:1], "confusable_with": []}
    assert [e.data for e in journal(data_dir / "gateway.db", "face.")] == [without_her]
    store = Store(StoreSection(), data_dir / "gateway.db", SystemClock(), ClockSync("never", 30))
    store.start()
    try:
        assert [d for _, d in store.recent(FACE_DECISION.name, 3_600_000)] == [without_her]
    finally:
        store.stop()


@pytest.mark.parametrize("camera", [None, "rtsp://127.0.0.1:8554/counter"])
def test_an_erasure_keeps_her_sealed_id_only_where_a_counter_could_know_her(
    tmp_path: Path, camera: str | None
) -> None:
    """The gallery lists an erased elder for a counter that may have her in memory. A site
    without a camera runs none: nothing would ever take the entry in, and her id, sealed with
    the key beside it, would stay in faces.db (and in `gateway gallery stats`) for good."""
    data_dir = tmp_path / "var"
    gallery = _enrolled(data_dir)
    _delivered_decisions(data_dir)
    vision = VisionSection.model_validate({"camera": {"source": camera}})
    db = data_dir / "gateway.db"
    journal_file = Journal(db, StoreSection().key_path(db))
    assert erase_elder(vision, data_dir, "E1024", journal_file).templates == 2
    assert gallery.refresh_if_changed()
    assert [elder for _, elder in gallery.erasures() or []] == ([] if camera is None else ["E1024"])


def test_an_erasure_that_cannot_rewrite_the_cooldown_file_says_so_and_a_retry_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Her id stays in the file while the card is full: answered "ok", the answer would be
    stored and a repeat answered from it, and nothing would ever take the entry out."""
    data_dir = tmp_path / "var"
    _enrolled(data_dir)
    _delivered_decisions(data_dir)
    cooling = data_dir / cooldown.FILE
    cooling.write_text(json.dumps({"E1024": 1000, "E2048": 2000}))
    db = data_dir / "gateway.db"
    journal_file = Journal(db, StoreSection().key_path(db))
    save = cooldown.replace_private

    def disk_full(_path: Path, _data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cooldown, "replace_private", disk_full)
    with pytest.raises(GalleryError, match=r"not erased: her cooldown entry \(\[Errno 28\]"):
        erase_elder(VisionSection(), data_dir, "E1024", journal_file)
    assert "E1024" in json.loads(cooling.read_text())
    monkeypatch.setattr(cooldown, "replace_private", save)
    assert erase_elder(VisionSection(), data_dir, "E1024", journal_file).templates == 0
    assert json.loads(cooling.read_text()) == {"E2048": 2000}


def test_a_damaged_gallery_file_does_not_keep_her_pictures_and_decisions(tmp_path: Path) -> None:
    """The card damaged faces.db: the erasure stopped at it, and the kept pictures of her
    face, her decisions and her cooldown entry stayed, however often it was asked again.
    Everything else goes; the answer still says her templates were not erased."""
    data_dir = tmp_path / "var"
    _enrolled(data_dir)
    hers = {"outcome": "accepted", "elder_id": "E1024", "candidates": [], "confusable_with": []}
    _delivered_decisions(data_dir, hers)
    (data_dir / cooldown.FILE).write_text(json.dumps({"E1024": 1000}))
    cfg = VisionSection()
    frame = cfg.audit.path(data_dir) / "decision-1.frame"
    frame.parent.mkdir(parents=True)
    frame.write_bytes(header_for(1000, ["E1024"]) + b"sealed picture")
    damaged = bytearray((data_dir / "faces.db").read_bytes())
    for page in range(1, len(damaged) // 4096):  # every page's header but the file's own
        damaged[page * 4096 : page * 4096 + 200] = b"\xff" * 200
    (data_dir / "faces.db").write_bytes(bytes(damaged))
    db = data_dir / "gateway.db"
    with pytest.raises(GalleryError, match=r"not erased: her templates \(.*malformed") as err:
        erase_elder(cfg, data_dir, "E1024", Journal(db, StoreSection().key_path(db)))
    assert "Erased: 0 template(s), 1 audit frame(s), 1 delivered decision(s)" in str(err.value)
    assert not frame.exists()
    assert json.loads((data_dir / cooldown.FILE).read_text()) == {}
    assert [e for e in journal(db, "face.") if e.data.get("elder_id") == "E1024"] == []


def _decision(outcome: Outcome, elder: str | None = None, *candidates: str) -> dict[str, Any]:
    return decision_data(
        Decision(outcome, 2.0, 1, 1.0, elder, candidates=tuple((c, 0.5) for c in candidates)),
        camera="counter-1",
        policy=Policy.from_config(DecisionSection()),
        models=MODELS,
        timings_ms={"total": 12.0},
        audit_frame=False,
    )


def test_decisions_waiting_for_the_network_at_an_erasure_are_sent_then_leave_the_journal(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Erased on the device beside the running gateway (as `gateway gallery remove` does)
    while decisions naming her wait for the network, and the gateway restarted before it is
    back: her acceptance is sent as recorded, a face not told apart with her among its
    candidates and another elder's acceptance naming her as a look-alike without her, in
    order, and once delivered the journal, read with its key, names her no more and keeps that
    acceptance."""
    data_dir = tmp_path / "var"
    _enrolled(data_dir)
    decisions = [
        _decision(Outcome.ACCEPTED, "E1024"),
        _decision(Outcome.UNCERTAIN, None, "E2048", "E1024"),
        _decision(Outcome.ACCEPTED, "E2048"),
        {**_decision(Outcome.ACCEPTED, "E2048", "E2048", "E1024"), "confusable_with": ["E1024"]},
    ]
    without_her = {**decisions[3], "candidates": decisions[3]["candidates"][:1]}
    without_her["confusable_with"] = []
    with running(config(data_dir, None)) as gw:  # no broker
        recorded = [gw.store.record(Event(FACE_DECISION, d)) for d in decisions]
        journal_file = Journal(gw.store.path, gw.store.key_path)
        erased = erase_elder(VisionSection(), data_dir, "E1024", journal_file)
    assert erased == Erased(
        templates=2, audit_frames=0, decisions=0, decisions_at_delivery=2, decisions_rewritten=1
    )

    sub = Subscriber(mosquitto.port)
    try:
        with running(config(data_dir, mosquitto.port)) as gw:
            sub.wait_for(lambda _: {e.event_id for e in recorded} <= sub.event_ids())
            eventually(lambda: gw.store.usage[Lane.P1].count == 0)
    finally:
        sub.close()
    sent = [(e["event_id"], e["data"]) for e in sub.events() if e["type"] == FACE_DECISION.name]
    undecided = {**decisions[1], "candidates": decisions[1]["candidates"][:1]}
    expected = [decisions[0], undecided, decisions[2], without_her]
    assert sent == [(e.event_id, d) for e, d in zip(recorded, expected, strict=True)]
    assert recorded_events(data_dir / "gateway.db") == [
        (recorded[2].event_id, decisions[2]),
        (recorded[3].event_id, without_her),
    ]


def test_an_erasure_whose_response_cannot_be_stored_is_reported_done(tmp_path: Path) -> None:
    """The templates are gone from faces.db whatever happens to the store afterwards: the
    platform must not hear "not applied" and believe the elder's face is still held."""
    data_dir = tmp_path / "var"
    gallery = _enrolled(data_dir)
    store = Store(StoreSection(), data_dir / "gateway.db", SystemClock(), ClockSync("never", 30))
    store.start()
    try:
        sent: list[Message] = []
        _, operations = build(VisionSection(), data_dir, store)
        downlink = Downlink(
            DownlinkSection(), store, Topics("e", "s", "g"), sent.append, operations
        )
        downlink.start()
        try:
            refuse_responses(store.path)
            payload = b'{"transaction": "rm-1", "elder_id": "E1024"}'
            reply = downlink.handle("e/s/g/request/face.remove", payload)
        finally:
            downlink.stop()
    finally:
        store.stop()
    assert reply is not None and reply["status"] == "ok", reply
    assert reply["data"] == {
        "elder_id": "E1024",
        "templates_erased": 2,
        "audit_frames_erased": 0,
        "decisions_erased": 0,
        "decisions_erased_at_delivery": 0,
        "decisions_rewritten": 0,
    }
    assert "not remembered" in reply["message"]
    assert gallery.refresh_if_changed() and gallery.snapshot.elders == ("E2048",)


def test_a_damaged_gallery_file_gets_an_error_reply_and_the_gateway_goes_on(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (data_dir / "faces.db").write_bytes(b"not a database")
    sub = Subscriber(mosquitto.port)
    try:
        with running(config(data_dir, mosquitto.port)):
            sub.wait_for(lambda m: any(x.topic == f"{BASE}/status" for x in m))
            reply = ask(sub, "face.remove", {"transaction": "rm-1", "elder_id": "E1024"})
            assert reply["status"] == "error" and "not a face gallery" in reply["message"]
            reply = ask(sub, "face.unlearn", {"transaction": "ul-1", "elder_id": "E1024"})
            assert reply["status"] == "error" and "its key" in reply["message"]
            assert ask(sub, "ping", {"transaction": "p-1"})["status"] == "ok"
    finally:
        sub.close()


def _photo(path: Path, name: str | None = None) -> dict[str, Any]:
    item = {"data": base64.b64encode(path.read_bytes()).decode()}
    return item if name is None else {**item, "name": name}


def test_the_platform_enrols_an_elder_from_photos(
    tmp_path: Path, mosquitto: Mosquitto, models_dir: Path, faces_dir: Path
) -> None:
    df = faces_dir / "deepface"
    data_dir = tmp_path / "var"
    cfg = config(data_dir, mosquitto.port, vision={"models_dir": str(models_dir)})
    sub = Subscriber(mosquitto.port)
    wall = tmp_path / "wall.png"  # a photo with no face in it
    cv2.imwrite(str(wall), np.full((240, 320, 3), 96, np.uint8))
    front, left = _photo(df / "img13.jpg", "front"), _photo(df / "img14.jpg", "left")
    unusable = {
        "transaction": "en-0",
        "elder_id": "E1024",
        "photos": [front, {"name": "scrambled", "data": "not base64!"}, _photo(wall), left],
    }
    request = {"transaction": "en-1", "elder_id": "E1024", "photos": [front, left]}
    try:
        with running(cfg):  # no camera configured
            sub.wait_for(lambda m: any(x.topic == f"{BASE}/status" for x in m))
            # a new elder: an unusable photo may be hers, beside photos of somebody else
            mixed = ask(sub, "face.enrol", unusable)
            assert (mixed["status"], mixed["data"]["outcome"]) == ("ok", "refused")
            assert [(p["name"], p["reason"]) for p in mixed["data"]["photos"]] == [
                ("front", None),
                ("scrambled", "corrupt"),
                ("photo 3", "no_face"),
                ("left", None),
            ]
            first = ask(sub, "face.enrol", request)
            assert first["status"] == "ok", first
            data = first["data"]
            assert (data["outcome"], data["templates_added"], data["templates"]) == (
                "enrolled",
                2,
                2,
            )
            assert "enrol 3 photos" in data["message"]
            assert ask(sub, "face.enrol", request) == {**first, "repeat": True}
            # the same pictures again under a new transaction (a retry after a lost reply)
            retry = ask(sub, "face.enrol", {**request, "transaction": "en-2"})
            assert (retry["data"]["templates_added"], retry["data"]["already_enrolled"]) == (0, 2)
            # enrolled now: checked against her templates, the unusable photos are left out
            later = ask(sub, "face.enrol", {**unusable, "transaction": "en-5"})["data"]
            assert (later["outcome"], later["already_enrolled"]) == ("enrolled", 2)
            # the same person under another id is flagged, not added
            other = {
                "transaction": "en-3",
                "elder_id": "E2048",
                "photos": [_photo(df / "img15.jpg")],
            }
            flagged = ask(sub, "face.enrol", other)["data"]
            assert flagged["outcome"] == "flagged"
            assert [c["elder_id"] for c in flagged["conflicts"]] == ["E1024"]
            refused = ask(sub, "face.enrol", {**other, "transaction": "en-4", "photos": []})
            assert refused["status"] == "error" and "photos" in refused["message"]
            erased = ask(sub, "face.remove", {"transaction": "rm-1", "elder_id": "E1024"})
            assert erased["data"]["templates_erased"] == 2
    finally:
        sub.close()
    gallery = Gallery.open(data_dir / "faces.db", data_dir / "faces.key", MODEL)
    assert gallery.snapshot.elders == ()


def test_without_models_an_enrolment_is_refused_with_the_reason(
    tmp_path: Path, mosquitto: Mosquitto, faces_dir: Path
) -> None:
    data_dir = tmp_path / "var"
    empty = tmp_path / "no-models"
    empty.mkdir()
    cfg = config(data_dir, mosquitto.port, vision={"models_dir": str(empty)})
    sub = Subscriber(mosquitto.port)
    request = {
        "transaction": "en-1",
        "elder_id": "E1024",
        "photos": [_photo(faces_dir / "deepface" / "img13.jpg")],
    }
    try:
        with running(cfg):
            sub.wait_for(lambda m: any(x.topic == f"{BASE}/status" for x in m))
            reply = ask(sub, "face.enrol", request)
            assert reply["status"] == "error" and "missing" in reply["message"]
            assert ask(sub, "ping", {"transaction": "p-1"})["status"] == "ok"
    finally:
        sub.close()


def test_staff_confirm_an_uncertain_elder_and_the_counter_learns_her_face(
    tmp_path: Path, mosquitto: Mosquitto, models_dir: Path, faces_dir: Path, analyzer: Analyzer
) -> None:
    """img12 and img3 show one woman about 25 years apart: enrolled from the old photo, the
    counter is not sure (uncertain, her as the candidate). Staff confirm; she is accepted."""
    df = faces_dir / "deepface"
    data_dir = tmp_path / "var"
    camera = tmp_path / "camera"
    camera.mkdir()
    shutil.copyfile(df / "img3.jpg", camera / "a.jpg")
    vision = {
        "models_dir": str(models_dir),
        "camera": {"source": str(camera), "fps": 15, "replay_hold_s": 0.6, "replay_gap_s": 0.8},
    }
    cfg = config(data_dir, mosquitto.port, vision=vision)
    gallery = Gallery.open(data_dir / "faces.db", data_dir / "faces.key", MODEL, create=True)
    rules = cfg.config.vision.decision
    assert enrol(gallery, analyzer, "E3", [df / "img12.jpg"], rules=rules).status == "enrolled"
    sub = Subscriber(mosquitto.port)
    try:
        with running(cfg) as gw:
            sub.wait_for(lambda m: any(x.topic == f"{BASE}/status" for x in m))
            # the birth message names the models the counter runs, as its decisions do
            models = gw.model_versions()
            assert sorted(models) == ["antispoof_v1se", "antispoof_v2", "detector", "recognizer"]
            eventually(lambda: sub.of_topic(f"{BASE}/status")[-1].json()["models"] == models)
            eventually(lambda: len(recorded_events(gw.store.path)) == 1, timeout=60)
            ((event_id, decision),) = recorded_events(gw.store.path)
            assert (decision["outcome"], decision["confirmable"]) == ("uncertain", True)
            assert [c["elder_id"] for c in decision["candidates"]] == ["E3"]

            def confirm(txn: str, elder: str, event: str = event_id) -> dict[str, Any]:
                request = {"transaction": txn, "event_id": event, "elder_id": elder}
                return ask(sub, "face.confirm", request)

            stranger = confirm("cf-1", "E9")
            assert stranger["status"] == "error" and "not among" in stranger["message"]
            unheld = confirm("cf-2", "E3", "0193a2e4-0000-7000-8000-000000000000")
            assert unheld["status"] == "error" and "nothing to confirm" in unheld["message"]
            learned = confirm("cf-3", "E3")
            assert learned["status"] == "ok", learned
            assert learned["data"] == {
                "event_id": event_id,
                "elder_id": "E3",
                "templates": 2,
                "replaced": None,
            }
            again = confirm("cf-4", "E3")
            assert again["status"] == "error" and "nothing to confirm" in again["message"]
        # settled by hand after the replay had ended: a restart would not settle her again
        cooldown_file = data_dir / cooldown.FILE
        assert "E3" in json.loads(cooldown_file.read_text())
        cooldown_file.unlink()  # the next visit is another day
        with running(cfg) as gw:  # the next visit
            session = gw.store.session
            sub.wait_for(
                lambda m: any(
                    x.topic == f"{BASE}/status" and x.json()["session"] == session for x in m
                )
            )
            eventually(lambda: len(recorded_events(gw.store.path)) == 2, timeout=60)
            _, decision = recorded_events(gw.store.path)[-1]
            assert (decision["outcome"], decision["elder_id"]) == ("accepted", "E3")
            assert decision["confirmable"] is False
            assert decision["learned_from"] == event_id  # the confirmation that made it
            # it was not her after all: staff undo that confirmation
            undo = decision["learned_from"]
            request = {"transaction": "ul-1", "elder_id": "E3", "event_id": undo}
            undone = ask(sub, "face.unlearn", request)
            assert undone["status"] == "ok", undone
            assert undone["data"] == {"elder_id": "E3", "templates_removed": 1, "templates": 1}
            request = {"transaction": "ul-2", "elder_id": "E3"}
            assert ask(sub, "face.unlearn", request)["data"]["templates_removed"] == 0
        with running(cfg) as gw:  # as before the confirmation
            eventually(lambda: len(recorded_events(gw.store.path)) == 3, timeout=60)
            _, decision = recorded_events(gw.store.path)[-1]
            assert decision["outcome"] == "uncertain"
    finally:
        sub.close()


def test_undoing_confirmations_where_nobody_is_enrolled_creates_no_gallery(tmp_path: Path) -> None:
    cfg = VisionSection()
    unlearn = FaceUnlearn(cfg, GalleryFile(cfg, tmp_path))
    reply = unlearn({"transaction": "ul-1", "elder_id": "E1024"})
    assert reply.data == {"elder_id": "E1024", "templates_removed": 0, "templates": 0}
    assert list(tmp_path.iterdir()) == []  # neither a gallery nor a key


def test_the_counter_comes_up_once_its_models_are_fetched_without_a_restart(
    tmp_path: Path,
    mosquitto: Mosquitto,
    models_dir: Path,
    faces_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An installer who started the gateway before `gateway models fetch` need not restart
    it (and interrupt the alarms): the face stage is tried again and announces its models."""
    monkeypatch.setattr(lifecycle, "RETRY_MIN_S", 0.0)
    camera = tmp_path / "camera"
    camera.mkdir()
    shutil.copyfile(faces_dir / "deepface" / "img3.jpg", camera / "a.jpg")
    installed = tmp_path / "models"
    installed.mkdir()
    vision = {"models_dir": str(installed), "camera": {"source": str(camera), "fps": 15}}
    sub = Subscriber(mosquitto.port)
    try:
        with running(config(tmp_path / "var", mosquitto.port, vision=vision)) as gw:
            health = gw.services_health()["vision"]
            assert health["state"] == "not started" and "missing" in health["error"]
            gw.retry()
            assert gw.services_health()["vision"]["attempts"] == 2
            fetched = fetch(str(models_dir), installed, load_manifest())
            assert all(r.action == "installed" for r in fetched)
            gw.retry()
            assert gw.services_health()["vision"]["camera"]["state"] != "not started"
            models = gw.model_versions()
            assert sorted(models) == ["antispoof_v1se", "antispoof_v2", "detector", "recognizer"]
            eventually(lambda: sub.of_topic(f"{BASE}/status")[-1].json().get("models") == models)
    finally:
        sub.close()
