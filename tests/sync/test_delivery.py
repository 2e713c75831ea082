"""Delivery through a real mosquitto: nothing lost, nothing silently duplicated, priorities kept."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from gateway.events import Event, Lane
from tests.support.broker import Mosquitto
from tests.support.events import ALARM, BY_LANE, RECORD, TELEMETRY
from tests.support.gateway import config, running
from tests.support.subscriber import Subscriber
from tests.support.wait import eventually


def received_by_id(sub: Subscriber) -> dict[str, list[dict[str, Any]]]:
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for env in sub.events():
        seen[env["event_id"]].append(env)
    return seen


def assert_exactly_once_semantics(sub: Subscriber, expected: set[str]) -> None:
    """Every expected id arrived; a repeat is the same event again; per-lane order by seq."""
    seen = received_by_id(sub)
    missing = expected - seen.keys()
    assert not missing, f"{len(missing)} events never arrived"
    for copies in seen.values():
        assert all(c["seq"] == copies[0]["seq"] and c["data"] == copies[0]["data"] for c in copies)
    seqs = [c[0]["seq"] for c in seen.values()]
    assert len(seqs) == len(set(seqs)), "two different events share a seq"
    first_arrival: dict[str, list[int]] = defaultdict(list)
    done: set[str] = set()
    for env in sub.events():
        if env["event_id"] not in done:
            done.add(env["event_id"])
            first_arrival[env["type"]].append(env["seq"])
    for event_type, order in first_arrival.items():
        assert order == sorted(order), f"{event_type} arrived out of seq order"


def test_backlog_recorded_while_offline_arrives_p0_then_p1_then_p2(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path, persistent=True).start()
    sub = Subscriber(broker.port, persistent=True)
    broker.stop()  # the platform's session is saved; the broker is down when the gateway starts
    rng = random.Random(1)
    lanes = [rng.choice([Lane.P0, Lane.P1, Lane.P2, Lane.P2]) for _ in range(900)]
    with running(config(tmp_path / "var", broker.port)) as gw:
        recorded = [gw.store.record(Event(BY_LANE[ln], {"n": i})) for i, ln in enumerate(lanes)]
        assert gw.sync is not None
        link = gw.sync.link
        eventually(lambda: link.failures >= 2)  # it keeps trying a broker that is not there
        assert gw.store.usage[Lane.P2].count >= lanes.count(Lane.P2)
        broker.start()
        try:
            ids = {r.event_id for r in recorded}
            sub.wait_for(lambda _m: ids <= received_by_id(sub).keys())
            assert_exactly_once_semantics(sub, ids)
            order = [env["type"] for env in sub.events() if env["event_id"] in ids]
            rank = {ALARM.name: 0, RECORD.name: 1, TELEMETRY.name: 2}
            assert [rank[t] for t in order] == sorted(rank[t] for t in order)
            assert all(env["replay"] for env in sub.events() if env["event_id"] in ids)
            live = gw.store.record(Event(ALARM, {"n": "live"}))
            sub.wait_for(lambda _m: live.event_id in received_by_id(sub))
            assert received_by_id(sub)[live.event_id][0]["replay"] is False
            gw.store.housekeep()
            eventually(lambda: all(u.count == 0 for u in gw.store.usage.values()))
        finally:
            sub.close()
            broker.stop()


def test_broker_killed_and_restarted_during_a_large_drain_loses_nothing(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path, persistent=True).start()
    sub = Subscriber(broker.port, persistent=True)
    broker.stop()  # saves the platform's session; the backlog builds up while it is down
    try:
        with running(config(tmp_path / "var", broker.port, mqtt={"inflight_window": 64})) as gw:
            futures = []
            for i in range(30_000):
                lane = Lane.P2 if i % 3 else Lane.P1
                futures.append(gw.store.submit(Event(BY_LANE[lane], {"n": i})))
            ids = {f.result().event_id for f in futures}
            assert gw.sync is not None
            publisher = gw.sync.publisher
            broker.start()
            link = gw.sync.link
            for kill, fraction in enumerate((0.1, 0.3, 0.5, 0.7), start=1):
                eventually(lambda k=kill: link.connects >= k)
                eventually(lambda f=fraction: publisher.events_acked >= f * len(ids), every=0.005)
                # What the broker holds only in memory for the platform dies with it (autosave
                # runs once a second): that is the broker's durability, not the gateway's. So
                # each crash waits until the platform is back and has what was acknowledged.
                eventually(lambda k=kill: sub.connects >= k + 1)
                acked = publisher.events_acked
                eventually(lambda a=acked: len(received_by_id(sub)) >= a)
                broker.restart()  # SIGKILL mid-drain, then up again on the same port
            alarm = gw.store.record(Event(ALARM, {"n": "during drain"}))
            ids.add(alarm.event_id)
            try:
                sub.wait_for(lambda _m: ids <= received_by_id(sub).keys(), timeout=90)
            except TimeoutError as exc:
                missing = len(ids - received_by_id(sub).keys())
                raise AssertionError(
                    f"{missing} of {len(ids)} events never arrived: {exc}"
                ) from exc
            assert_exactly_once_semantics(sub, ids)
            assert link.connects >= 5 and publisher.events_sent > len(ids)
            eventually(lambda: all(u.count == 0 for u in gw.store.usage.values()))
    finally:
        sub.close()
        broker.stop()


def test_an_alarm_overtakes_a_telemetry_backlog(tmp_path: Path, mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.port)
    backlog = 5000
    try:
        with running(config(tmp_path / "var", None)) as gw:
            for i in range(backlog):
                gw.store.submit(Event(TELEMETRY, {"n": i}))
            gw.store.record(Event(TELEMETRY, {"n": "last"}))
        # Restart with the broker configured; the alarm comes in as the drain begins.
        cfg = config(tmp_path / "var", mosquitto.port, mqtt={"batch_max_events": 1})
        with running(cfg) as gw:
            sub.wait_for(lambda m: any(TELEMETRY.name in x.topic for x in m))
            alarm = gw.store.record(Event(ALARM, {"n": "sos"}))
            sub.wait_for(lambda _m: alarm.event_id in sub.event_ids())
            events = sub.events()
            position = next(i for i, e in enumerate(events) if e["event_id"] == alarm.event_id)
            before = sum(1 for e in events[:position] if e["type"] == TELEMETRY.name)
            assert before < backlog / 2, f"the alarm waited behind {before} telemetry events"
    finally:
        sub.close()


def test_p2_is_batched_and_p0_p1_are_one_event_per_message(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sub = Subscriber(mosquitto.port)
    try:
        with running(config(tmp_path / "var", None)) as gw:
            for i in range(450):
                gw.store.submit(Event(TELEMETRY, {"n": i}))
            gw.store.record(Event(RECORD, {"n": 1}))
        cfg = config(tmp_path / "var", mosquitto.port, mqtt={"batch_max_events": 200})
        with running(cfg):
            sub.wait_for(lambda _m: len(sub.events()) >= 452)
        telemetry = sub.of_topic(f"/event/{TELEMETRY.name}")
        sizes = [len(m.json()) for m in telemetry]
        assert sizes == [200, 200, 50]
        (record,) = sub.of_topic(f"/event/{RECORD.name}")
        assert isinstance(record.json(), dict)
    finally:
        sub.close()


def test_a_clean_stop_mid_drain_leaves_nothing_to_send_twice(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sub = Subscriber(mosquitto.port)
    try:
        cfg = config(tmp_path / "var", mosquitto.port, mqtt={"inflight_window": 64})
        with running(cfg) as gw:
            futures = [gw.store.submit(Event(RECORD, {"n": i})) for i in range(5000)]
            ids = {f.result().event_id for f in futures}
            assert gw.sync is not None
            publisher = gw.sync.publisher
            eventually(lambda: publisher.events_acked >= 1000, every=0.002)
        # stopped with messages in flight; the next run sends what is left
        with running(cfg):
            sub.wait_for(lambda _m: ids <= received_by_id(sub).keys(), timeout=60)
        twice = [i for i, copies in received_by_id(sub).items() if i in ids and len(copies) > 1]
        assert not twice, f"{len(twice)} events delivered before the stop were sent again"
    finally:
        sub.close()
