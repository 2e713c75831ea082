"""Benchmark of the devices stage; prints a markdown table (medians of several runs).

    .venv/bin/python bench/devices.py [--runs 3] [--seconds 20] [--bands 300]

1. Pure decode throughput per framer + decoder (frames/s), no I/O.
2. End to end: a simulator process writes to a pty at 115200 baud (paced like the line),
   300 bands at 1 frame/s each plus a burst of every band at once every 5 s; this process
   runs the port (reader thread, framer, decoder, dedup) and a real store on disk. Measured:
   events/s committed, CPU % of this process (the gateway side only), and for every SOS the
   time from the simulator writing its last byte to the store's commit of it (p50/p99).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.clock import ClockSync, SystemClock  # noqa: E402
from gateway.config import StoreSection  # noqa: E402
from gateway.devices.config import PortConfig  # noqa: E402
from gateway.devices.decoders import dc09  # noqa: E402
from gateway.devices.decoders.espa import decode_block  # noqa: E402
from gateway.devices.definitions import DefinitionFile, load_definition  # noqa: E402
from gateway.devices.framers.espa import EspaFramer  # noqa: E402
from gateway.devices.model import Frame, Kind  # noqa: E402
from gateway.devices.pipeline import framer_and_decoder  # noqa: E402
from gateway.devices.service import PortService  # noqa: E402
from gateway.devices.simulate import Paced, Traffic, espa_block, run_traffic  # noqa: E402
from gateway.events import Event, Lane, StoredEvent  # noqa: E402
from gateway.store import Store  # noqa: E402

CONFIGS = ROOT / "device_configs"


def definition(name: str) -> DefinitionFile:
    return load_definition(CONFIGS / f"{name}.toml")


# ---- 1. pure decode --------------------------------------------------------------------------


def framed_rate(defn: DefinitionFile, stream: bytes, frames: int) -> float:
    framer, decode = framer_and_decoder(defn)
    t0 = time.perf_counter()
    got = 0
    for i in range(0, len(stream), 4096):
        for item in framer.feed(stream[i : i + 4096]):
            if isinstance(item, Frame):
                decode(item.data)
                got += 1
    elapsed = time.perf_counter() - t0
    assert got == frames, (got, frames)
    return frames / elapsed


def espa_rate(n: int) -> float:
    spec = definition("espa444-nurse-call").espa
    assert spec is not None
    block = espa_block([("1", "0815"), ("2", "SOS ROOM 12"), ("4", "3"), ("6", "1")])
    stream = b"\x041\x052\x05" + block + b"\x04"
    framer = EspaFramer()
    t0 = time.perf_counter()
    for _ in range(n):
        for item in framer.feed(stream):
            if isinstance(item, Frame):
                decode_block(item.data, spec)
    return n / (time.perf_counter() - t0)


def dc09_rate(n: int) -> float:
    when = datetime(2025, 9, 25, 14, 12, 4, tzinfo=UTC)
    raw = dc09.build("ADM-CID", 1, "1234", "#1234|1101 01 015", receiver="0", line="0", now=when)
    content = raw.decode().strip("\n\r")
    t0 = time.perf_counter()
    for _ in range(n):
        dc09.parse(content, {})
    return n / (time.perf_counter() - t0)


def decode_benchmarks(runs: int) -> list[tuple[str, float]]:
    rows: list[tuple[str, list[float]]] = []
    n = 20_000
    for name in ("aa55-reference", "minew-ble-jsonlines"):
        defn = definition(name)
        traffic = Traffic(defn, bands=1000, repeats=1, alarms_per_hour=3600, seed=3)
        sends = [s for _ in range(n // 1000) for s in traffic.tick(1.0)]
        stream = b"".join(s.frame for s in sends)
        rows.append((name, [framed_rate(defn, stream, len(sends)) for _ in range(runs)]))
    cid = definition("contact-id-serial")
    lines = b"1234181101010151\r\n123418310101015E\r\n" * (n // 2)
    rows.append(("contact-id-serial", [framed_rate(cid, lines, n) for _ in range(runs)]))
    rows.append(("espa444-nurse-call (block)", [espa_rate(n) for _ in range(runs)]))
    rows.append(("dc09 parse (ADM-CID)", [dc09_rate(n) for _ in range(runs)]))
    return [(name, statistics.median(v)) for name, v in rows]


# ---- 2. end to end ---------------------------------------------------------------------------


def simulator(master: int, bands: int, seconds: float, out: Any) -> None:
    traffic = Traffic(definition("aa55-reference"), bands=bands, repeats=2, alarms_per_hour=240)
    sos: list[tuple[str, int, float]] = []

    def sent(s: Any, at: float) -> None:
        if s.kind is Kind.SOS:
            sos.append((s.band, s.seq, at))

    frames = run_traffic(
        Paced(lambda b: os.write(master, b), 115200),
        traffic,
        interval_s=1.0,
        duration_s=seconds,
        burst_every_s=5.0,
        on_sent=sent,
    )
    out.send({"frames": frames, "sos": sos})


class TimedStore(Store):
    """The real store; notes when each alarm's commit completed (for the latency only)."""

    commits_at: dict[tuple[str, int], float]

    def submit(self, event: Event, domain: Any = ()) -> Future[StoredEvent]:
        fut = super().submit(event, domain)
        if event.type.lane is Lane.P0:
            key = (str(event.data["device"]), int(event.data["seq"]))
            fut.add_done_callback(lambda _f: self.commits_at.setdefault(key, time.monotonic()))
        return fut


