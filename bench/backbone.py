"""Benchmark of the backbone (store + uplink); prints markdown tables, medians of --runs.

    scripts/bench backbone [--runs 3] [--p2 100000] [--p1 10000]

1. Durable ingest: events/s through Store.submit()/record() with group commit (synchronous=FULL,
   the default) next to a raw SQLite batched insert of the same events into the same schema
   with the same pragmas, measured in the same run. Both sides start from the same events in
   memory (ids chosen, data as dicts); both serialise the data, the raw side then binds and
   inserts 512 rows per commit directly.
2. Backlog drain to a local mosquitto: P2 + P1 events recorded while offline, then the gateway
   connects; events/s until the outbox is empty, next to a bare paho QoS 1 publish loop (same
   payload size, same in-flight window) measured in the same run. Once with one event per
   message, once with P2 batching (the default).
3. P0 latency, record() to PUBACK, while that backlog drains (an alarm every 10 ms).
4. Peak RSS (VmHWM) of the gateway process during the drain; the drain runs in its own process.
5. Crash trials: the gateway process SIGKILLed at random moments while it records and
   publishes (--crash-trials, 100 by default; the test suite runs 20): events acknowledged by
   record(), lost (must be 0), delivered more than once, and PRAGMA integrity_check.
6. Back after an outage: the broker is down for --outage-s (150 s, long enough for the default
   reconnect backoff to reach its 60 s ceiling), then starts; seconds until the outbox is
   empty, with only telemetry pending and with an alarm recorded 10 s before the broker came
   back (--outage-trials of each, default 5, run side by side; 0 skips this part).
7. A half-open path: the connection goes silent both ways without a reset (a relay stops
   passing bytes) and an alarm is recorded; seconds until its PUBACK on a new connection, with
   the default mqtt.alarm_ack_timeout_s next to keepalive alone (the timeout set to an hour),
   default keepalive 30 s (--half-open-trials of each, default 3, side by side; 0 skips).
8. Storage writes (what wears an SD card): bytes the gateway process has written to the disk
   (/proc/self/io write_bytes, after a sync) while --sd-rate sightings a second arrive for
   --sd-seconds and are delivered as they come, with store.telemetry_linger_ms at its default
   next to 0 (a commit for each) measured side by side (--sd-trials of each; 0 skips).
9. Memory across broker reconnects: the gateway's RSS while the broker is killed and started
   again --reconnects times (down 1 s, up 2 s; 0 skips), sightings arriving at 20 a second,
   next to the same gateway with its broker up all along, side by side: RSS after the first
   connection and at the end, and growth per reconnect over the second half (a leak keeps
   growing there; caches filling early on do not).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import build
from gateway.clock import ClockSync, SystemClock
from gateway.config import GatewayConfig, LoadedConfig, StoreSection
from gateway.events import Event, EventType, Lane, compact_json
from gateway.store import Store, read_stats
from gateway.store.db import open_database
from gateway.store.limits import event_bytes
from tests.support.broker import Mosquitto
from tests.support.crashee import kill_trials
from tests.support.events import sighting
from tests.support.relay import Relay
from tests.support.subscriber import Subscriber
from tests.sync.test_crash import write_config

SEEN = EventType("bench.seen", Lane.P2)
MEAL = EventType("bench.meal", Lane.P1)
SOS = EventType("bench.sos", Lane.P0)
WINDOW = 32


def proc_self(name: str, key: str) -> int:
    """A count of this process from /proc/self (KiB for memory, bytes for I/O)."""
    for line in Path(f"/proc/self/{name}").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/{name}")


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---- 1. ingest -----------------------------------------------------------------------------


def raw_ingest(path: Path, n: int, batch: int) -> float:
    """The ceiling: the same events into the same schema with the same pragmas, by the most
    direct code there is (serialise, bind, executemany per batch); no queue, no receipts."""
    conn = open_database(
        path, key=path.with_name(path.name + ".key"), synchronous="full", check=False
    )
    events = prepared(n, 1)[0]
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        rows = [(compact_json(e.data), e.event_id) for e in events[start : start + batch]]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO events (seq, event_id, type, schema, lane, session, ts_ms, clock_synced,"
            " steady_ms, data) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (start + k + 1, eid, SEEN.name, 1, 2, 1, 0, 0, 0, data)
                for k, (data, eid) in enumerate(rows)
            ],
        )
        conn.executemany(
            "INSERT INTO outbox (seq, lane, bytes, steady_ms) VALUES (?,?,?,?)",
            [(start + k + 1, 2, event_bytes(data), 0) for k, (data, _) in enumerate(rows)],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return n / elapsed


def open_store(path: Path, **cfg: Any) -> Store:
    store = Store(StoreSection.model_validate(cfg), path, SystemClock(), ClockSync("never", 3600))
    store.start()
    return store


def prepared(n: int, threads: int) -> list[list[Event]]:
    """Events made before the clock starts, as the raw side's rows are: both sides time what
    it takes to make the rows durable (serialising the data is ours to pay, and is timed)."""
    per = n // threads
    return [[Event(SEEN, sighting(w * per + i)) for i in range(per)] for w in range(threads)]


def store_pipelined(path: Path, n: int, threads: int) -> float:
    """Producers that hand events over and collect the commits later (group commit's case).
    Without telemetry_linger_ms: it would hold the burst's last partial commit up to a second,
    which times the linger, not the store."""
    store = open_store(path, telemetry_linger_ms=0)
    events = prepared(n, threads)

    def produce(w: int) -> None:
        receipts = [store.submit(e) for e in events[w]]
        for r in receipts:
            r.result()

    elapsed = run_threads(produce, threads)
    store.stop()
    return sum(map(len, events)) / elapsed


def store_blocking(path: Path, n: int, threads: int) -> float:
    """Producers that wait for each commit (a serial port acknowledging frame by frame)."""
    store = open_store(path)
    events = prepared(n, threads)

    def produce(w: int) -> None:
        for e in events[w]:
            store.record(e)

    elapsed = run_threads(produce, threads)
    store.stop()
    return sum(map(len, events)) / elapsed


def run_threads(target: Callable[[int], None], count: int) -> float:
    workers = [threading.Thread(target=target, args=(w,)) for w in range(count)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0


# ---- 2-4. drain ----------------------------------------------------------------------------


def loaded_config(
    data_dir: Path, port: int | None, store: dict[str, Any] | None = None, **mqtt: Any
) -> LoadedConfig:
    raw = {
        "gateway": {"id": "gw-bench", "site": "bench", "data_dir": str(data_dir)},
        "clock": {"sync_source": "never"},
        "store": store or {},
        "mqtt": {
            "brokers": [f"mqtt://127.0.0.1:{port}"] if port else [],
            "session_expiry_s": 0,
            **mqtt,
        },
    }
    return LoadedConfig(config=GatewayConfig.model_validate(raw), source="bench", version="b")


def prerecord(data_dir: str, p2: int, p1: int) -> None:
    store = open_store(Path(data_dir) / "gateway.db")
    futures = []
    for i in range(p2 + p1):
        lane_type = MEAL if i % ((p2 + p1) // max(p1, 1)) == 0 and p1 else SEEN
        futures.append(store.submit(Event(lane_type, sighting(i))))
    for f in futures:
        f.result()
    store.stop()


def drain(data_dir: str, port: int, batch: int, out: mp.Queue[dict[str, Any]]) -> None:
    backlog = read_stats(Path(data_dir) / "gateway.db")
    pending = sum(lane.pending for lane in backlog.lanes)
    cfg = loaded_config(
        Path(data_dir), port, inflight_window=WINDOW, batch_max_events=batch, reconnect_min_s=0.05
    )
    gw = build(cfg, password=None)
    stop = threading.Event()

    def alarms() -> None:
        i = 0
        while not stop.wait(0.01):
            gw.store.record(Event(SOS, {"n": i}))
            i += 1

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    gw.start()
    injector = threading.Thread(target=alarms)
    injector.start()
    while gw.store.usage[Lane.P2].count or gw.store.usage[Lane.P1].count:
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stop.set()
    injector.join()
    while gw.store.usage[Lane.P0].count:
        time.sleep(0.005)
    assert gw.sync is not None
    latency = gw.sync.publisher.latency(Lane.P0)
    gw.stop()
    hwm = proc_self("status", "VmHWM")
    out.put(
        {
            "events_per_s": pending / elapsed,
            "messages": gw.sync.publisher.messages_sent,
            "cpu_pct": 100 * cpu / elapsed,
            "p0": latency,
            "rss_mb": hwm / 1024,
        }
    )


def bare_paho(port: int, n: int, size: int) -> float:
    """The ceiling: paho publishing QoS 1 with at most WINDOW messages awaiting PUBACK (as the
    gateway does; handing paho 100k messages at once makes its own queue crawl), no store."""
    window = threading.Semaphore(WINDOW)
    done = threading.Event()
    acked = [0]

    def on_publish(*_: Any) -> None:
        acked[0] += 1
        window.release()
        if acked[0] == n:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bare", protocol=paho.MQTTv5)
    client.max_inflight_messages_set(WINDOW)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = b"x" * size
    t0 = time.perf_counter()
    for _ in range(n):
        window.acquire()
        client.publish("bench/bare", payload, qos=1)
    done.wait(600)
    elapsed = time.perf_counter() - t0
    client.loop_stop()
    client.disconnect()
    return n / elapsed


def run_drain(port: int, p2: int, p1: int, batch: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        rec = ctx.Process(target=prerecord, args=(tmp, p2, p1))
        rec.start()
        rec.join()
        out: mp.Queue[dict[str, Any]] = ctx.Queue()
        proc = ctx.Process(target=drain, args=(tmp, port, batch, out))
        proc.start()
        result = out.get(timeout=900)
        proc.join()
        return result


# ---- 6. back after an outage -------------------------------------------------------------


def outage(alarm: bool, outage_s: float, seed: int, out: mp.Queue[tuple[bool, float]]) -> None:
    """One site through an outage, with the default reconnect settings."""
    logging.getLogger("gateway.sync").setLevel(logging.ERROR)  # the refusals are the point
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        gw = build(loaded_config(Path(tmp), broker.port), password=None, rng=random.Random(seed))
        gw.start()
        gw.store.record(Event(SEEN, sighting(0)))
        time.sleep(outage_s - 10)
        if alarm:
            gw.store.record(Event(SOS, {"n": 0}))
        time.sleep(10)
        broker.start()
        t0 = time.monotonic()
        while any(gw.store.usage[lane].count for lane in Lane):
            time.sleep(0.05)
        out.put((alarm, time.monotonic() - t0))
        gw.stop()
        broker.stop()


def side_by_side(
    target: Callable[..., None], argsets: list[tuple[Any, ...]], timeout: float
) -> dict[bool, list[Any]]:
    """Trials that mostly wait run side by side in processes of their own; each puts one
    (variant, result) on the queue it is given last."""
    ctx = mp.get_context("spawn")
    out: mp.Queue[tuple[bool, Any]] = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, out)) for args in argsets]
    for proc in procs:
        proc.start()
    results: dict[bool, list[Any]] = {False: [], True: []}
    for _ in procs:
        variant, seconds = out.get(timeout=timeout)
        results[variant].append(seconds)
    for proc in procs:
        proc.join()
    return results


# ---- 7. a half-open path -------------------------------------------------------------------


def half_open(watch: bool, seed: int, out: mp.Queue[tuple[bool, float]]) -> None:
    """One site whose path to the broker goes silent just before an SOS."""
    logging.getLogger("gateway.sync").setLevel(logging.ERROR)
    mqtt = {} if watch else {"alarm_ack_timeout_s": 3600.0}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp)).start()
        relay = Relay(broker.port)
        gw = build(
            loaded_config(Path(tmp), relay.port, **mqtt), password=None, rng=random.Random(seed)
        )
        gw.start()
        assert gw.sync is not None
        while not gw.sync.link.connected:
            time.sleep(0.05)
        time.sleep(1 + seed)  # not in step with the keepalive timer
        relay.freeze()
        t0 = time.monotonic()
        gw.store.record(Event(SOS, {"n": 0}))
        while gw.store.usage[Lane.P0].count:
            time.sleep(0.05)
        out.put((watch, time.monotonic() - t0))
        gw.stop()
        relay.close()
        broker.stop()


# ---- 8. what the SD card is written ----------------------------------------------------------


def write_bytes() -> int:
    """Bytes this process has had written to storage (page cache write-back included)."""
    return proc_self("io", "write_bytes")


def sd_writes(
    linger_ms: float, rate: float, seconds: float, out: mp.Queue[tuple[bool, float]]
) -> None:
    """MB an hour the gateway writes while a station reports ``rate`` sightings a second and
    the platform takes them as they come."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp)).start()
        store = {"telemetry_linger_ms": linger_ms, "reserve_mb": 0}
        gw = build(loaded_config(Path(tmp), broker.port, store), password=None)
        gw.start()
        time.sleep(2)  # connected, birth and first health written
        before = write_bytes()
        t0 = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - t0) < seconds:
            while sent < int(elapsed * rate):
                gw.store.submit(Event(SEEN, sighting(sent)))
                sent += 1
            time.sleep(0.005)
        while gw.store.usage[Lane.P2].count:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        os.sync()  # what the kernel still holds counts too
        written = write_bytes() - before
        gw.stop()
        broker.stop()
    out.put((linger_ms > 0, written / 2**20 / elapsed * 3600))


