"""Two gateways with one identity (a copied SD card or config), against a real broker."""

from __future__ import annotations

import logging
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from gateway.config import load_config
from gateway.sync import Sync
from gateway.sync.identity import is_conflict
from tests.support.broker import Mosquitto
from tests.support.crashee import killed_with_will
from tests.support.gateway import config, sync_alone
from tests.support.subscriber import Subscriber
from tests.support.wait import eventually
from tests.sync.test_crash import write_config

BASE = "eldercare/site-test/gw-test"
CONFLICT = "another gateway is using gateway id gw-test at site site-test"


def conflicts(sync: Sync) -> int:
    return int(sync.health()["broker"]["identity_conflicts"])


def test_two_gateways_with_one_identity_both_name_it(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        sync_alone(config(tmp_path / "a", mosquitto.port)) as (_, first),
        sync_alone(config(tmp_path / "b", mosquitto.port)) as (_, second),
    ):
        eventually(lambda: conflicts(first) > 0 and conflicts(second) > 0, timeout=10)
        for sync in (first, second):
            assert sync.health()["broker"]["identity_conflict"] is True
            assert sync.link.state != "stopped"  # nothing else changes: it keeps trying
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and CONFLICT in r.message]
    assert len(errors) == 2  # once per process, however often the broker switched them
    assert "`gateway.id`" in errors[0].message


def test_the_gateway_with_the_lower_session_names_it(tmp_path: Path, mosquitto: Mosquitto) -> None:
    older = config(tmp_path / "older", mosquitto.port)
    for _ in range(3):  # a gateway that has run longer: its session counter is ahead
        with sync_alone(config(tmp_path / "older", None)):
            pass
    with (
        sync_alone(older) as (older_store, _),
        sync_alone(config(tmp_path / "copy", mosquitto.port)) as (copy_store, copy),
    ):
        assert copy_store.session < older_store.session
        eventually(lambda: conflicts(copy) > 0, timeout=10)


def test_a_gateway_restarting_cleanly_never_names_it(tmp_path: Path, mosquitto: Mosquitto) -> None:
    loaded = config(tmp_path / "var", mosquitto.port)
    for _ in range(3):
        with sync_alone(loaded) as (_, sync):
            # its own birth follows the retained status of the run before, on one connection
            eventually(lambda: sync.identity.echoed)
            assert conflicts(sync) == 0


def test_a_gateway_on_a_new_disk_never_names_its_old_installation(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sub = Subscriber(mosquitto.port)
    try:
        # the retained will of the installation this disk replaced, its session far ahead
        old = b'{"state":"offline","gateway":"gw-test","site":"site-test","session":50,'
        old += b'"instance":"0badf00d","reason":"connection_lost"}'
        sub.publish(f"{BASE}/status", old, retain=True)
        with sync_alone(config(tmp_path / "var", mosquitto.port)) as (store, sync):
            eventually(lambda: sync.identity.echoed)
            assert store.session == 1 and conflicts(sync) == 0
    finally:
        sub.close()


def test_a_gateway_killed_and_restarted_never_names_it_even_if_its_will_comes_late(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    path = write_config(tmp_path, mosquitto.port)
    sub = Subscriber(mosquitto.port)
    try:
        will = killed_with_will(path, sub)
        with sync_alone(load_config(path)) as (_, sync):
            eventually(lambda: sync.identity.echoed)
            # the earlier run's will once more, after this run's birth (as a second, bridged
            # broker that noticed the old connection late would deliver it)
            sub.publish(will.topic, will.payload)
            sync.identity.echoed = False
            sync.announce()  # comes back after the will, on the same connection
            eventually(lambda: sync.identity.echoed)
            assert conflicts(sync) == 0
    finally:
        sub.close()


def test_a_broker_restarting_again_and_again_never_names_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with sync_alone(config(tmp_path / "var", mosquitto.port)) as (_, sync):
        for n in range(1, 5):
            # its birth came back: what the broker held was read before each restart
            eventually(lambda n=n: sync.link.connects == n and sync.identity.echoed)
            sync.identity.echoed = False
            mosquitto.restart()
        eventually(lambda: sync.link.connects == 5 and sync.identity.echoed)
        health = sync.health()["broker"]
        assert health["disconnects"] >= 4
        assert health["identity_conflicts"] == 0 and health["identity_conflict"] is False


@pytest.mark.parametrize(
    ("status", "echoed", "expected"),
    [
        ({"instance": "other", "session": 5}, True, True),
        ({"instance": "other", "session": 4}, True, False),  # an earlier run of ours
        ({"session": 7}, True, True),  # a gateway of a version without instance
        ({"instance": "other", "session": 9}, False, False),  # before our birth came back
        ({"instance": "ours", "session": 5}, True, False),
        ({"instance": "other", "session": True}, True, False),
        ({"instance": "other"}, True, False),
    ],
)
def test_the_rule(status: dict[str, object], echoed: bool, expected: bool) -> None:
    assert is_conflict(status, "ours", 5, echoed) is expected


def test_a_status_nested_too_deeply_to_read_is_nobody_and_no_error(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """A retained status on the gateway's topic that no JSON parser takes ("[" 100,000 deep):
    not another gateway, and no traceback in the journal at each connect."""
    topic = f"{BASE}/status"
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.publish(topic, b"[" * 100_000, qos=1, retain=True).wait_for_publish(5)
        with sync_alone(config(tmp_path / "var", mosquitto.port)) as (_, sync):
            eventually(lambda: sync.identity.echoed, timeout=10)  # its own status came after
            assert conflicts(sync) == 0
    finally:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