def end_to_end(bands: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = TimedStore(
            StoreSection(), Path(tmp) / "gw.db", SystemClock(), ClockSync("never", 60)
        )
        store.commits_at = {}
        master, slave = os.openpty()
        link = Path(tmp) / "ttyBASE"
        link.symlink_to(os.ttyname(slave))
        cfg = PortConfig(
            name="bench", definition="aa55-reference.toml", url=str(link), baudrate=115200
        )
        store.start()
        port = PortService(cfg, definition("aa55-reference"), store, 10.0)
        port.start()
        while port.link.stats.state != "up":
            time.sleep(0.01)
        ctx = mp.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=simulator, args=(master, bands, seconds, send))
        cpu0, wall0 = time.process_time(), time.monotonic()
        events0 = store.counters.get("delivered", 0) + sum(u.count for u in store.usage.values())
        proc.start()
        result = recv.recv()
        proc.join()
        time.sleep(0.5)  # let the last commits land
        wall = time.monotonic() - wall0
        cpu = time.process_time() - cpu0
        events = sum(u.count for u in store.usage.values()) - events0
        port.stop()
        store.stop()
        os.close(master)
        os.close(slave)
    lat = [
        (store.commits_at[(band, seq)] - at) * 1000
        for band, seq, at in result["sos"]
        if (band, seq) in store.commits_at
    ]
    lat.sort()
    return {
        "frames_per_s": result["frames"] / seconds,
        "events_per_s": events / wall,
        "cpu_percent": 100 * cpu / wall,
        "sos_p50_ms": statistics.median(lat),
        "sos_p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "sos_count": len(lat),
        "sos_missing": len(result["sos"]) - len(lat),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--bands", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    decode = decode_benchmarks(args.runs)
    e2e_runs = [end_to_end(args.bands, args.seconds) for _ in range(args.runs)]
    e2e = {k: statistics.median(r[k] for r in e2e_runs) for k in e2e_runs[0]}
    if args.json:
        print(json.dumps({"decode": dict(decode), "end_to_end": e2e}, indent=2))
        return
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"Medians of {args.runs} runs.\n")
    print("| framer + decoder | frames/s |\n|---|---:|")
    for name, rate in decode:
        print(f"| {name} | {rate:,.0f} |")
    print(f"\n| end to end: {args.bands} bands at 1 frame/s + bursts, pty at 115200 | value |")
    print("|---|---:|")
    print(f"| frames/s written by the simulator | {e2e['frames_per_s']:,.0f} |")
    print(f"| events/s committed | {e2e['events_per_s']:,.0f} |")
    print(f"| CPU % of the gateway process | {e2e['cpu_percent']:.1f} |")
    print(f"| SOS last byte -> committed, p50 | {e2e['sos_p50_ms']:.1f} ms |")
    print(f"| SOS last byte -> committed, p99 | {e2e['sos_p99_ms']:.1f} ms |")
    print(f"| SOS measured per run (missing) | {e2e['sos_count']:.0f} ({e2e['sos_missing']:.0f}) |")


if __name__ == "__main__":
    main()