# ---- 9. memory across broker reconnects -----------------------------------------------------


def reconnects(
    cycling: bool, cycles: int, settle_s: float, out: mp.Queue[tuple[bool, list[int]]]
) -> None:
    """One site whose broker is killed and started again ``cycles`` times (or, for the
    baseline, stays up as long); its RSS in KiB once connected and settled, and after each
    cycle."""
    logging.getLogger("gateway.sync").setLevel(logging.ERROR)  # the lost connections are the point
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp)).start()
        gw = build(loaded_config(Path(tmp), broker.port, reconnect_min_s=0.05), password=None)
        stop = threading.Event()

        def sightings() -> None:
            i = 0
            while not stop.wait(0.05):
                gw.store.record(Event(SEEN, sighting(i)))
                i += 1

        gw.start()
        assert gw.sync is not None
        feeder = threading.Thread(target=sightings)
        feeder.start()
        while not gw.sync.link.connected:
            time.sleep(0.05)
        time.sleep(settle_s)
        rss = [proc_self("status", "VmRSS")]
        for _ in range(cycles):
            if cycling:
                broker.kill()
                time.sleep(1)
                broker.start()
                while not gw.sync.link.connected:
                    time.sleep(0.05)
                time.sleep(2)
            else:
                time.sleep(3)
            rss.append(proc_self("status", "VmRSS"))
        stop.set()
        feeder.join()
        out.put((cycling, rss))
        gw.stop()
        broker.stop()


