"""Mutated platform requests (bit flips, cuts, wrong JSON types, deep nesting, invalid UTF-8,
duplicate keys, stray MQTT 5 properties) between valid ones, through a real broker: each is
answered once and counted, the valid ones are applied once, and alarms recorded meanwhile are
all delivered. Seeded: the same requests on every run."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.events import Event
from tests.support.broker import Mosquitto
from tests.support.events import ALARM
from tests.support.gateway import config, running
from tests.support.subscriber import Subscriber
from tests.support.wait import eventually

BASE = "eldercare/site-test/gw-test"
OPS = ("ping", "rebirth", "outbox.stats", "face.remove", "face.unlearn", "face.confirm")
VALUES: tuple[Any, ...] = (None, True, 0, -1, 2**70, 1.5e308, "", "x" * 200, [], {}, [[[]]])


def valid(op: str, txn: str) -> dict[str, Any]:
    request: dict[str, Any] = {"transaction": txn}
    if op.startswith("face."):
        request["elder_id"] = "elder-7"
    if op == "face.confirm":
        request["event_id"] = "0193a2e4-0000-7000-8000-000000000000"
    return request


def mutated(rng: random.Random, op: str, txn: str) -> bytes:
    request = valid(op, txn)
    kind = rng.randrange(9)
    if kind == 0:  # a field of the wrong type, or an extra one
        request[rng.choice([*request, "extra"])] = rng.choice(VALUES)
        return json.dumps(request).encode()
    if kind == 1:
        del request[rng.choice(list(request))]
        return json.dumps(request).encode()
    body = bytearray(json.dumps(request).encode())
    if kind == 2:
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        return bytes(body)
    if kind == 3:
        return bytes(body[: rng.randrange(len(body))])
    if kind == 4:
        return b"[" * rng.choice([999, 1001, 5000]) + b"]" * rng.choice([0, 999])
    if kind == 5:
        return body.replace(b"{", b'{"transaction": "dup", ', 1)
    if kind == 6:
        return body.replace(b'"transaction": "', b'"transaction": "\\ud800', 1)
    if kind == 7:
        return body[:-1] + rng.choice([b', "n": 1e999}', b', "n": NaN}', b', "n": ' + b"9" * 4301])
    return rng.randbytes(rng.randint(1, 64))


def properties(rng: random.Random) -> Properties | None:
    """What a platform may set, which the gateway must not follow or choke on: answers go to
    response/<op> whatever the request says."""
    if rng.random() < 0.5:
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = rng.choice(["elsewhere/answers", f"{BASE}/request/ping"])
    props.CorrelationData = rng.randbytes(rng.choice([1, 4000]))
    props.ContentType = rng.choice(["image/jpeg", ""])
    props.UserProperty = [("k", "v" * rng.randrange(100))]
    return props


@pytest.fixture
def caught(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def test_mutated_requests_are_each_answered_once_and_change_nothing_else(
    tmp_path: Path, mosquitto: Mosquitto, caught: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(20261207)
    sub = Subscriber(mosquitto.port)
    platform = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="mutator", protocol=mqtt.MQTTv5)
    platform.connect("127.0.0.1", mosquitto.port)
    platform.loop_start()
    cfg = config(tmp_path / "var", mosquitto.port, downlink={"max_payload_bytes": 65_536})
    try:
        with running(cfg) as gw:
            assert gw.sync is not None
            eventually(lambda: gw.sync is not None and gw.sync.link.connected)
            sub.wait_for(lambda m: any(x.topic == f"{BASE}/status" for x in m))
            births = len(sub.of_topic("/status"))
            sent: Counter[str] = Counter()
            valid_txns: dict[str, str] = {}
            alarms = []
            for i in range(400):
                op = rng.choice(OPS)
                if i % 4 == 0:
                    valid_txns[f"valid-{i}"] = op
                    body = json.dumps(valid(op, f"valid-{i}")).encode()
                else:
                    body = mutated(rng, op, f"bad-{i}")
                if i % 40 == 0:
                    alarms.append(gw.store.record(Event(ALARM, {"n": i})).event_id)
                sent[op] += 1
                platform.publish(
                    f"{BASE}/request/{op}", body, qos=1, properties=properties(rng)
                ).wait_for_publish(5)
            total = sum(sent.values())
            sub.wait_for(lambda m: sum("/response/" in x.topic for x in m) >= total, timeout=60)
            answers = [m.json() for m in sub.messages if "/response/" in m.topic]
            health = gw.sync.downlink.health()
            assert gw.sync.downlink.healthy()
            eventually(lambda: set(alarms) <= sub.event_ids())
            rebirths = len(sub.of_topic("/status")) - births
    finally:
        platform.loop_stop()
        platform.disconnect()
        sub.close()
    assert Counter(a["op"] for a in answers) == sent
    by_txn = Counter(a["transaction"] for a in answers)
    for txn, op in valid_txns.items():
        assert by_txn[txn] == 1, txn
        (answer,) = (a for a in answers if a["transaction"] == txn)
        assert answer["status"] == "ok" or op.startswith("face."), answer
    assert rebirths == sum(
        a["op"] == "rebirth" and a["status"] == "ok" and not a.get("repeat") for a in answers
    )
    assert health["requests"]["received"] == total
    assert sum(health["errors"].values()) == sum(a["status"] == "error" for a in answers)
    assert all(a["message"] and len(a["message"]) <= 500 for a in answers if a["status"] == "error")
    assert not [r for r in caught.records if r.exc_info or r.levelno >= logging.ERROR]
