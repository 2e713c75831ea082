"""The platform erases an elder's face over MQTT, camera or not, and exactly once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.vision.gallery import Gallery
from tests.support.broker import Mosquitto
from tests.support.gateway import config, running
from tests.support.subscriber import Subscriber
from tests.sync.test_downlink import BASE, ask

MODEL = "mobilefacenet-foamliu-128d@b7120c09"


def _enrolled(data_dir: Path) -> Gallery:
    gallery = Gallery.open(data_dir / "faces.db", data_dir / "faces.key", MODEL, create=True)
    vectors = np.random.default_rng(5).standard_normal((3, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gallery.add("E1024", vectors[:2])
    gallery.add("E2048", vectors[2:])
    gallery.set_confusable("E1024", [("E2048", 0.5)])
    return gallery


def test_the_platform_erases_an_elders_face(tmp_path: Path, mosquitto: Mosquitto) -> None:
    data_dir = tmp_path / "var"
    gallery = _enrolled(data_dir)
    sub = Subscriber(mosquitto.port)
    try:
        with running(config(data_dir, mosquitto.port)) as gw:  # no camera configured
            sub.wait_for(lambda m: any(x.topic == f"{BASE}/status" for x in m))
            first = ask(sub, "face.remove", {"transaction": "rm-1", "elder_id": "E1024"})
            assert first["status"] == "ok"
            assert first["data"] == {"elder_id": "E1024", "templates_erased": 2}
            again = ask(sub, "face.remove", {"transaction": "rm-1", "elder_id": "E1024"})
            assert again["repeat"] is True and again["data"] == first["data"]
            absent = ask(sub, "face.remove", {"transaction": "rm-2", "elder_id": "E1024"})
            assert absent["status"] == "ok" and absent["data"]["templates_erased"] == 0
            bad = ask(sub, "face.remove", {"transaction": "rm-3", "elder_id": "张三"})
            assert bad["status"] == "error" and "elder_id" in bad["message"]
            assert gw.sync is not None and gw.sync.downlink.counts["ok"] == 2
    finally:
        sub.close()
    assert gallery.refresh_if_changed()
    assert gallery.snapshot.elders == ("E2048",)
    assert gallery.confusables() == []


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
            assert ask(sub, "ping", {"transaction": "p-1"})["status"] == "ok"
    finally:
        sub.close()