def crash_trials(trials: int, seed: int) -> dict[str, Any]:
    import sqlite3
    from collections import Counter

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp)).start()
        sub = Subscriber(broker.port)
        try:
            acknowledged, _ = kill_trials(write_config(Path(tmp), broker.port), trials, rng)
            copies = Counter(e["event_id"] for e in sub.events())
            with sqlite3.connect(Path(tmp) / "var" / "gateway.db") as conn:
                integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            sub.close()
            broker.stop()
    return {
        "trials": trials,
        "acknowledged": len(acknowledged),
        "lost": sum(1 for e in acknowledged if e not in copies),
        "duplicated": sum(1 for n in copies.values() if n > 1),
        "integrity": integrity,
    }


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ingest", type=int, default=100_000)
    ap.add_argument("--p2", type=int, default=100_000)
    ap.add_argument("--p1", type=int, default=10_000)
    ap.add_argument("--crash-trials", type=int, default=100)
    ap.add_argument("--outage-trials", type=int, default=5)
    ap.add_argument("--outage-s", type=float, default=150.0)
    ap.add_argument("--half-open-trials", type=int, default=3)
    ap.add_argument("--sd-trials", type=int, default=3)
    ap.add_argument("--sd-rate", type=float, default=20.0, help="sightings a second")
    ap.add_argument("--sd-seconds", type=float, default=60.0)
    ap.add_argument("--reconnects", type=int, default=100, help="broker kills; 0 skips")
    args = ap.parse_args()
    if args.outage_s < 20:
        ap.error("--outage-s must be at least 20")
    print(f"machine: {machine()}\n")

    raw, single, piped, blocking = [], [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            raw.append(raw_ingest(Path(tmp) / "raw.db", args.ingest, 512))
            single.append(store_pipelined(Path(tmp) / "s.db", args.ingest, 1))
            piped.append(store_pipelined(Path(tmp) / "a.db", args.ingest, 4))
            blocking.append(store_blocking(Path(tmp) / "b.db", args.ingest // 10, 16))
    print("| durable ingest (synchronous=FULL) | events/s | vs raw |")
    print("|---|---:|---:|")
    print(f"| raw SQLite executemany, 512 rows/commit | {median(raw):,.0f} | 1.00 |")
    for label, rates in (("1 producer thread", single), ("4 producer threads", piped)):
        print(
            f"| Store.submit(), {label} | {median(rates):,.0f} | "
            f"{median(rates) / median(raw):.2f} |"
        )
    print(
        f"| Store.record() blocking, 16 threads | {median(blocking):,.0f} | "
        f"{median(blocking) / median(raw):.2f} |"
    )

    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp)).start()
        try:
            size = len(compact_json(sighting(0))) + 200
            bare = [bare_paho(broker.port, args.p2 + args.p1, size) for _ in range(args.runs)]
            single = [run_drain(broker.port, args.p2, args.p1, 1) for _ in range(args.runs)]
            batched = [run_drain(broker.port, args.p2, args.p1, 200) for _ in range(args.runs)]
        finally:
            broker.stop()
    n = args.p2 + args.p1
    print(
        f"\n| backlog drain, {args.p2:,} P2 + {args.p1:,} P1 | events/s | vs bare paho | "
        "messages | CPU % | P0 p50 ms | P0 p99 ms | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| bare paho QoS 1 loop, {size} B, window {WINDOW} | {median(bare):,.0f} | 1.00 | "
        f"{n:,} | | | | |"
    )
    for label, results in (
        ("gateway, one event per message", single),
        ("gateway, P2 batched (200)", batched),
    ):
        rate = median([r["events_per_s"] for r in results])
        p50 = median([r["p0"]["p50"] for r in results if r["p0"]])
        p99 = median([r["p0"]["p99"] for r in results if r["p0"]])
        print(
            f"| {label} | {rate:,.0f} | {rate / median(bare):.2f} | "
            f"{median([r['messages'] for r in results]):,.0f} | "
            f"{median([r['cpu_pct'] for r in results]):.0f} | {p50:.0f} | {p99:.0f} | "
            f"{max(r['rss_mb'] for r in results):.0f} |"
        )

    if args.sd_trials:
        linger = StoreSection().telemetry_linger_ms
        argsets = [
            (ms, args.sd_rate, args.sd_seconds) for _ in range(args.sd_trials) for ms in (0, linger)
        ]
        sd = side_by_side(sd_writes, argsets, args.sd_seconds + 600)
        base = median(sd[False])
        print(
            f"\n| storage writes, {args.sd_rate:.0f} sightings/s delivered as they come | "
            "trials | MB/h, median | vs a commit each |"
        )
        print("|---|---:|---:|---:|")
        print(f"| telemetry_linger_ms 0 (a commit each) | {len(sd[False])} | {base:,.0f} | 1.00 |")
        print(
            f"| telemetry_linger_ms {linger:.0f} (default) | {len(sd[True])} | "
            f"{median(sd[True]):,.0f} | {median(sd[True]) / base:.2f} |"
        )

    if args.crash_trials:
        crash = crash_trials(args.crash_trials, seed=20261123)
        print("\n| kill -9 trials | events acknowledged | lost | delivered twice | integrity |")
        print("|---:|---:|---:|---:|---|")
        print(
            f"| {crash['trials']} | {crash['acknowledged']:,} | {crash['lost']} | "
            f"{crash['duplicated']} | {crash['integrity']} |"
        )

    if args.outage_trials:
        argsets = [(a, args.outage_s, n) for n in range(args.outage_trials) for a in (False, True)]
        waits = side_by_side(outage, argsets, args.outage_s + 600)
        print(
            f"\n| broker down {args.outage_s:.0f} s, then back (default backoff) | trials | "
            "outbox empty after, median s | max s |"
        )
        print("|---|---:|---:|---:|")
        for alarm, label in ((False, "telemetry pending"), (True, "an alarm pending")):
            print(
                f"| {label} | {len(waits[alarm])} | {median(waits[alarm]):.1f} | "
                f"{max(waits[alarm]):.1f} |"
            )

    if args.half_open_trials:
        argsets = [(w, n) for n in range(args.half_open_trials) for w in (False, True)]
        half = side_by_side(half_open, argsets, 600)
        base = median(half[False])
        print(
            "\n| half-open path, then an SOS (keepalive 30 s) | trials | "
            "PUBACK after, median s | max s | vs keepalive alone |"
        )
        print("|---|---:|---:|---:|---:|")
        for watch, label in ((False, "keepalive alone"), (True, "alarm_ack_timeout_s 5 (default)")):
            print(
                f"| {label} | {len(half[watch])} | {median(half[watch]):.1f} | "
                f"{max(half[watch]):.1f} | {median(half[watch]) / base:.2f} |"
            )

    if args.reconnects:
        rss = side_by_side(reconnects, [(c, args.reconnects, 5.0) for c in (False, True)], 3600)
        half = args.reconnects // 2
        print(
            f"\n| RSS across {args.reconnects} broker kills (down 1 s, up 2 s) | "
            "once connected, MB | at the end, MB | per cycle, 2nd half, KB |"
        )
        print("|---|---:|---:|---:|")
        for cycling, label in ((False, "broker up all along (baseline)"), (True, "broker killed")):
            kb = rss[cycling][0]
            print(
                f"| {label} | {kb[0] / 1024:.1f} | {kb[-1] / 1024:.1f} | "
                f"{(kb[-1] - kb[half]) / (len(kb) - 1 - half):.1f} |"
            )


if __name__ == "__main__":
    main()
