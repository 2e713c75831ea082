"""Platform requests: validated, answered with the transaction id, applied at most once."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import gateway.sync.downlink as downlink_module
from gateway.app import Gateway
from gateway.clock import ClockSync, SystemClock
from gateway.config import DownlinkSection, StoreSection
from gateway.events import iso_utc
from gateway.store import Receipt, Store, db, writer
from gateway.sync import Sync
from gateway.sync.downlink import (
    MESSAGE_MAX,
    STOPPING,
    Downlink,
    Operation,
    Reply,
    RequestError,
)
from gateway.sync.mqtt import Handover, Message, Receipts
from gateway.sync.topics import Topics
from tests.support.broker import Mosquitto
from tests.support.gateway import config, running, sync_alone
from tests.support.relay import Relay
from tests.support.subscriber import Received, Subscriber
from tests.support.wait import eventually

BASE = "eldercare/site-test/gw-test"


@contextmanager
def gateway_and_platform(tmp_path: Path, port: int) -> Iterator[tuple[Gateway, Subscriber]]:
    sub = Subscriber(port)
    try:
        cfg = config(tmp_path / "var", port, downlink={"max_payload_bytes": 512})
        with running(cfg) as gw:
            sub.wait_for(lambda m: any(x.topic == f"{BASE}/status" for x in m))
            eventually(lambda: gw.sync is not None and gw.sync.link.connected)
            yield gw, sub
    finally:
        sub.close()


def ask(sub: Subscriber, op: str, payload: Any) -> dict[str, Any]:
    before = len(sub.of_topic(f"/response/{op}"))
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sub.publish(f"{BASE}/request/{op}", body)
    sub.wait_for(lambda _m: len(sub.of_topic(f"/response/{op}")) > before)
    reply: dict[str, Any] = sub.of_topic(f"/response/{op}")[before].json()
    return reply


def state(db: Path) -> tuple[int, int]:
    """(requests answered, next event seq): what a request could have changed."""
    with sqlite3.connect(db) as conn:
        answered = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        next_seq = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
    return int(answered), int(next_seq)


def test_ping_and_outbox_stats(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with gateway_and_platform(tmp_path, mosquitto.port) as (gw, sub):
        pong = ask(sub, "ping", {"transaction": "t-1"})
        assert pong["transaction"] == "t-1" and pong["status"] == "ok"
        assert pong["data"]["pong"] is True and pong["data"]["session"] == gw.store.session
        stats = ask(sub, "outbox.stats", {"transaction": "t-2"})
        assert set(stats["data"]["lanes"]) == {"p0", "p1", "p2"}


def test_a_repeated_transaction_is_answered_again_but_not_applied_twice(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with gateway_and_platform(tmp_path, mosquitto.port) as (gw, sub):
        births = len(sub.of_topic("/status"))
        first = ask(sub, "rebirth", {"transaction": "rb-1"})
        sub.wait_for(lambda _m: len(sub.of_topic("/status")) == births + 1)
        again = ask(sub, "rebirth", {"transaction": "rb-1"})
        assert first["status"] == again["status"] == "ok"
        assert again["repeat"] is True and "repeat" not in first
        assert {k: v for k, v in again.items() if k != "repeat"} == first
        assert ask(sub, "ping", {"transaction": "p-1"})["status"] == "ok"
        assert len(sub.of_topic("/status")) == births + 1, "rebirth was applied twice"
        reused = ask(sub, "ping", {"transaction": "rb-1"})
        assert reused["status"] == "error" and "already used for rebirth" in reused["message"]
        assert gw.sync is not None and gw.sync.downlink.counts["repeat"] == 1


def test_a_transaction_reused_for_another_request_is_refused_not_answered_as_applied(
    tmp_path: Path,
) -> None:
    """A sender that reuses its ids: "ok, repeat" for the erasure of E2048 would say she was
    erased when it was E1024 who was. The same request written otherwise is a repeat."""
    handler = Applying()
    topic = "eldercare/s/g/request/face.remove"
    with downlink_alone(tmp_path, handler, op="face.remove") as (downlink, sent):
        first = downlink.handle(topic, b'{"transaction":"rm-1","elder_id":"E1024"}')
        again = downlink.handle(topic, b'{ "elder_id": "E1024", "transaction": "rm-1" }')
        other = downlink.handle(topic, b'{"transaction":"rm-1","elder_id":"E2048"}')
    assert first is not None and again is not None and other is not None
    assert first["status"] == "ok" and again == {**first, "repeat": True}
    assert other["status"] == "error" and other["transaction"] == "rm-1"
    assert other["message"] == "already used for another face.remove request"
    assert handler.applied == ["rm-1"] and downlink.errors["transaction_reused"] == 1
    assert [json.loads(m.payload) for m in sent] == [first, again, other]


def test_a_rebirth_whose_answer_cannot_be_stored_is_not_said_to_be_unapplied(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The status goes out again inside the handler, outside the store's transaction."""
    with gateway_and_platform(tmp_path, mosquitto.port) as (gw, sub):
        births = len(sub.of_topic("/status"))
        refuse_responses(gw.store.path)
        reply = ask(sub, "rebirth", {"transaction": "rb-1"})
        sub.wait_for(lambda _m: len(sub.of_topic("/status")) == births + 1)
        assert reply["status"] == "ok" and reply["message"].startswith("applied, but not remem")


def test_bad_requests_get_an_error_a_count_and_change_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with gateway_and_platform(tmp_path, mosquitto.port) as (gw, sub):
        db = gw.store.path
        before = state(db)
        cases: list[tuple[str, Any, str]] = [
            ("ping", b"{" * 2000, "2000 B, over 512 B"),
            ("ping", b"\xff\xfe not json", "not JSON: 'utf-8' codec can't decode byte 0xff"),
            ("ping", '{"transaction": "u16"}'.encode("utf-16"), "not JSON: 'utf-8' codec"),
            ("ping", [1, 2, 3], "request: must be of type object"),
            ("ping", {"transaction": "x", "extra": 1}, "Additional properties"),
            ("ping", {"transaction": 42}, "transaction: must be of type string"),
            ("ping", {}, "transaction"),
            ("reboot.everything", {"transaction": "x2"}, "unknown op"),
        ]
        for op, payload, expected in cases:
            reply = ask(sub, op, payload)
            assert reply["status"] == "error", reply
            assert expected in reply["message"], (expected, reply)
        assert ask(sub, "ping", {"transaction": "x", "extra": 1})["transaction"] == "x"
        errors = gw.sync.downlink.errors if gw.sync else {}
        assert errors["too_large"] == 1 and errors["invalid_json"] == 2
        assert errors["unknown_op"] == 1 and errors["schema"] == 5
        assert state(db) == before
        assert ask(sub, "ping", {"transaction": "still-alive"})["status"] == "ok"


