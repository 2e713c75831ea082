"""End to end: enrol from photos, replay a camera of photos, decisions recorded in the store."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest

from gateway import clock as clock_module
from gateway import private
from gateway.clock import ClockSync, SystemClock
from gateway.config import StoreSection
from gateway.events import Lane
from gateway.lifecycle import StartupError, Supervisor
from gateway.store import Delivered, Store
from gateway.store.erasure import Journal
from gateway.vision import cooldown, late_erasure
from gateway.vision import service as service_module
from gateway.vision.analyze import Analyzer
from gateway.vision.audit import AuditFrames
from gateway.vision.camera import ImageFolder, Lockstep
from gateway.vision.config import AuditSection, CameraSection, GallerySection, VisionSection
from gateway.vision.confirm import Confirmations
from gateway.vision.enroll import assess_photo, enrol
from gateway.vision.errors import ModelError
from gateway.vision.evaluate import embed_photo
from gateway.vision.gallery import Gallery, erase
from gateway.vision.images import fit_within, read_image
from gateway.vision.models import Manifest
from gateway.vision.operations import Erased, erase_elder
from gateway.vision.pipeline import DecisionEvent
from gateway.vision.retention import ExpiredFrames, read_names
from gateway.vision.service import VisionService
from tests.support.clock import ManualClock
from tests.support.disk import fill
from tests.support.journal import journal
from tests.support.netcam import NetworkCamera
from tests.support.wait import eventually
from tests.vision.test_events import SCHEMA_FILE
from tests.vision.test_gallery import damage_gallery_file

SCHEMA = json.loads(SCHEMA_FILE.read_text())


def deepface_people(folder: Path) -> list[list[str]]:
    """Groups of photos of one person, from master.csv's 'Yes' pairs."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    with (folder / "master.csv").open() as fh:
        for row in csv.DictReader(fh):
            a, b = root(row["file_x"]), root(row["file_y"])
            if row["Decision"] == "Yes":
                parent[a] = b
    groups: dict[str, list[str]] = {}
    for name in list(parent):
        groups.setdefault(root(name), []).append(name)
    return sorted(sorted(g) for g in groups.values())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(
        StoreSection(), tmp_path / "data" / "gateway.db", SystemClock(), ClockSync("never", 30)
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


def recorded_events(db: Path) -> list[tuple[str, dict[str, Any]]]:
    """(event id, data) of each recorded face decision, in order."""
    return [(e.event_id, e.data) for e in journal(db, "face.decision")]


def recorded(db: Path) -> list[dict[str, Any]]:
    return [data for _, data in recorded_events(db)]


@pytest.fixture(scope="module")
def replay(
    tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, analyzer: Analyzer
) -> tuple[Path, list[tuple[str, str | None]], list[tuple[str, list[Path]]]]:
    """A folder of photos in the order the camera shows them, the expected outcome of each,
    and who is enrolled with which photos (the other photos of the people shown)."""
    deepface, lfw = faces_dir / "deepface", faces_dir / "lfw-dev" / "images"
    accept = VisionSection().decision.accept_threshold
    folder = tmp_path_factory.mktemp("camera")
    expected: list[tuple[str, str | None]] = []
    enrolments: list[tuple[str, list[Path]]] = []

    def show(
        source: Path | bytes, name: str, outcome: str | None, elder: str | None = None
    ) -> None:
        target = folder / f"{len(list(folder.iterdir())):02d}-{name}"
        if isinstance(source, Path):
            shutil.copyfile(source, target)
        else:
            target.write_bytes(source)
        if outcome is not None:
            expected.append((outcome, elder))

    for group in deepface_people(deepface):
        usable = [deepface / n for n in group if assess_photo(analyzer, deepface / n).ok]
        if len(usable) < 2:
            continue
        elder = f"elder-{usable[0].stem}"
        enrolments.append((elder, usable[:-1]))
        # accepted, unless the one replayed photo scores below the accept threshold against
        # every enrolment photo: then the gateway is not sure and offers the elder to staff
        shown = analyzer.analyze(fit_within(read_image(usable[-1]), 640), live=False)
        assert shown.embedding is not None
        best = max(float(shown.embedding @ embed_photo(analyzer, p)[0]) for p in usable[:-1])
        outcome = "accepted" if best >= accept else "uncertain"
        show(usable[-1], usable[-1].name, outcome, elder)
    # people never enrolled: LFW photos of people with one photo, the first three usable ones
    singles = (p for p in sorted(lfw.glob("*/*_0001.jpg")) if len(list(p.parent.iterdir())) == 1)
    strangers = list(islice((p for p in singles if assess_photo(analyzer, p).ok), 3))
    for photo in strangers:
        show(photo, photo.name, "unknown")
    antispoof = faces_dir / "antispoof"
    show(antispoof / "image_F1.jpg", "F1.jpg", "spoof")  # printed photo
    show(antispoof / "image_F2.jpg", "F2.jpg", "spoof")  # phone screen
    show(antispoof / "image_T1.jpg", "T1.jpg", "unknown")  # live, not enrolled
    show(deepface / "couple.jpg", "couple.jpg", "multiple_faces")
    show(deepface / "selfie-many-people.jpg", "selfie.jpg", "multiple_faces")
    # bad input: skipped and counted, the camera goes on
    show(b"\xff\xd8\xff\xe0 not a jpeg", "corrupt.jpg", None)
    show((deepface / "img2.jpg").read_bytes()[:20000], "truncated.jpg", None)
    # a grey (IR camera) and a 16-bit frame of the live, unenrolled face
    t1 = read_image(antispoof / "image_T1.jpg")
    grey = cv2.imencode(".png", cv2.cvtColor(t1, cv2.COLOR_BGR2GRAY))[1].tobytes()
    show(grey, "T1-grey.png", "unknown")
    wide = cv2.imencode(".png", t1.astype(np.uint16) * 257)[1].tobytes()
    show(wide, "T1-16bit.png", "unknown")
    return folder, expected, enrolments


def test_photo_replay_end_to_end(
    store: Store,
    replay: tuple[Path, list[tuple[str, str | None]], list[tuple[str, list[Path]]]],
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    manifest: Manifest,
) -> None:
    folder, expected, enrolments = replay
    data_dir = store.path.parent
    cfg = vision_cfg.model_copy(
        update={
            "camera": CameraSection(
                source=str(folder), fps=15, replay_hold_s=0.6, replay_gap_s=0.8
            ),
            "liveness_alongside": True,  # as on a Pi 4
        }
    )
    gallery = Gallery.open(
        data_dir / "faces.db", data_dir / "faces.key", manifest.recognizer.model_id, create=True
    )
    for elder, photos in enrolments:
        result = enrol(gallery, analyzer, elder, photos, rules=cfg.decision)
        assert result.status == "enrolled", result.message
    seen: list[DecisionEvent] = []
    confirmations = Confirmations(cfg.decision.confirm_within_s)
    service = VisionService(
        cfg, data_dir, store, realtime=False, listeners=[seen.append], confirmations=confirmations
    )
    service.start()
    assert service.wait(timeout=300)
    assert service.healthy()  # a replay that came to its end is not a failure
    health = service.health()
    service.stop()

    decisions = recorded(store.path)
    assert len(seen) == len(decisions)
    assert [(d["outcome"], d["elder_id"] or _top(d)) for d in decisions] == expected
    assert sum(d["outcome"] == "accepted" for d in decisions) >= len(enrolments) - 1
    for data in decisions:
        jsonschema.validate(data, SCHEMA)
        assert data["models"] == manifest_ids(manifest)
        assert data["camera"] == "counter-1"
    # staff may confirm who an uncertain elder was; no other decision teaches the counter
    assert all(d["confirmable"] == (d["outcome"] == "uncertain") for d in decisions)
    # each held with its candidates' enrolments, so a confirmation after an erasure and a new
    # enrolment of the same id is refused
    held = [p for d in seen if (p := confirmations.get(d.event.event_id)) is not None]
    assert held
    for pending in held:
        assert [e for e, _ in pending.candidates] == list(pending.anchors)
        assert all(a is not None and gallery.holds(e, a) for e, a in pending.anchors.items())
    accepted = [d for d in decisions if d["outcome"] == "accepted"]
    assert all(d["score"] >= cfg.decision.accept_threshold for d in accepted)
    assert all(d["frames_used"] >= cfg.decision.k for d in accepted)
    assert all(d["timings_ms"]["embed"] > 0 and d["timings_ms"]["liveness"] > 0 for d in accepted)

    assert health["camera"]["state"] == "ended"
    assert health["camera"]["failed_reads"] > 0  # the two unusable photos, skipped
    # the empty frames between the photos: the detector saw the first of each stretch only
    assert health["pipeline"]["still_skipped"] > 0
    assert isinstance(service.feed, Lockstep) and isinstance(service.feed.source, ImageFolder)
    assert service.feed.source.bad_files == 2
    assert health["frame_errors"] == 0 and health["unrecorded_decisions"] == 0
    assert health["gallery"]["beyond_calibration"] is False
    # privacy: no frame, crop or template was written anywhere but the encrypted gallery; the
    # cooldown file holds elder ids and times only
    assert sorted(p.name for p in data_dir.iterdir() if not p.name.startswith("gateway.db")) == [
        "face-cooldown.json",
        "faces.db",
        "faces.key",
    ]
    cooling = json.loads((data_dir / "face-cooldown.json").read_text())
    enrolled = {elder for elder, _ in enrolments}
    assert set(cooling) <= enrolled
    assert all(isinstance(v, int) for v in cooling.values())


def _top(decision: dict[str, object]) -> str | None:
    candidates = decision["candidates"]
    assert isinstance(candidates, list)
    return str(candidates[0]["elder_id"]) if candidates else None


def manifest_ids(manifest: Manifest) -> dict[str, str]:
    return {role: spec.model_id for role, spec in manifest.specs()}


@pytest.fixture
def small_replay(tmp_path: Path, faces_dir: Path) -> Path:
    """Two people: img20 (enrolled below from img21) and the live T1 (not enrolled)."""
    folder = tmp_path / "camera"
    folder.mkdir()
    shutil.copyfile(faces_dir / "deepface" / "img21.jpg", folder / "a.jpg")
    shutil.copyfile(faces_dir / "antispoof" / "image_T1.jpg", folder / "b.jpg")
    return folder


def _small_cfg(vision_cfg: VisionSection, folder: Path, **update: object) -> VisionSection:
    camera = CameraSection(source=str(folder), fps=15, replay_hold_s=0.6, replay_gap_s=0.8)
    return vision_cfg.model_copy(update={"camera": camera, **update})


def _enrol_one(data_dir: Path, analyzer: Analyzer, faces_dir: Path, cfg: VisionSection) -> None:
    gallery = Gallery.open(
        data_dir / "faces.db",
        data_dir / "faces.key",
        analyzer.embedder.model_id,
        create=True,
    )
    photos = [faces_dir / "deepface" / "img20.jpg"]
    assert enrol(gallery, analyzer, "elder-7", photos, rules=cfg.decision).status == "enrolled"


def _run(service: VisionService) -> dict[str, object]:
    service.start()
    assert service.wait(timeout=120)
    health = service.health()
    service.stop()
    return health


def test_audit_keeps_only_the_decision_frames_encrypted(
    tmp_path: Path,
    small_replay: Path,
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    faces_dir: Path,
) -> None:
    data_dir = tmp_path / "data"
    cfg = _small_cfg(vision_cfg, small_replay, audit=AuditSection(enabled=True, retention_days=1))
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    seen: list[DecisionEvent] = []
    _run(VisionService(cfg, data_dir, None, realtime=False, listeners=[seen.append]))
    assert [(d.decision.outcome.value, d.decision.elder_id) for d in seen] == [
        ("accepted", "elder-7"),
        ("unknown", None),
    ]
    kept = sorted((data_dir / "audit").iterdir())
    assert [p.stem for p in kept] == sorted(d.event.event_id for d in seen)
    assert all(d.event.data["audit_frame"] for d in seen)
    assert b"JFIF" not in kept[0].read_bytes()  # encrypted, not a JPEG on disk
    frames = AuditFrames(data_dir / "audit", data_dir / "faces.key", retention_days=1)
    jpeg = frames.export(seen[0].event.event_id)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[2] == 3
    newest = max(p.stat().st_mtime for p in kept)
    assert frames.purge(now=newest + 86_400 - 60) == 0
    assert frames.purge(now=newest + 86_400 + 1) == 2
    assert list((data_dir / "audit").iterdir()) == []


def test_audit_frames_kept_before_the_clock_was_set_keep_their_whole_retention(
    small_replay: Path,
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    faces_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Pi switched off for three days boots with the time it stopped at (fake-hwclock):
    frames kept before NTP answers are filed three days early, and with two days' retention
    would go as soon as the clock is set. They are dated from their running-time stamps, as
    their decisions are. A frame of an earlier run, whose stamp is of another store's running
    time, keeps its file time."""
    state = {"synced": False}
    monkeypatch.setattr(clock_module, "probe", lambda _source: state["synced"])  # adjtimex
    behind_s = 3 * 86_400
    clock = ManualClock(wall_ms=int((time.time() - behind_s) * 1000))
    data_dir = small_replay.parent / "data"
    cfg = _small_cfg(vision_cfg, small_replay, audit=AuditSection(enabled=True, retention_days=2))
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    earlier = data_dir / "audit" / "019a0000-0000-7000-8000-0000000000ee.frame"
    AuditFrames(earlier.parent, data_dir / "faces.key", 2, lambda: 1_000).keep(
        earlier.stem, np.zeros((8, 8, 3), np.uint8)
    )
    a_day_ago = time.time() - 86_400
    os.utime(earlier, (a_day_ago, a_day_ago))
    store = Store(StoreSection(), data_dir / "gateway.db", clock, ClockSync("kernel", 3600))
    store.start()
    try:
        _run(VisionService(cfg, data_dir, store, realtime=False))
        kept = [p for p in earlier.parent.iterdir() if p != earlier]
        assert len(kept) == 2  # elder-7 accepted, a stranger unknown
        filed = time.time() - behind_s  # the time the Pi's clock gave them
        for frame in kept:
            os.utime(frame, (filed, filed))
        clock.step_wall(behind_s * 1000)  # NTP sets the clock
        state["synced"] = True
        store.check_clock()
        assert all(abs(frame.stat().st_mtime - time.time()) < 120 for frame in kept)
        assert abs(earlier.stat().st_mtime - a_day_ago) < 0.01
        assert ExpiredFrames(earlier.parent, 2, store.steady_ms).purge() == 0
    finally:
        store.stop()


def test_a_gallery_beyond_its_calibration_is_reported(
    small_replay: Path,
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    faces_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data_dir = small_replay.parent / "data"
    decision = vision_cfg.decision.model_copy(update={"calibrated_for_elders": 1})
    cfg = _small_cfg(vision_cfg, small_replay, decision=decision)
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    gallery = Gallery.open(
        data_dir / "faces.db", data_dir / "faces.key", analyzer.embedder.model_id
    )
    photos = [faces_dir / "deepface" / "img13.jpg", faces_dir / "deepface" / "img14.jpg"]
    assert enrol(gallery, analyzer, "elder-8", photos, rules=cfg.decision).status == "enrolled"
    seen: list[DecisionEvent] = []
    with caplog.at_level("WARNING", logger="gateway.vision.service"):
        health = _run(VisionService(cfg, data_dir, None, realtime=False, listeners=[seen.append]))
    assert [d.decision.elder_id for d in seen] == ["elder-7", None]  # the counter goes on
    gallery_health = health["gallery"]
    assert isinstance(gallery_health, dict)
    assert gallery_health["elders"] == 2 and gallery_health["calibrated_for_elders"] == 1
    assert gallery_health["beyond_calibration"] is True
    assert "2 elders enrolled but the thresholds are calibrated for 1" in caplog.text
    assert "gateway eval --faces DIR --n 2" in caplog.text


@pytest.fixture
def counter(
    small_replay: Path,
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    faces_dir: Path,
    store: Store,
) -> VisionSection:
    """The small replay's counter on the store's data directory, elder-7 enrolled."""
    cfg = _small_cfg(vision_cfg, small_replay)
    _enrol_one(store.path.parent, analyzer, faces_dir, cfg)
    return cfg


def test_an_elder_accepted_just_before_a_restart_is_not_settled_again_after_it(
    counter: VisionSection, store: Store
) -> None:
    """The cooldown outlives the process: systemd restarts the gateway in seconds, and the
    elder accepted a moment before is still at the counter."""
    data_dir, cfg = store.path.parent, counter
    first = VisionService(cfg, data_dir, store, realtime=False)
    _run(first)
    cooling = data_dir / "face-cooldown.json"
    saved = json.loads(cooling.read_text())
    assert list(saved) == ["elder-7"] and 0 <= store.steady_ms() - saved["elder-7"] < 60_000
    time.sleep(1.1)  # no frames since (a camera lost): she was not seen again meanwhile
    first._save_cooldown()
    assert json.loads(cooling.read_text()) == saved
    assert [d["elder_id"] for d in recorded(store.path)] == ["elder-7", None]
    again = VisionService(cfg, data_dir, store, realtime=False)  # the restarted face stage
    _run(again)
    assert [d["elder_id"] for d in recorded(store.path)] == ["elder-7", None, None]
    assert again.health()["decider"]["cooldown_suppressed"] == 1
    assert "elder-7" in json.loads(cooling.read_text())
    # consent withdrawn: once the counter has reloaded its gallery it writes her no more
    erase(data_dir / "faces.db", "elder-7")
    assert again.gallery is not None and again.gallery.refresh_if_changed()
    again._save_cooldown()
    assert "elder-7" not in json.loads(cooling.read_text())


def test_an_elder_accepted_before_a_night_switched_off_is_accepted_the_next_day(
    small_replay: Path,
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    faces_dir: Path,
    *,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a 12 h cooldown, an elder accepted at 17:30 was still in cooldown at the next
    day's lunch after a night switched off: running time stands still while the gateway is
    off, and she got no decision at all. The journal and the cooldown file both carry the
    wall time of a synchronised clock now, and the night counts."""
    monkeypatch.setattr(clock_module, "probe", lambda _source: True)
    clock = ManualClock(wall_ms=int(time.time() * 1000))
    cfg = _small_cfg(
        vision_cfg,
        small_replay,
        decision=vision_cfg.decision.model_copy(update={"cooldown_s": 12 * 3600}),
    )
    data_dir = tmp_path / "data"

    def day() -> list[str | None]:
        store = Store(StoreSection(), data_dir / "gateway.db", clock, ClockSync("kernel", 30))
        store.start()
        try:
            _run(VisionService(cfg, data_dir, store, realtime=False))
            clock.advance(60_000)
        finally:
            store.stop()
        return [d["elder_id"] for d in recorded(data_dir / "gateway.db")]

    data_dir.mkdir()
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    assert day() == ["elder-7", None]
    assert list(json.loads((data_dir / cooldown.FILE).read_text())) == ["elder-7"]
    clock.step_wall(15 * 3_600_000)  # the night, switched off
    assert day() == ["elder-7", None, "elder-7", None]
    # seen at the counter until the stop, long after her acceptance (the cooldown file says
    # so, the journal does not), then seven hours off: still in her 12 h cooldown, however
    # often the face stage starts again within the session (each start adds the seven hours
    # to the running time the file keeps; once saved with them, a start added them twice)
    store = Store(StoreSection(), data_dir / "gateway.db", clock, ClockSync("kernel", 30))
    store.start()
    clock.advance(11 * 3_600_000)
    (data_dir / cooldown.FILE).write_text(json.dumps({"elder-7": store.steady_ms()}))
    store.stop()
    clock.step_wall(7 * 3_600_000)
    store = Store(StoreSection(), data_dir / "gateway.db", clock, ClockSync("kernel", 30))
    store.start()
    try:
        # two starts of the face stage in this session with her out of view, then she comes
        stranger = _stranger_looping(cfg, data_dir, faces_dir).camera.model_copy(
            update={"replay_loop": False}
        )
        elsewhere = VisionService(cfg.model_copy(update={"camera": stranger}), data_dir, store)
        elsewhere.realtime = False
        _run(elsewhere)
        _run(elsewhere)
        assert "elder-7" in json.loads((data_dir / cooldown.FILE).read_text())
        _run(VisionService(cfg, data_dir, store, realtime=False))
    finally:
        store.stop()
    assert "elder-7" not in [d["elder_id"] for d in recorded(data_dir / "gateway.db")][4:]


def test_a_cooldown_another_process_rewrote_from_an_older_read_is_written_again(
    counter: VisionSection, store: Store
) -> None:
    """An erasure by the CLI (another process) read the file before the counter saved her
    acceptance and wrote it back, without another elder, after it: the counter writes it
    again, or a restart would settle her meal a second time."""
    data_dir, cfg = store.path.parent, counter
    service = VisionService(cfg, data_dir, store, realtime=False)
    _run(service)
    cooling = data_dir / cooldown.FILE
    assert list(json.loads(cooling.read_text())) == ["elder-7"]
    cooldown.save(cooling, {})  # the CLI's rewrite of what it had read
    service._save_cooldown()  # the counter's next turn
    assert list(json.loads(cooling.read_text())) == ["elder-7"]


def _accepted_then_erased(counter: VisionSection, store: Store) -> tuple[VisionService, Path]:
    """Elder-7 accepted by a counter whose replay has ended, then erased by another process
    (the CLI, the platform's request): the counter, and its cooldown file."""
    data_dir = store.path.parent
    service = VisionService(counter, data_dir, store, realtime=False)
    _run(service)
    cooling = data_dir / cooldown.FILE
    assert list(json.loads(cooling.read_text())) == ["elder-7"]
    erase_elder(counter, data_dir, "elder-7", Journal(store.path, store.key_path))
    return service, cooling


def test_an_erasure_by_another_process_is_not_undone_by_the_counters_next_save(
    counter: VisionSection, store: Store
) -> None:
    """face.remove (or gateway gallery remove) takes her out of the gallery and the cooldown
    file. The counter saw the file change and wrote it again from memory, her included, until
    its next gallery reload: as long as refresh_s (up to an hour), and for good if the
    gateway died meanwhile."""
    service, cooling = _accepted_then_erased(counter, store)
    assert json.loads(cooling.read_text()) == {}
    service._save_cooldown()  # the counter's next turn, before its next reload
    assert json.loads(cooling.read_text()) == {}


def test_an_id_erased_and_enrolled_again_before_the_next_reload_is_somebody_new(
    counter: VisionSection, store: Store, analyzer: Analyzer, faces_dir: Path
) -> None:
    """face.remove, then face.enrol of the same id for the right person (a mix-up put
    right), both within one gallery reload: the counter never saw her go, kept the erased
    one's cooldown and wrote it back, so the new elder got no decision for hours."""
    service, cooling = _accepted_then_erased(counter, store)
    gallery = Gallery.configured(counter, store.path.parent)
    photos = [faces_dir / "deepface" / "img17.jpg"]  # not the person erased
    assert enrol(gallery, analyzer, "elder-7", photos, rules=counter.decision).status == "enrolled"
    service._save_cooldown()  # the counter's next turn: the file changed, so it reloads
    assert json.loads(cooling.read_text()) == {}
    assert service.pipeline is not None and service.pipeline.decider.cooldowns(0.0) == {}


def test_an_elder_who_lingered_past_her_acceptance_is_still_in_cooldown_after_a_restart(
    counter: VisionSection, store: Store
) -> None:
    """Accepted long ago by the journal's reckoning, but seen at the counter until just before
    the restart (the cooldown file says so): not accepted again. A damaged file is ignored."""
    data_dir, cfg = store.path.parent, counter
    (data_dir / "face-cooldown.json").write_text(json.dumps({"elder-7": store.steady_ms()}))
    lingered = VisionService(cfg, data_dir, store, realtime=False)
    _run(lingered)
    assert [d["elder_id"] for d in recorded(store.path)] == [None]
    assert lingered.health()["decider"]["cooldown_suppressed"] == 1
    (data_dir / "face-cooldown.json").write_text("{not json")
    _run(VisionService(cfg, data_dir, store, realtime=False))
    assert "elder-7" in [d["elder_id"] for d in recorded(store.path)]


PROBE = np.full(128, 128**-0.5, dtype=np.float32)  # a face held for staff to confirm


def _stranger_looping(vision_cfg: VisionSection, data_dir: Path, faces_dir: Path) -> VisionSection:
    """A camera showing someone not enrolled, again and again."""
    folder = data_dir.parent / "someone-else"
    folder.mkdir()
    shutil.copyfile(faces_dir / "antispoof" / "image_T1.jpg", folder / "a.jpg")
    camera = CameraSection(source=str(folder), fps=15, replay_loop=True)
    return vision_cfg.model_copy(update={"camera": camera})


def _running_with(cfg: VisionSection, store: Store, confirmations: Confirmations) -> VisionService:
    """Started, and past its first frame."""
    service = VisionService(
        cfg, store.path.parent, store, realtime=False, confirmations=confirmations
    )
    service.start()
    try:
        eventually(lambda: service.pipeline is not None and service.pipeline.last_t is not None)
    except BaseException:
        service.stop()
        raise
    return service


def test_a_staff_confirmation_is_saved_for_a_restart_at_once(
    vision_cfg: VisionSection,
    analyzer: Analyzer,
    faces_dir: Path,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No journal event records a confirmation: a crash right after it must not forget her."""
    monkeypatch.setattr(service_module, "COOLDOWN_SAVE_S", 3600.0)  # no periodic save here
    data_dir = store.path.parent
    cfg = _stranger_looping(vision_cfg, data_dir, faces_dir)
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    confirmations = Confirmations(60)
    service = _running_with(cfg, store, confirmations)
    try:
        confirmations.hold("ev-1", PROBE, (("elder-7", 0.5),), track=99)
        confirmations.done("ev-1", "elder-7")
        cooling = data_dir / "face-cooldown.json"
        eventually(lambda: cooling.exists() and "elder-7" in json.loads(cooling.read_text()))
    finally:
        service.stop()


def test_a_face_held_for_staff_goes_once_the_counter_reloads_a_gallery_without_its_elder(
    vision_cfg: VisionSection, analyzer: Analyzer, faces_dir: Path, store: Store
) -> None:
    """Erased by another process (the CLI, the platform's request): a face held for a
    confirmation naming only her goes at the counter's next reload, not ten minutes later."""
    data_dir = store.path.parent
    cfg = _stranger_looping(vision_cfg, data_dir, faces_dir)
    cfg = cfg.model_copy(update={"gallery": GallerySection(refresh_s=0.05)})
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    confirmations = Confirmations(600)
    service = _running_with(cfg, store, confirmations)
    try:
        confirmations.hold("ev-1", PROBE, (("elder-7", 0.5),))
        assert confirmations.get("ev-1") is not None
        erase(data_dir / "faces.db", "elder-7")
        eventually(lambda: confirmations.get("ev-1") is None)
    finally:
        service.stop()
    assert service.health()["confirmable_decisions"] == 0


def _her_at_the_counter(
    vision_cfg: VisionSection,
    analyzer: Analyzer,
    faces_dir: Path,
    store: Store,
    *,
    refresh_s: float = 0.05,
    confirm_within_s: float = 0,
    visits: bool = False,
) -> VisionService:
    """Elder-7 enrolled, and her photo shown again and again to a counter that reloads its
    gallery every ``refresh_s``: running. ``visits``: she is away longer than her cooldown
    between two showings, so each is a decision of its own, and the audit option is on."""
    data_dir = store.path.parent
    folder = data_dir.parent / "her"
    folder.mkdir()
    shutil.copyfile(faces_dir / "deepface" / "img20.jpg", folder / "a.jpg")
    camera = CameraSection(source=str(folder), fps=15, replay_loop=True)
    cfg = vision_cfg.model_copy(
        update={
            "camera": camera.model_copy(update={"replay_gap_s": 12}) if visits else camera,
            "gallery": GallerySection(refresh_s=refresh_s),
        }
    )
    if visits:
        decision = cfg.decision.model_copy(update={"cooldown_s": 10})
        cfg = cfg.model_copy(update={"decision": decision, "audit": AuditSection(enabled=True)})
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    return _running_with(cfg, store, Confirmations(confirm_within_s))


def _decisions_of(db: Path, elder: str) -> list[str]:
    return [e for e, d in recorded_events(db) if d.get("elder_id") == elder]


def _erasure_marks(db: Path, hers: list[str]) -> list[int]:
    """The outbox marks of these decisions: 1 for each marked to leave the journal at its
    delivery."""
    query = (
        "SELECT o.erased FROM outbox o JOIN events e USING (seq) "
        f"WHERE e.event_id IN ({','.join('?' * len(hers))})"
    )
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [int(m or 0) for (m,) in conn.execute(query, hers)]


def test_decisions_the_counter_made_after_an_erasure_read_the_journal_go_too(
    vision_cfg: VisionSection, analyzer: Analyzer, faces_dir: Path, store: Store
) -> None:
    """The erasure (another process) reads the journal, then the counter, which still knows
    her until its next reload, accepts her once more: that decision is marked to leave the
    journal at its delivery like those the erasure found."""
    data_dir = store.path.parent
    service = _her_at_the_counter(vision_cfg, analyzer, faces_dir, store)
    try:
        eventually(lambda: "elder-7" in [d.get("elder_id") for d in recorded(store.path)], 60)
        erase(data_dir / "faces.db", "elder-7")  # the gallery's part; the journal was read
        hers = _decisions_of(store.path, "elder-7")
        eventually(lambda: _erasure_marks(store.path, hers) == [1] * len(hers))
    finally:
        service.stop()
    assert service.health()["erasure_errors"] == 0


def test_decisions_made_after_an_erasure_read_the_journal_go_when_the_counter_stops_first(
    vision_cfg: VisionSection, analyzer: Analyzer, faces_dir: Path, store: Store
) -> None:
    """The gateway is stopped (a restart, an upgrade) after the erasure read the journal but
    before the counter's next reload: the next start never sees her go from its gallery, so
    the decisions it made naming her meanwhile must be marked at the stop, or they stay in
    the journal for ``delivered_retention_days``."""
    data_dir = store.path.parent
    service = _her_at_the_counter(vision_cfg, analyzer, faces_dir, store, refresh_s=3600)
    try:
        eventually(lambda: "elder-7" in [d.get("elder_id") for d in recorded(store.path)], 60)
        erase(data_dir / "faces.db", "elder-7")  # the gallery's part; the journal was read
    finally:
        service.stop()
    hers = _decisions_of(store.path, "elder-7")
    assert hers and _erasure_marks(store.path, hers) == [1] * len(hers)
    assert service.health()["erasure_errors"] == 0


def _frames_naming(folder: Path, elder: str) -> int:
    return sum(elder in read_names(f.read_bytes()) for f in folder.glob("*.frame"))


def test_audit_frames_of_decisions_the_counter_made_after_an_erasure_go_with_them(
    vision_cfg: VisionSection, analyzer: Analyzer, faces_dir: Path, store: Store
) -> None:
    """The erasure deletes the frames naming her, then the counter, which still knows her
    until its next reload, keeps one more of her face: that frame goes at the reload with the
    decision it records, not after the audit retention."""
    data_dir = store.path.parent
    service = _her_at_the_counter(
        vision_cfg, analyzer, faces_dir, store, refresh_s=3600, visits=True
    )
    folder = service.cfg.audit.path(data_dir)
    try:
        eventually(lambda: _frames_naming(folder, "elder-7") > 0, 60)
        erase(data_dir / "faces.db", "elder-7")  # the erasure's parts beside the counter
        ExpiredFrames(folder, 7.0).erase_elder("elder-7")
        eventually(lambda: _frames_naming(folder, "elder-7") > 0, 60)  # one more of hers
    finally:
        service.stop()  # its last reload drops her
    assert _frames_naming(folder, "elder-7") == 0
    assert service.health()["erasure_errors"] == 0


def test_decisions_an_erasure_at_a_reload_could_not_take_out_are_taken_out_later(
    vision_cfg: VisionSection, analyzer: Analyzer, faces_dir: Path, store: Store
) -> None:
    """Another program holds the journal's write lock past the busy timeout when the counter
    reloads without her: that pass fails and is counted; once the lock is let go, a later pass
    marks the decisions the counter made about her in the window, and the file that kept
    them for a restart goes."""
    data_dir = store.path.parent
    left = data_dir / late_erasure.FILE
    service = _her_at_the_counter(vision_cfg, analyzer, faces_dir, store)
    try:
        eventually(lambda: "elder-7" in [d.get("elder_id") for d in recorded(store.path)], 60)
        with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            erase(data_dir / "faces.db", "elder-7")
            eventually(lambda: service.health()["erasure_errors"] == 1, 30)
            assert json.loads(left.read_text()).keys() == {"elder-7"}
            other.execute("ROLLBACK")
        hers = _decisions_of(store.path, "elder-7")
        eventually(lambda: _erasure_marks(store.path, hers) == [1] * len(hers), 30)
        eventually(lambda: service.health()["erasures_pending"] == 0)
        assert not left.exists()
    finally:
        service.stop()
    assert service.health()["erasure_errors"] == 1


def _listed_erasures(data_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(data_dir / "faces.db")) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM erasures").fetchone()[0])


@pytest.mark.parametrize("enrolled_again", [False, True])
def test_decisions_a_gateway_that_died_before_its_reload_made_go_at_the_next_start(
    vision_cfg: VisionSection,
    analyzer: Analyzer,
    faces_dir: Path,
    store: Store,
    enrolled_again: bool,
) -> None:
    """The erasure read the journal, then the counter, still knowing her, accepted her once
    more, and the gateway died (kill -9, a power cut) before its next reload: the gallery
    itself lists her as erased, so the next start takes those decisions out all the same.
    Enrolled again before that start, she is spared, as at a running counter's reload."""
    data_dir = store.path.parent
    first = _her_at_the_counter(vision_cfg, analyzer, faces_dir, store, refresh_s=3600)
    try:
        eventually(lambda: "elder-7" in [d.get("elder_id") for d in recorded(store.path)], 60)
    finally:
        first.stop()  # as far as the journal goes, the same as dying: she was not erased yet
    hers = _decisions_of(store.path, "elder-7")
    # the gallery's part; the journal was read before
    erase(data_dir / "faces.db", "elder-7", key_path=data_dir / "faces.key")
    assert _listed_erasures(data_dir) == 1
    if enrolled_again:
        _enrol_one(data_dir, analyzer, faces_dir, first.cfg)
    cfg = first.cfg.model_copy(update={"gallery": GallerySection(refresh_s=0.05)})
    second = _running_with(cfg, store, Confirmations(0))
    try:
        eventually(lambda: _listed_erasures(data_dir) == 0)
        eventually(lambda: second.health()["erasures_pending"] == 0, 30)  # its pass is done
        expected = [0 if enrolled_again else 1] * len(hers)
        assert _erasure_marks(store.path, hers) == expected
    finally:
        second.stop()
    assert not (data_dir / late_erasure.FILE).exists()
    assert second.health()["erasure_errors"] == 0


def test_an_elder_whose_templates_fail_to_decrypt_at_a_reload_keeps_her_decisions(
    vision_cfg: VisionSection, analyzer: Analyzer, faces_dir: Path, store: Store
) -> None:
    """Her row damaged (a bad write on the card) makes her vanish from the counter's gallery
    at its next reload, but she was not erased: her decisions stay in the journal as they
    were, neither deleted nor marked, and a face held for staff naming her stays confirmable
    (her rows are still in the file)."""
    data_dir = store.path.parent
    service = _her_at_the_counter(vision_cfg, analyzer, faces_dir, store, confirm_within_s=600)
    try:
        eventually(lambda: "elder-7" in [d.get("elder_id") for d in recorded(store.path)], 60)
        service.confirmations.hold("ev-1", PROBE, (("elder-7", 0.5),))
        with contextlib.closing(sqlite3.connect(data_dir / "faces.db")) as conn, conn:
            conn.execute("UPDATE templates SET ciphertext = zeroblob(length(ciphertext))")
        erase(data_dir / "faces.db", "elder-9")  # another write: the counter reloads
        gallery = service.gallery
        assert gallery is not None
        eventually(lambda: gallery.damaged == ("elder-7",))
        # nor is a face held for staff that names her let go as if she were
        assert service.confirmations.get("ev-1") is not None
    finally:
        service.stop()  # the erasure a reload starts is joined
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        marks = conn.execute(
            "SELECT o.erased FROM events e LEFT JOIN outbox o USING (seq) WHERE e.type = ?",
            ("face.decision",),
        ).fetchall()
    assert marks and all(m is None for (m,) in marks)
    assert "elder-7" in [d.get("elder_id") for d in recorded(store.path)]
    # nor is she left out of the cooldown a restart reads: her rows mended (the key put
    # back), she would be charged again for the meal she was accepted for
    assert "elder-7" in json.loads((data_dir / cooldown.FILE).read_text())


def test_a_cooldown_a_full_disk_kept_out_of_its_file_is_written_once_there_is_room(
    small_disk: Path,
    small_replay: Path,
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    faces_dir: Path,
) -> None:
    """Staff settle elder-8 by hand while another program has filled the disk: the file cannot
    take her then, and must take her once there is room, or a restart would forget her."""
    section = StoreSection(min_free_disk_mb=1, reserve_mb=0)
    store = Store(section, small_disk / "gateway.db", SystemClock(), ClockSync("never", 30))
    store.start()
    try:
        cfg = _small_cfg(vision_cfg, small_replay)
        _enrol_one(small_disk, analyzer, faces_dir, cfg)
        gallery = Gallery.open(
            small_disk / "faces.db", small_disk / "faces.key", analyzer.embedder.model_id
        )
        photos = [faces_dir / "deepface" / "img13.jpg", faces_dir / "deepface" / "img14.jpg"]
        assert enrol(gallery, analyzer, "elder-8", photos, rules=cfg.decision).status == "enrolled"
        confirmations = Confirmations(60)
        service = VisionService(cfg, small_disk, store, realtime=False, confirmations=confirmations)
        service.start()
        assert service.wait(timeout=120)
        cooling = small_disk / "face-cooldown.json"
        assert list(json.loads(cooling.read_text())) == ["elder-7"]

        filler = fill(small_disk)
        probe = np.full(128, 128**-0.5, dtype=np.float32)
        confirmations.hold("ev-1", probe, (("elder-8", 0.5),), track=99)
        confirmations.done("ev-1", "elder-8")
        service.stop()  # takes the confirmation in, and cannot write it
        assert service.health()["cooldown_save_errors"] == 1
        assert list(json.loads(cooling.read_text())) == ["elder-7"]  # as it was, not cut short

        filler.unlink()
        service._save_cooldown()  # the counter's next turn
        assert sorted(json.loads(cooling.read_text())) == ["elder-7", "elder-8"]
        assert [p.name for p in small_disk.glob("face-cooldown*")] == [cooling.name]
    finally:
        store.stop()


def test_an_accepted_look_alike_is_named_for_a_second_factor(
    small_replay: Path, analyzer: Analyzer, vision_cfg: VisionSection, faces_dir: Path
) -> None:
    data_dir = small_replay.parent / "data"
    cfg = _small_cfg(vision_cfg, small_replay)
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    gallery = Gallery.open(
        data_dir / "faces.db", data_dir / "faces.key", analyzer.embedder.model_id
    )
    gallery.set_confusable("elder-7", [("elder-8", 0.51)])  # as enrolment registers them
    seen: list[DecisionEvent] = []
    _run(VisionService(cfg, data_dir, None, realtime=False, listeners=[seen.append]))
    assert [(d.event.data["elder_id"], d.event.data["confusable_with"]) for d in seen] == [
        ("elder-7", ["elder-8"]),
        (None, []),
    ]


def test_a_wrong_gallery_key_is_reported_and_the_counter_goes_on(
    tmp_path: Path,
    small_replay: Path,
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    faces_dir: Path,
) -> None:
    data_dir = tmp_path / "data"
    cfg = _small_cfg(vision_cfg, small_replay)
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    (data_dir / "faces.key").unlink()
    Gallery.open(tmp_path / "x.db", data_dir / "faces.key", "m", create=True)  # another key
    seen: list[DecisionEvent] = []
    health = _run(VisionService(cfg, data_dir, None, realtime=False, listeners=[seen.append]))
    assert [d.decision.outcome.value for d in seen] == ["unknown", "unknown"]
    gallery = health["gallery"]
    assert isinstance(gallery, dict)
    assert gallery["key_mismatch"] is True and gallery["undecryptable"] == 1


def test_an_altered_model_stops_the_face_stage_at_start(
    tmp_path: Path,
    small_replay: Path,
    vision_cfg: VisionSection,
    models_dir: Path,
    manifest: Manifest,
) -> None:
    staged = tmp_path / "models"
    shutil.copytree(models_dir, staged, ignore=shutil.ignore_patterns("*.md"))
    target = staged / manifest.antispoof_v2.file
    target.write_bytes(target.read_bytes()[:-1] + b"\x00")
    cfg = _small_cfg(vision_cfg, small_replay, models_dir=staged)
    service = VisionService(cfg, tmp_path / "data", None, realtime=False)
    with pytest.raises(StartupError, match=r"antispoof_v2: .*MiniFASNetV2\.onnx: sha256") as err:
        service.start()
    assert isinstance(err.value.__cause__, ModelError)
    assert not service.healthy()


def test_a_damaged_gallery_file_leaves_the_face_stage_not_started_and_the_rest_running(
    tmp_path: Path, small_replay: Path, vision_cfg: VisionSection, manifest: Manifest
) -> None:
    data_dir = tmp_path / "data"
    damage_gallery_file(data_dir / "faces.db", data_dir / "faces.key", manifest.recognizer.model_id)
    store = Store(StoreSection(), data_dir / "gateway.db", SystemClock(), ClockSync("never", 30))
    vision = VisionService(_small_cfg(vision_cfg, small_replay), data_dir, store, realtime=False)
    supervisor = Supervisor([store, vision])
    supervisor.start_all()
    try:
        health = supervisor.health()
        assert health["vision"]["state"] == "not started"
        assert "faces.db: face gallery damaged or unusable" in health["vision"]["error"]
        assert supervisor.healthy() and store.healthy()  # the alarms' store runs on
    finally:
        supervisor.stop_all()
        vision.stop()


def test_a_damaged_template_costs_that_template_not_the_counter(
    tmp_path: Path,
    small_replay: Path,
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    faces_dir: Path,
) -> None:
    data_dir = tmp_path / "data"
    cfg = _small_cfg(vision_cfg, small_replay)
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    gallery = Gallery.open(
        data_dir / "faces.db", data_dir / "faces.key", analyzer.embedder.model_id
    )
    gallery.add("elder-8", [embed_photo(analyzer, faces_dir / "deepface" / "img13.jpg")[0]])
    with sqlite3.connect(data_dir / "faces.db") as conn:
        conn.execute("UPDATE templates SET nonce = x'00' WHERE elder_id = 'elder-8'")
    seen: list[DecisionEvent] = []
    health = _run(VisionService(cfg, data_dir, None, realtime=False, listeners=[seen.append]))
    assert [(d.decision.outcome.value, d.decision.elder_id) for d in seen] == [
        ("accepted", "elder-7"),
        ("unknown", None),
    ]
    gallery_health = health["gallery"]
    assert isinstance(gallery_health, dict)
    assert gallery_health["undecryptable"] == 1 and gallery_health["elders"] == 1


def test_an_unforeseen_error_at_start_stops_only_the_face_stage(
    tmp_path: Path, small_replay: Path, vision_cfg: VisionSection
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "audit").write_text("a file where the audit folder should be")
    cfg = _small_cfg(vision_cfg, small_replay, audit=AuditSection(enabled=True))
    service = VisionService(cfg, data_dir, None, realtime=False)
    try:
        with pytest.raises(StartupError, match="face stage: FileExistsError"):
            service.start()
        assert not service.healthy()
    finally:
        service.stop()


def test_decisions_the_store_cannot_take_are_counted_and_the_counter_goes_on(
    store: Store,
    small_replay: Path,
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    faces_dir: Path,
) -> None:
    data_dir = store.path.parent
    cfg = _small_cfg(vision_cfg, small_replay)
    _enrol_one(data_dir, analyzer, faces_dir, cfg)
    # another process holds the write lock: the first decision waits for it no longer than an
    # elder should, is taken back and counted; it lets go after that decision, and the
    # decision taken back must not turn up in the journal then
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")

    def let_go(_: DecisionEvent) -> None:
        if other.in_transaction:
            other.execute("ROLLBACK")

    seen: list[DecisionEvent] = []
    service = VisionService(cfg, data_dir, store, realtime=False, listeners=[seen.append, let_go])
    try:
        health = _run(service)
    finally:
        other.close()
    assert [d.decision.outcome.value for d in seen] == ["accepted", "unknown"]
    assert health["unrecorded_decisions"] == 1 and health["frame_errors"] == 0
    assert [d["outcome"] for d in recorded(store.path)] == ["unknown"]  # recording again


def test_a_gallery_file_damaged_while_running_leaves_the_last_gallery_in_use(
    tmp_path: Path,
    small_replay: Path,
    analyzer: Analyzer,
    vision_cfg: VisionSection,
    faces_dir: Path,
) -> None:
    data_dir = tmp_path / "data"
    cfg = _small_cfg(vision_cfg, small_replay, gallery=GallerySection(refresh_s=0.05))
    _enrol_one(data_dir, analyzer, faces_dir, cfg)

    def damage(_: DecisionEvent) -> None:
        for path in data_dir.glob("faces.db*"):
            path.write_bytes(b"\xab" * 4096)

    seen: list[DecisionEvent] = []
    health = _run(
        VisionService(cfg, data_dir, None, realtime=False, listeners=[seen.append, damage])
    )
    assert [d.decision.elder_id for d in seen] == ["elder-7", None]  # both people decided
    refresh_errors = health["gallery_refresh_errors"]
    assert isinstance(refresh_errors, int) and refresh_errors > 0


def test_an_erased_elder_leaves_nothing_on_the_card_once_her_decisions_are_delivered(
    counter: VisionSection, store: Store
) -> None:
    """Consent withdrawn after the counter knew her: accepted (the decision delivered) with
    her frame kept, a face learned from a confirmation, a look-alike in the register, in
    cooldown, and a cooldown copy a power cut left. Afterwards no file in the data directory
    holds her id or her templates' bytes, in any page (-wal, free pages) or copy, and the
    journal, read with its key, no longer names her."""
    data_dir = store.path.parent
    cfg = counter.model_copy(update={"audit": AuditSection(enabled=True, retention_days=1)})
    service = VisionService(cfg, data_dir, store, realtime=False)
    _run(service)
    accepted = next(e for e, d in recorded_events(store.path) if d["elder_id"] == "elder-7")
    gallery = Gallery.configured(cfg, data_dir)
    gallery.add("elder-7", gallery.snapshot.templates_of("elder-7") * 0.99, learned_from=accepted)
    gallery.add("elder-8", np.full((1, 128), 128**-0.5, dtype=np.float32))
    gallery.set_confusable("elder-8", [("elder-7", 0.5)])
    with contextlib.closing(sqlite3.connect(data_dir / "faces.db")) as conn:
        ciphertexts = [
            bytes(c)
            for (c,) in conn.execute(
                "SELECT ciphertext FROM templates WHERE elder_id = ?", ("elder-7",)
            )
        ]
    assert len(ciphertexts) == 2 and (data_dir / "audit" / f"{accepted}.frame").exists()
    (seq,) = (e.seq for e in journal(store.path, "face.") if e.event_id == accepted)
    store.mark_delivered([Delivered(seq, Lane.P1)]).result()
    crash_copy = data_dir / f".{cooldown.FILE}.812.1401"
    crash_copy.write_text(json.dumps({"elder-7": store.steady_ms()}))
    old = time.time() - private.LEFTOVER_AGE_S - 5
    os.utime(crash_copy, (old, old))
    assert "elder-7" in json.loads((data_dir / cooldown.FILE).read_text())

    journal_file = Journal(store.path, store.key_path)
    erased = erase_elder(cfg, data_dir, "elder-7", journal_file)
    # her acceptance's frame, and the stranger's (T1, not enrolled): with her the only elder
    # enrolled, she was the closest match of its every frame, and it might have been her
    assert erased == Erased(
        templates=2, audit_frames=2, decisions=1, decisions_at_delivery=0, decisions_rewritten=0
    )

    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        content = path.read_bytes()
        assert b"elder-7" not in content, path.name
        assert not any(c in content for c in ciphertexts), path.name
    assert gallery.refresh_if_changed() and gallery.snapshot.elders == ("elder-8",)
    assert gallery.confusables() == []
    assert [d["elder_id"] for d in recorded(store.path)] == [None]


def test_a_camera_too_slow_for_k_frames_in_the_window_is_said_in_the_log_and_health(
    store: Store, vision_cfg: VisionSection, faces_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Asked for 15 frames a second, the network camera sends 3: five frames never fit in
    one second, so nobody could ever be accepted. The installer reads why, not just that
    every elder is uncertain."""
    photo = cv2.resize(read_image(faces_dir / "antispoof" / "image_T1.jpg"), (640, 480))
    pictures = []
    for i in range(4):  # a sensor's noise, so the picture is not frozen
        frame = photo.copy()
        frame[:4, :4] = i * 60
        pictures.append(cv2.imencode(".jpg", frame)[1].tobytes())
    camera = NetworkCamera(pictures, "installer", "s3cret-Pw", fps=3)
    camera.start()
    cfg = vision_cfg.model_copy(
        update={
            "camera": CameraSection(source=camera.url("installer:s3cret-Pw"), fps=15),
            "decision": vision_cfg.decision.model_copy(update={"k": 5, "n": 5}),
            "gallery": GallerySection(refresh_s=0.2),
        }
    )
    service = VisionService(cfg, store.path.parent, store)
    try:
        with caplog.at_level("WARNING", logger="gateway.vision.service"):
            service.start()
            eventually(lambda: service.health()["too_slow"] is not None, timeout=30)
        health = service.health()
    finally:
        service.stop()
        camera.stop()
    assert 1 <= health["face_frames_per_s"] <= 3.5
    assert "decision.k = 5 frames cannot fit in decision.window_s = 1.0 s" in health["too_slow"]
    warned = [r.getMessage() for r in caplog.records if "too slow to accept" in r.getMessage()]
    assert len(warned) == 1 and "frames a second the counter gets of a face" in warned[0]
    assert "s3cret" not in caplog.text