def test_a_request_on_a_topic_that_is_not_utf8_is_counted_as_a_bad_topic(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """mosquitto refuses such a topic from its publisher, but a broker that passes it on hands
    paho a message whose topic cannot be read. It is counted with the other requests on a
    topic that is not ours (no answer can name its op), and the next request is answered."""
    from paho.mqtt.client import MQTTMessage

    with gateway_and_platform(tmp_path, mosquitto.port) as (gw, sub):
        assert gw.sync is not None
        downlink = gw.sync.downlink
        client = gw.sync.link._client
        assert client is not None
        message = MQTTMessage(topic=f"{BASE}/request/p".encode() + b"\xffng")
        message.payload = b'{"transaction": "t-1"}'
        client.on_message(client, None, message)  # as paho hands it over
        eventually(lambda: downlink.errors["bad_topic"] == 1, timeout=5)
        assert ask(sub, "ping", {"transaction": "t-2"})["status"] == "ok"
        assert downlink.health()["errors"] == {"bad_topic": 1}
        responses = [m.topic for m in sub.messages if "/response/" in m.topic]
        assert responses == [f"{BASE}/response/ping"]


def test_a_request_sent_while_the_gateway_is_offline_is_answered_when_it_returns(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The broker keeps the gateway's session (mqtt.session_expiry_s) and queues requests."""
    sub = Subscriber(mosquitto.port)
    cfg = config(tmp_path / "var", mosquitto.port, mqtt={"session_expiry_s": 3600})
    try:
        with running(cfg) as gw:
            eventually(lambda: gw.sync is not None and gw.sync.link.connected)
        sub.publish(f"{BASE}/request/ping", json.dumps({"transaction": "while-away"}))
        with running(cfg):
            sub.wait_for(lambda _m: bool(sub.of_topic("/response/ping")))
        (reply,) = sub.of_topic("/response/ping")
        assert reply.json()["transaction"] == "while-away" and reply.json()["status"] == "ok"
    finally:
        sub.close()


def test_a_retained_request_is_refused_not_applied_at_every_subscription(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The broker hands a retained message to every new subscription: once its transaction
    was forgotten (``remember_transactions``), a retained request would be applied again."""
    sub = Subscriber(mosquitto.port)
    topic = f"{BASE}/request/rebirth"
    try:
        sub._client.publish(topic, json.dumps({"transaction": "kept"}), qos=1, retain=True)
        with running(config(tmp_path / "var", mosquitto.port)) as gw:
            sub.wait_for(lambda _m: bool(sub.of_topic("/response/rebirth")))
            (reply,) = [m.json() for m in sub.of_topic("/response/rebirth")]
            assert reply["transaction"] == "kept" and reply["status"] == "error"
            assert reply["message"].startswith("retained: not applied")
            assert gw.sync is not None and gw.sync.downlink.errors["retained"] == 1
            assert state(gw.store.path)[0] == 0  # nothing applied, nothing remembered
            assert ask(sub, "rebirth", {"transaction": "live"})["status"] == "ok"
            # published retained while the gateway listens: refused too (MQTT 5 passes the
            # flag on as published), not applied now and refused at the next connection
            sub._client.publish(topic, json.dumps({"transaction": "kept-2"}), qos=1, retain=True)
            sub.wait_for(lambda _m: len(sub.of_topic("/response/rebirth")) == 3)
            reply = sub.of_topic("/response/rebirth")[-1].json()
            assert (reply["transaction"], reply["status"]) == ("kept-2", "error")
            assert state(gw.store.path)[0] == 1  # "live" only
    finally:
        sub._client.publish(topic, b"", qos=1, retain=True)  # the broker forgets it
        sub.close()


def test_a_request_our_handler_fails_on_is_answered_and_not_remembered(tmp_path: Path) -> None:
    """E.g. the face gallery locked by a long enrolment: the sender hears, and may retry."""
    attempts: list[str] = []

    def flaky(request: Mapping[str, Any]) -> Reply:
        attempts.append(str(request["transaction"]))
        if len(attempts) == 1:
            raise sqlite3.OperationalError("database is locked")
        return Reply({"pong": True})

    with downlink_alone(tmp_path, flaky) as (downlink, sent):
        topic = "eldercare/s/g/request/ping"
        failed = downlink.handle(topic, b'{"transaction": "t-1"}')
        assert failed is not None and failed["status"] == "error"
        assert failed["message"] == "not applied: internal error (see the log)"
        retried = downlink.handle(topic, b'{"transaction": "t-1"}')
        assert retried is not None and retried["status"] == "ok" and "repeat" not in retried
        assert attempts == ["t-1", "t-1"] and downlink.errors["internal"] == 1
        assert [json.loads(m.payload)["status"] for m in sent] == ["error", "ok"]


class Applying:
    """A handler that answers ``data`` and keeps the transaction of each request it applies."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self.data = {"pong": True} if data is None else data
        self.applied: list[str] = []

    def __call__(self, request: Mapping[str, Any]) -> Reply:
        self.applied.append(str(request["transaction"]))
        return Reply(self.data)


@contextmanager
def downlink_alone(
    tmp_path: Path,
    handler: Callable[[Mapping[str, Any]], Reply],
    cfg: DownlinkSection | None = None,
    op: str = "ping",
    applies_elsewhere: bool = False,
    *,
    commit_timeout_s: float = 30.0,
    online: Callable[[], bool] = lambda: True,
    store_cfg: StoreSection | None = None,
) -> Iterator[tuple[Downlink, list[Message]]]:
    """A downlink on a real store whose replies are collected instead of published (while
    ``online`` says a connection would take them)."""
    store = Store(
        store_cfg or StoreSection(), tmp_path / "gateway.db", SystemClock(), ClockSync("never", 30)
    )
    store.start()
    sent: list[Message] = []

    def send(msg: Message) -> bool:
        if not online():
            return False
        sent.append(msg)
        return True

    downlink = Downlink(
        cfg or DownlinkSection(),
        store,
        Topics("eldercare", "s", "g"),
        send,
        [Operation(op, handler, applies_elsewhere)],
        commit_timeout_s=commit_timeout_s,
    )
    downlink.start()
    try:
        yield downlink, sent
    finally:
        downlink.stop()
        store.stop()


def refuse_responses(db: Path) -> None:
    """From now on the store cannot record a response (as on a failing SD card)."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON requests BEGIN "
            "SELECT RAISE(ABORT, 'disk I/O error'); END"
        )


@pytest.mark.parametrize("elsewhere", [False, True])
def test_a_response_the_store_cannot_keep_says_truly_whether_it_was_applied(
    tmp_path: Path, elsewhere: bool
) -> None:
    """A change inside the store rolls back with its response: "not applied". A change the
    handler made elsewhere (the face gallery's own file) stays: the sender hears it was."""
    erased: list[str] = []

    def erase(request: Mapping[str, Any]) -> Reply:
        erased.append(str(request["transaction"]))
        return Reply({"pong": True})

    with downlink_alone(tmp_path, erase, applies_elsewhere=elsewhere) as (downlink, sent):
        refuse_responses(tmp_path / "gateway.db")
        reply = downlink.handle("eldercare/s/g/request/ping", b'{"transaction": "t-1"}')
        assert reply is not None and json.loads(sent[-1].payload) == reply
        assert erased == ["t-1"]
        if elsewhere:
            assert reply["status"] == "ok" and reply["data"] == {"pong": True}
            assert reply["message"].startswith("applied, but not remembered (")
            assert downlink.errors["unremembered"] == 1 and downlink.counts["ok"] == 1
        else:
            assert reply["status"] == "error"
            assert reply["message"].startswith("not applied: ") and downlink.errors["store"] == 1


def fill_the_disk(downlink: Downlink) -> None:
    """From now on the database cannot grow by a page: SQLite's "database or disk is full",
    as on a full SD card once the disk reserve is spent too."""
    downlink._store.write(lambda conn: conn.execute("PRAGMA max_page_count = 1")).result()


@pytest.mark.parametrize("elsewhere", [False, True])
def test_a_full_disk_gets_the_transaction_and_says_whether_it_was_applied(
    tmp_path: Path, elsewhere: bool
) -> None:
    big = {"rows": ["x" * 100] * 200}  # a response that needs pages the disk no longer has
    with downlink_alone(tmp_path, lambda _r: Reply(big), applies_elsewhere=elsewhere) as (
        downlink,
        sent,
    ):
        fill_the_disk(downlink)
        downlink.received("eldercare/s/g/request/ping", b'{"transaction": "t-1"}')
        eventually(lambda: len(sent) == 1)
        reply = json.loads(sent[0].payload)
        assert reply["transaction"] == "t-1"
        if elsewhere:
            assert reply["status"] == "ok" and reply["data"] == big
            assert reply["message"].startswith("applied, but not remembered (disk full")
            assert downlink.errors["unremembered"] == 1
        else:
            assert reply["status"] == "error"
            assert reply["message"].startswith("not applied: disk full")
            assert downlink.errors["store"] == 1
        assert "internal" not in downlink.errors
    assert state(tmp_path / "gateway.db")[0] == 0


@pytest.mark.parametrize("elsewhere", [False, True])
def test_a_response_not_stored_in_time_is_taken_back_and_said_so(
    tmp_path: Path, elsewhere: bool
) -> None:
    """The store is held up (a long commit on a slow SD card) and the response not yet in a
    commit when the time is up: it is taken back, so the answer can say "not applied" (or,
    for a change made outside the store, "not remembered"), and a repeat is applied anew."""
    ping = Applying()

    # long enough for the first request's commit on a loaded machine; the second one's is
    # held up until its answer is out
    with downlink_alone(tmp_path, ping, applies_elsewhere=elsewhere, commit_timeout_s=1.0) as (
        downlink,
        sent,
    ):
        downlink.received("eldercare/s/g/request/ping", b'{"transaction": "t-0"}')
        eventually(lambda: len(sent) == 1)  # the worker is past its start
        release, holding = threading.Event(), threading.Event()

        def hold(_conn: sqlite3.Connection) -> bool:
            holding.set()
            return release.wait(10)

        held = downlink._store.write(hold)
        # in its own commit, before t-1 comes: queued with it, t-1 would join that commit,
        # which is waited for (not taken back) and ends only as the hold times out
        assert holding.wait(10)
        downlink.received("eldercare/s/g/request/ping", b'{"transaction": "t-1"}')
        eventually(lambda: len(sent) == 2)
        release.set()
        held.result(10)
        reply = json.loads(sent[1].payload)
        assert reply["transaction"] == "t-1" and downlink.errors["store_timeout"] == 1
        if elsewhere:
            assert reply["status"] == "ok" and reply["data"] == {"pong": True}
            assert reply["message"].startswith("applied, but not remembered")
        else:
            assert reply["status"] == "error"
            assert reply["message"] == (
                "not applied: the store did not commit within 1 s; send it again"
            )
        downlink._store.write(lambda _conn: None).result(10)  # any later commit
        assert state(tmp_path / "gateway.db")[0] == 1  # t-0's
        again = downlink.handle("eldercare/s/g/request/ping", b'{"transaction": "t-1"}')
        assert again is not None and again["status"] == "ok" and "repeat" not in again
        assert ping.applied == ["t-0", "t-1", "t-1"]
        assert state(tmp_path / "gateway.db")[0] == 2


def test_a_repeat_sent_while_the_first_response_is_being_committed_is_answered_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer is stuck in the very commit that holds the first response (a slow SD
    card): that one cannot be taken back, so it is answered "not known whether applied".
    The sender's repeat, handled while that commit still hangs, is told it was applied (from
    the record) once it lands, not "not applied" for the clash of the two."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(writer, "SETTLE_GRACE_S", 0.2)
    release = threading.Event()
    applied: list[str] = []
    stores: list[Store] = []
    held: list[Receipt[bool]] = []

    def ping(request: Mapping[str, Any]) -> Reply:
        applied.append(str(request["transaction"]))
        if len(applied) == 1:  # the commit the response joins hangs
            held.append(stores[0].write(lambda _conn: release.wait(10)))
        else:
            release.set()  # the store catches up while the repeat is being handled
        return Reply({"pong": True})

    lingering = StoreSection(batch_linger_ms=100)
    with downlink_alone(tmp_path, ping, commit_timeout_s=0.5, store_cfg=lingering) as (
        downlink,
        sent,
    ):
        stores.append(downlink._store)
        downlink.received("eldercare/s/g/request/ping", b'{"transaction": "t-1"}')
        eventually(lambda: len(sent) == 1)
        again = downlink.handle("eldercare/s/g/request/ping", b'{"transaction": "t-1"}')
        held[0].result(10)
        assert json.loads(sent[0].payload)["message"].startswith("not known whether applied")
        assert again is not None and again["status"] == "ok" and again["repeat"] is True
        assert "store" not in downlink.errors


def test_the_newest_answers_outlive_a_prune_of_remembered_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``remember_transactions`` the oldest answers are forgotten, never the newest: a
    transaction answered just before (or by the very commit of) a prune is still answered
    from its record when sent again, not applied a second time."""
    monkeypatch.setattr(downlink_module, "PRUNE_EVERY", 10)
    keep = 100
    applied: list[str] = []

    def ping(request: Mapping[str, Any]) -> Reply:
        applied.append(str(request["transaction"]))
        return Reply({"pong": True})

    def send(downlink: Downlink, txn: str) -> dict[str, Any]:
        body = json.dumps({"transaction": txn}).encode()
        reply = downlink.handle("eldercare/s/g/request/ping", body)
        assert reply is not None and reply["status"] == "ok", reply
        return reply

    cfg = DownlinkSection(remember_transactions=keep)
    with downlink_alone(tmp_path, ping, cfg) as (downlink, _sent):
        for n in range(1, keep + 11):  # the 110th commit prunes down to the newest 100
            send(downlink, f"t-{n}")
            if n == 10:
                time.sleep(0.005)  # answers are ordered by the millisecond: none shares t-10's
        assert state(tmp_path / "gateway.db")[0] == keep
        applied.clear()
        for txn in (f"t-{keep + 10}", f"t-{keep + 9}", "t-11"):
            assert send(downlink, txn).get("repeat") is True, txn
        assert applied == []
        assert "repeat" not in send(downlink, "t-1")  # the oldest was forgotten: applied anew
        assert applied == ["t-1"]


def test_json_that_python_cannot_hold_gets_an_error_reply(tmp_path: Path) -> None:
    """Valid JSON text in theory, but too deep to parse, a number too long to convert, or a
    string that is not Unicode (half a surrogate pair), which SQLite and UTF-8 cannot take."""
    cases = [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"transaction":"t1","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),
        (b'{"transaction":"t2","n":' + b"1" * 5000 + b"}", "4300 digits"),
        (b'{"transaction":"\\ud800"}', "half a surrogate pair"),
        (b'{"transaction":"t3","x":["ok","\\udfff"]}', "half a surrogate pair"),
        (b'{"transaction":"' + b"A" * 5000 + b'"}', "transaction: longer than 64 characters"),
        # the last one would win in json.loads; a reader taking the first sees another request
        (b'{"transaction":"t4","transaction":"t5"}', "the key 'transaction' is given twice"),
    ]
    with downlink_alone(tmp_path, lambda _r: Reply({"pong": True})) as (downlink, sent):
        topic = "eldercare/s/g/request/ping"
        for payload, expected in cases:
            before = len(sent)
            reply = downlink.handle(topic, payload)
            assert reply is not None and reply["status"] == "error", (expected, reply)
            assert expected in reply["message"] and len(reply["message"]) <= MESSAGE_MAX
            assert len(sent) == before + 1
            assert json.loads(sent[-1].payload) == reply
        assert downlink.errors["invalid_json"] == 6 and downlink.errors["schema"] == 1
        assert all(json.loads(m.payload)["transaction"] is None for m in sent[-2:])
        pair = downlink.handle(topic, b'{"transaction":"\\ud83d\\ude00"}')  # a whole pair: fine
        assert pair is not None and pair["status"] == "ok" and pair["transaction"] == "\U0001f600"


def test_an_array_of_many_bad_items_is_refused_without_a_problem_kept_for_each(
    tmp_path: Path,
) -> None:
    """jsonschema finds a problem in every item of the array, a few KB each: a 0.4 MB request
    cost 700 MB and held every request behind it for seconds; the 4 MiB one the limit lets
    through would take gigabytes, and the gateway, alarms and all, with them."""
    body = b'{"transaction":"t-1","elder_id":"E1","photos":[' + b",".join([b"0"] * 200_000)
    with downlink_alone(tmp_path, Applying(), op="face.enrol") as (downlink, _sent):
        tracemalloc.start()
        try:
            reply = downlink.handle("eldercare/s/g/request/face.enrol", body + b"]}")
            _size, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert reply is not None and reply["status"] == "error" and reply["transaction"] == "t-1"
    assert reply["message"].startswith("photos")
    assert peak < 50_000_000, f"{peak / 1e6:.0f} MB to refuse it"


def test_a_large_request_refused_at_once_is_not_parsed_on_the_network_thread(
    tmp_path: Path,
) -> None:
    """paho's thread carries the alarms too: a request refused there (busy, retained) is only
    searched for its transaction, in its first bytes, when it is large."""
    topic = "eldercare/s/g/request/face.enrol"
    photos = [{"data": "A" * 100_000}]
    first = json.dumps({"transaction": "t-1", "elder_id": "e1", "photos": photos}).encode()
    last = json.dumps({"elder_id": "e1", "photos": photos, "transaction": "t-2"}).encode()
    with downlink_alone(tmp_path, Applying(), op="face.enrol") as (downlink, sent):
        downlink.received(topic, first, Handover(retained=True))
        downlink.received(topic, last, Handover(retained=True))
        downlink.received(topic, b'{"transaction":"t-3"}', Handover(retained=True))
    assert [json.loads(m.payload)["transaction"] for m in sent] == ["t-1", None, "t-3"]
    assert downlink.errors["retained"] == 3


def test_a_request_of_escaped_quotes_never_closed_is_answered(tmp_path: Path) -> None:
    """A megabyte of quotes, each escaped, in one string never closed, after a few brackets:
    answered as not JSON, not scanned again from every quote (hours, with the GIL held)."""
    payload = b"[" * 40 + b'"' + b'\\"' * 500_000
    with downlink_alone(tmp_path, lambda _r: Reply({"pong": True})) as (downlink, _sent):
        reply = downlink.handle("eldercare/s/g/request/ping", payload)
    assert reply is not None and reply["status"] == "error", reply
    assert "nested too deeply" in reply["message"]
    assert downlink.errors["invalid_json"] == 1


def test_a_request_that_fails_past_its_handler_still_gets_an_answer(tmp_path: Path) -> None:
    """The last resort: a fault nobody foresaw (here a reply that is not JSON) is answered."""
    with downlink_alone(tmp_path, lambda _r: Reply({"when": object()})) as (downlink, sent):
        downlink.received("eldercare/s/g/request/ping", b'{"transaction": "t-1"}')
        eventually(lambda: len(sent) == 1)
        assert json.loads(sent[0].payload) == {
            "transaction": None,
            "op": "ping",
            "status": "error",
            "message": "internal error (see the log)",
        }
        assert downlink.errors["internal"] == 1
        downlink.received("eldercare/s/g/request/ping", b"{}")  # the worker is still there
        eventually(lambda: len(sent) == 2)


def test_a_burst_of_requests_past_the_memory_cap_is_told_to_send_again(tmp_path: Path) -> None:
    """After an outage the broker hands over every waiting request at once; photos make them
    large. Those past the cap are answered busy at once, the others in turn, and a request
    sent again once the queue has drained is taken."""
    release = threading.Event()
    handled: list[str] = []

    def slow(request: Mapping[str, Any]) -> Reply:
        handled.append(str(request["transaction"]))
        release.wait(10)  # a long enrolment holds the worker
        return Reply({"enrolled": True})

    topic = "eldercare/s/g/request/face.enrol"
    cfg = DownlinkSection(waiting_max_bytes=65_536)

    def request(txn: str) -> bytes:
        photo = {"data": "A" * 30_000}
        return json.dumps({"transaction": txn, "elder_id": "e1", "photos": [photo]}).encode()

    with downlink_alone(tmp_path, slow, cfg, op="face.enrol") as (downlink, sent):
        for txn in ("t-1", "t-2", "t-3", "t-4"):
            downlink.received(topic, request(txn))
        busy = [json.loads(m.payload) for m in sent]
        assert [(r["transaction"], r["status"]) for r in busy] == [
            ("t-3", "error"),
            ("t-4", "error"),
        ]
        assert busy[0]["message"] == "busy: 2 requests waiting, send again"
        release.set()
        eventually(lambda: len(sent) == 4)
        answered = [json.loads(m.payload) for m in sent[2:]]
        assert [(r["transaction"], r["status"]) for r in answered] == [("t-1", "ok"), ("t-2", "ok")]
        downlink.received(topic, request("t-3"))
        eventually(lambda: len(sent) == 5)
        assert json.loads(sent[4].payload)["status"] == "ok"
        assert handled == ["t-1", "t-2", "t-3"]
        assert downlink.health() == {"requests": {"received": 5, "ok": 3}, "errors": {"busy": 2}}


def test_one_request_larger_than_the_cap_is_taken_when_none_waits(tmp_path: Path) -> None:
    cfg = DownlinkSection(waiting_max_bytes=65_536)
    with downlink_alone(tmp_path, lambda _r: Reply({"pong": True}), cfg) as (downlink, sent):
        big = json.dumps({"transaction": "t-1", "x": "A" * 100_000}).encode()
        downlink.received("eldercare/s/g/request/ping", big)
        eventually(lambda: len(sent) == 1)
        assert "busy" not in downlink.errors  # refused by the schema, after its turn
        assert json.loads(sent[0].payload)["message"].startswith("request: Additional")


def test_a_request_of_exactly_the_largest_size_is_applied(tmp_path: Path) -> None:
    cfg = DownlinkSection(max_payload_bytes=4096)
    with downlink_alone(tmp_path, lambda _r: Reply({"pong": True}), cfg) as (downlink, sent):
        request = b'{"transaction": "t-1"}'.ljust(4096)  # whitespace is JSON too
        downlink.received("eldercare/s/g/request/ping", request)
        eventually(lambda: len(sent) == 1)
        assert json.loads(sent[0].payload)["status"] == "ok"


def test_a_refusal_never_quotes_the_request_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A face.enrol request carries photos: neither the reply nor the log may hold them."""
    photo = base64.b64encode(b"\xff\xd8\xff\xe0 PHOTO-BYTES Canon EOS 5D" * 50).decode()
    cases = [
        ({"photos": [{"data": photo}] * 6}, "photos: more than 5 items"),
        ({"photos": photo}, "photos: must be of type array"),
        ({"photos": [{"data": photo}], "elder_id": photo}, "elder_id: does not match"),
        ({"photos": [{"data": photo}], "allow_similar": photo}, "must be of type boolean"),
    ]
    with downlink_alone(tmp_path, lambda _r: Reply(), op="face.enrol") as (downlink, sent):
        with caplog.at_level(logging.WARNING):
            for fields, expected in cases:
                request = {"transaction": "t-1", "elder_id": "E1", **fields}
                reply = downlink.handle(
                    "eldercare/s/g/request/face.enrol", json.dumps(request).encode()
                )
                assert reply is not None and expected in reply["message"], reply
        assert len(sent) == len(cases) and downlink.errors["schema"] == len(cases)
        assert not any(photo[:40] in m.payload.decode() for m in sent)
        assert "PHOTO" not in caplog.text and photo[:40] not in caplog.text


def test_a_request_far_over_the_limit_never_reaches_the_gateway(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The broker is told the largest packet the gateway takes (MQTT 5): paho would otherwise
    hold all of a 200 MB request, twice, before the downlink could refuse it."""
    with gateway_and_platform(tmp_path, mosquitto.port) as (gw, sub):
        somewhat = ask(sub, "ping", {"transaction": "t-1", "pad": "A" * 900})
        assert somewhat["status"] == "error" and "over 512 B" in somewhat["message"]
        sub.publish(f"{BASE}/request/ping", b"{" + b" " * 300_000 + b"}")
        assert ask(sub, "ping", {"transaction": "t-2"})["status"] == "ok"
        assert gw.sync is not None and gw.sync.downlink.counts["received"] == 2


class HeldHandler:
    """A handler that holds the worker (a long enrolment) until released."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.applied: list[str] = []
        self.busy = threading.Event()
        self.release = threading.Event()

    def __call__(self, request: Mapping[str, Any]) -> Reply:
        self.applied.append(str(request["transaction"]))
        self.busy.set()
        self.release.wait(10)
        return Reply(self.data)


def stop_while_held(
    stop: Callable[[], None],
    downlink: Downlink,
    held: HeldHandler,
    meanwhile: Callable[[], None] = lambda: None,
) -> None:
    """Begin the stop while the worker is held, then let the request in hand finish."""
    stopper = threading.Thread(target=stop)
    stopper.start()
    assert downlink._worker.stopping.wait(10)
    meanwhile()
    held.release.set()
    stopper.join(10)
    assert not stopper.is_alive()


def test_requests_waiting_at_stop_are_answered_not_dropped(tmp_path: Path) -> None:
    """At stop the request in hand is finished, and every other one is answered (and then
    acknowledged to the broker): the answer tells the sender to send it again."""
    held = HeldHandler({"pong": True})
    with downlink_alone(tmp_path, held) as (downlink, sent):
        for txn in ("t-0", "t-1", "t-2"):
            downlink.received(
                "eldercare/s/g/request/ping", json.dumps({"transaction": txn}).encode()
            )
        assert held.busy.wait(10)
        late = b'{"transaction": "late"}'  # paho's thread goes on until the link stops
        stop_while_held(
            downlink.stop,
            downlink,
            held,
            lambda: downlink.received("eldercare/s/g/request/ping", late),
        )
        answers = {r["transaction"]: r for r in (json.loads(m.payload) for m in sent)}
        assert set(answers) == {"t-0", "t-1", "t-2", "late"} and len(sent) == 4
        assert answers["t-0"]["status"] == "ok" and held.applied == ["t-0"]
        for txn in ("t-1", "t-2", "late"):
            assert (answers[txn]["status"], answers[txn]["message"]) == ("error", STOPPING)
        assert downlink.errors["stopping"] == 3


def test_requests_waiting_when_the_gateway_stops_are_answered_over_the_broker(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The answers go out before the connection is closed, the farewell after them."""
    held = HeldHandler({"elder_id": "E1", "templates_erased": 1})
    loaded = config(tmp_path / "var", mosquitto.port)
    remove = Operation("face.remove", held, applies_elsewhere=True)
    sub = Subscriber(mosquitto.port)
    try:
        with sync_alone(loaded, operations=[remove]) as (_store, sync):
            # the birth status is published after the subscriptions: requests sent from now
            # on are the gateway's (not dropped by the broker before it subscribed)
            sub.wait_for(
                lambda _m: any(m.json()["state"] == "online" for m in sub.of_topic("/status"))
            )
            for txn in ("t-0", "t-1", "t-2"):
                request = {"transaction": txn, "elder_id": "E1"}
                sub.publish(f"{BASE}/request/face.remove", json.dumps(request))
            assert held.busy.wait(10)
            eventually(lambda: sync.downlink._waiting == 3)
            stop_while_held(sync.stop, sync.downlink, held)
            sub.wait_for(lambda _m: sub.of_topic("/status")[-1].json()["state"] == "offline")
            answers = [m.json() for m in sub.of_topic("/response/face.remove")]
            assert [(r["transaction"], r["status"]) for r in answers] == [
                ("t-0", "ok"),
                ("t-1", "error"),
                ("t-2", "error"),
            ]
            assert answers[1]["message"] == answers[2]["message"] == STOPPING
            assert held.applied == ["t-0"]
    finally:
        sub.close()


@contextmanager
def answered_offline(tmp_path: Path) -> Iterator[tuple[Mosquitto, Subscriber, Sync, HeldHandler]]:
    """A face.remove whose answer is made while the broker is down: the sync stage still
    running, the broker stopped, the platform's persistent subscriber."""
    broker = Mosquitto(tmp_path, persistent=True).start()
    held = HeldHandler({"elder_id": "E1", "templates_erased": 1})
    remove = Operation("face.remove", held, applies_elsewhere=True)
    sub = Subscriber(broker.port, persistent=True)
    try:
        with sync_alone(config(tmp_path / "var", broker.port), operations=[remove]) as (_, sync):
            sub.wait_for(lambda _m: bool(sub.of_topic("/status")))
            eventually(lambda: sync.link.connected)
            request = {"transaction": "t-1", "elder_id": "E1"}
            sub.publish(f"{BASE}/request/face.remove", json.dumps(request))
            assert held.busy.wait(10)
            broker.stop()
            eventually(lambda: not sync.link.connected)
            held.release.set()
            eventually(lambda: sync.downlink.counts["ok"] == 1)
            yield broker, sub, sync, held
    finally:
        sub.close()
        broker.stop()


def test_an_answer_made_while_the_connection_is_down_goes_out_when_it_is_back(
    tmp_path: Path,
) -> None:
    """An answer made while no connection takes it (a long enrolment outlasting the
    connection, or a request the broker hands over right after the CONNACK) is sent on the
    next connection: without a persistent session, the broker would not hand the request
    over again to be answered then."""
    with answered_offline(tmp_path) as (broker, sub, sync, held):
        broker.start()
        sub.wait_for(lambda _m: bool(sub.of_topic("/response/face.remove")))
        (answer,) = [m.json() for m in sub.of_topic("/response/face.remove")]
        assert (answer["transaction"], answer["status"]) == ("t-1", "ok")
        assert held.applied == ["t-1"] and "unanswered" not in sync.downlink.errors


def test_answers_no_connection_took_before_the_stop_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Held for a connection that never came back before the stop: the sender waits in vain,
    so the gateway at least says so."""
    with answered_offline(tmp_path) as (_broker, _sub, sync, _held):
        pass
    assert sync.downlink.errors["unanswered"] == 1
    assert "downlink: 1 answers not sent: no connection before the stop" in caplog.text


def test_a_request_refused_after_the_stop_with_no_connection_is_counted_unanswered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """paho's thread goes on handing over requests until the link stops: one that comes after
    the downlink stopped, as the connection fails, is refused "stopping" with no connection to
    take the answer, nor any to come. It was held and dropped unseen; it is counted and
    logged as unanswered, as answers held at the stop are."""
    online = threading.Event()
    online.set()
    with downlink_alone(tmp_path, lambda _r: Reply({"pong": True}), online=online.is_set) as (
        downlink,
        sent,
    ):
        downlink.stop()
        online.clear()
        downlink.received("eldercare/s/g/request/ping", b'{"transaction": "late"}')
        assert sent == []
        assert downlink.errors["stopping"] == 1 and downlink.errors["unanswered"] == 1
    assert "downlink: ping answer dropped: offline, the downlink has stopped" in caplog.text


def test_clearing_a_retained_request_is_not_taken_for_another_one(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The refusal asks the sender to clear the retained request (an empty retained message,
    which the broker passes on live): that is not answered as a second refused request."""
    topic = f"{BASE}/request/rebirth"
    with gateway_and_platform(tmp_path, mosquitto.port) as (gw, sub):
        sub._client.publish(topic, json.dumps({"transaction": "kept"}), qos=1, retain=True)
        sub.wait_for(lambda _m: bool(sub.of_topic("/response/rebirth")))
        sub._client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        assert ask(sub, "ping", {"transaction": "after"})["status"] == "ok"
        answers = [m.json() for m in sub.of_topic("/response/rebirth")]
        assert [(a["transaction"], a["status"]) for a in answers] == [("kept", "error")]
        assert gw.sync is not None and gw.sync.downlink.errors["retained"] == 1
        assert gw.sync.downlink.counts["received"] == 2


def _answers(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT txn, typeof(response) FROM requests ORDER BY txn").fetchall()
    return [(str(txn), str(kind)) for txn, kind in rows]


def test_stored_answers_name_no_elder_in_the_database_files(tmp_path: Path) -> None:
    """An answer names the elder and the photos sent for her; kept to recognise repeats, it
    is sealed with the journal's key, and a repeat is still answered from it."""
    enrol = Applying({"elder_id": "elder-7731", "photos": ["wang-xiulan-2019.jpg"]})

    with downlink_alone(tmp_path, enrol) as (downlink, _sent):
        first = downlink.handle("eldercare/s/g/request/ping", b'{"transaction": "en-1"}')
        again = downlink.handle("eldercare/s/g/request/ping", b'{"transaction": "en-1"}')
        assert again is not None and again["repeat"] is True
        assert {k: v for k, v in again.items() if k != "repeat"} == first
        assert enrol.applied == ["en-1"]
    assert _answers(tmp_path / "gateway.db") == [("en-1", "blob")]
    for file in tmp_path.glob("gateway.db*"):
        assert b"elder-7731" not in file.read_bytes(), file.name
        assert b"wang-xiulan" not in file.read_bytes(), file.name


def test_answers_an_earlier_version_stored_in_plain_text_are_sealed_and_still_answer(
    tmp_path: Path,
) -> None:
    db = tmp_path / "gateway.db"
    with downlink_alone(tmp_path, lambda _r: Reply({"pong": True})):
        pass  # a journal with its key, as a running gateway leaves it
    plain = {"transaction": "old-0", "op": "ping", "status": "ok", "message": "", "data": {}}
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO requests (txn, op, response, steady_ms) VALUES (?, 'ping', ?, 1)",
            [(f"old-{n}", json.dumps({**plain, "transaction": f"old-{n}"})) for n in range(1200)],
        )
    ping = Applying()

    with downlink_alone(tmp_path, ping) as (downlink, _sent):
        eventually(lambda: {kind for _, kind in _answers(db)} == {"blob"})
        again = downlink.handle("eldercare/s/g/request/ping", b'{"transaction": "old-1"}')
        assert again is not None and again["repeat"] is True and again["data"] == {}
        assert ping.applied == []
    assert len(_answers(db)) == 1200


def test_long_answers_an_earlier_version_stored_in_plain_text_leave_no_trace_once_sealed(
    tmp_path: Path,
) -> None:
    """An answer longer than a page (an enrolment's photos and look-alikes) spills onto pages
    of its own; sealing it frees them, and the store's deletions overwrite only the pages a
    commit writes anyway (secure_delete FAST): freed, they kept her name and her photos'."""
    db = tmp_path / "gateway.db"
    with downlink_alone(tmp_path, lambda _r: Reply({"pong": True})):
        pass
    photos = [{"name": f"wang-xiulan-{n}.jpg", "ok": True, "detail": "front"} for n in range(40)]
    plain = {"transaction": "old", "op": "face.enrol", "status": "ok", "message": ""}
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO requests (txn, op, response, steady_ms) VALUES (?, 'face.enrol', ?, 1)",
            [
                (
                    f"old-{n}",
                    json.dumps({**plain, "data": {"elder_id": "elder-7731", "photos": photos}}),
                )
                for n in range(20)
            ],
        )
    with downlink_alone(tmp_path, lambda _r: Reply({"pong": True})):
        eventually(lambda: {kind for _, kind in _answers(db)} == {"blob"})
    for file in tmp_path.glob("gateway.db*"):
        assert b"elder-7731" not in file.read_bytes(), file.name
        assert b"wang-xiulan" not in file.read_bytes(), file.name


def test_a_stored_answer_that_does_not_open_refuses_the_repeat_without_applying_it(
    tmp_path: Path,
) -> None:
    ping = Applying()

    with downlink_alone(tmp_path, ping) as (downlink, _sent):
        downlink.handle("eldercare/s/g/request/ping", b'{"transaction": "t-1"}')
        with sqlite3.connect(tmp_path / "gateway.db") as conn:
            (sealed,) = conn.execute("SELECT response FROM requests").fetchone()
            damaged = sealed[:-1] + bytes([sealed[-1] ^ 1])
            conn.execute("UPDATE requests SET response = ?", (damaged,))
        again = downlink.handle("eldercare/s/g/request/ping", b'{"transaction": "t-1"}')
        assert again is not None and again["status"] == "error"
        assert again["message"].startswith("already applied; its stored answer does not open")
        assert ping.applied == ["t-1"] and downlink.errors["unreadable_record"] == 1


def test_an_op_name_is_up_to_64_characters_on_this_gateway_s_request_topic() -> None:
    """As the contract says: each dot-separated part begins with a letter; anything else is
    no op of ours and goes unanswered."""
    topics = Topics("care", "site-1", "gw-1")
    longest = "a" * 64
    assert topics.op_of(f"care/site-1/gw-1/request/{longest}") == longest
    assert topics.op_of(f"care/site-1/gw-1/request/{longest}a") is None
    assert topics.op_of("care/site-1/gw-1/request/1face.enrol") is None
    assert topics.op_of("care/site-1/gw-2/request/face.enrol") is None


def test_requests_waiting_when_the_connection_drops_are_answered_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The broker hands over again, on the next connection, each request not yet answered
    (so none is lost if the gateway dies): the copies of those still waiting here are not
    queued a second time, answered twice, or refused "busy" for the room their originals
    take; they are acknowledged when their originals are answered."""
    applied: list[str] = []
    sessions: list[int] = []

    def ping(request: Mapping[str, Any]) -> Reply:
        applied.append(request["transaction"])
        time.sleep(0.3)
        ts = iso_utc(time.time_ns() // 1_000_000)
        return Reply({"pong": True, "session": sessions[0], "ts": ts, "clock_synced": False})

    relay = Relay(mosquitto.port)
    sub = Subscriber(mosquitto.port)
    cfg = config(
        tmp_path / "var",
        relay.port,
        mqtt={"session_expiry_s": 3600},
        downlink={"waiting_max_bytes": 65_536},
    )
    try:
        with sync_alone(cfg, operations=[Operation("ping", ping)]) as (store, sync):
            sessions.append(store.session)
            eventually(lambda: sync.link.connected)
            connects = sync.link.connects
            for n in (1, 2, 3):  # 20 kB each: three fill the room for requests waiting
                request = json.dumps({"transaction": f"t-{n}"}) + " " * 20_000
                sub.publish(f"{BASE}/request/ping", request)
            eventually(lambda: applied == ["t-1"])
            relay.reset()
            eventually(lambda: sync.link.connects > connects and sync.link.connected)
            sub.publish(f"{BASE}/request/ping", json.dumps({"transaction": "t-4"}))
            sub.wait_for(lambda _m: "t-4" in [m.json()["transaction"] for m in _pongs(sub)])
            answers = [(m.json()["transaction"], m.json()["status"]) for m in _pongs(sub)]
            assert answers == [(f"t-{n}", "ok") for n in (1, 2, 3, 4)]
            assert applied == ["t-1", "t-2", "t-3", "t-4"]
            health = sync.downlink.health()
            assert health["requests"]["handed_over_again"] >= 2 and health["errors"] == {}
    finally:
        sub.close()
        relay.close()


def _pongs(sub: Subscriber) -> list[Received]:
    return sub.of_topic("/response/ping")


def test_a_request_the_broker_sends_again_on_the_same_connection_is_taken_once() -> None:
    """EMQX sends an unacknowledged request again after its retry interval (30 s), with the
    same packet id, on the same connection: taken again, its second PUBACK, sent once the
    broker had given the freed id to a new request, acknowledged that one unanswered."""

    class Client:  # what the receipts use of paho's: the PUBACKs sent
        def __init__(self) -> None:
            self.acked: list[int] = []

        def ack(self, mid: int, qos: int) -> None:
            self.acked.append(mid)

    client = Client()
    receipts = Receipts(client)  # type: ignore[arg-type]
    slow, quick = receipts.take(1, 1), receipts.take(2, 1)
    assert slow is not None and quick is not None
    assert receipts.take(1, 1) is None and receipts.take(2, 1) is None  # the broker's resends
    quick()
    assert client.acked == []  # in the order they came
    slow()
    assert client.acked == [1, 2]
    again = receipts.take(1, 1)  # the freed id, given to a new request
    assert again is not None and client.acked == [1, 2]
    again()
    assert client.acked == [1, 2, 1]


def test_a_refusal_that_names_elders_is_told_to_the_sender_not_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A confirmation naming an elder the face was not a candidate for is refused with the
    candidates' ids: in the journal, that link of a face to elders outlived their erasure."""

    def refuse(_request: Mapping[str, Any]) -> Reply:
        raise RequestError("E-0009 was not among the decision's candidates (E-0004)", personal=True)

    with downlink_alone(tmp_path, refuse, op="face.confirm") as (downlink, sent):
        reply = downlink.handle(
            "eldercare/s/g/request/face.confirm",
            json.dumps(
                {"transaction": "cf-1", "event_id": str(uuid.uuid4()), "elder_id": "E-0009"}
            ).encode(),
        )
    assert reply is not None and "E-0004" in reply["message"]
    assert json.loads(sent[-1].payload)["message"] == reply["message"]
    assert "face.confirm request refused (refused): the answer says why" in caplog.text
    assert "E-000" not in caplog.text


def test_a_refusal_for_a_fault_on_the_device_is_in_the_log_for_the_technician(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A model file missing, a damaged gallery: the site's technician reads the journal, not
    the platform's answers."""

    def refuse(_request: Mapping[str, Any]) -> Reply:
        raise RequestError("model files in /opt/models do not match the manifest")

    with downlink_alone(tmp_path, refuse) as (downlink, _sent):
        downlink.handle("eldercare/s/g/request/ping", b'{"transaction": "t-1"}')
    assert "ping request refused (refused): model files in /opt/models do not" in caplog.text
