"""Alarm latency while the face counter is busy: a real ``gateway run``, end to end.

    scripts/bench mixed [--runs 3] [--seconds 20] [--bands 40] [--rows default one-core]

Each run starts ``gateway run`` (a subprocess) with a real mosquitto on a free port and a
wristband base station on a pty that this script writes itself (the AA 55 reference
definition; ``--bands`` bands each seen every 2 s in the background), and, in the "on" rows,
the counter camera replaying photos of enrolled elders (staged from ../shared/faces as the
demo does) with liveness alongside the embedding, as on a Raspberry Pi 4: at the demo's
15 fps (each photo 1.5 s, then 1 s of empty scene), and at 60 fps with a face in every frame,
the most the counter can be asked for. The "one-core" rows pin the gateway to one core
(``taskset``), counter off and at 60 fps: the counter then takes all the CPU there is.

SOS frames go out at random moments (every 40-160 ms, about 200 a run), each from a band of
its own; a platform subscriber on the broker notes when each arrives on the alarm topic.
Measured: from the SOS's last byte written on the pty to its arrival (p50 / p99 / max of each
run), the gateway process's CPU % (200 % is both of two cores) and the counter's analysed
frames/s (from its health messages). The rows take turns, counter off first in each round;
figures are medians over the rounds, ratios against the counter-off row of the same round.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.backbone import machine  # noqa: E402
from gateway.devices.definitions import load_definition  # noqa: E402
from gateway.devices.model import Kind  # noqa: E402
from gateway.devices.simulate import Traffic  # noqa: E402
from tests.support.broker import Mosquitto  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFINITION = ROOT / "device_configs" / "aa55-reference.toml"
BAND_INTERVAL_S = 2.0  # as the demo's base station
SOS_GAP_S = (0.04, 0.16)  # random time between two SOS


def gateway_exe() -> str:
    return str(Path(sys.executable).parent / "gateway")


def gateway_env() -> dict[str, str]:
    """The shared photos and models beside the repository, unless the caller names others."""
    return {
        **os.environ,
        "GATEWAY_SHARED": str(SHARED),
        "GATEWAY_MODELS_DIR": os.environ.get("GATEWAY_MODELS_DIR") or str(SHARED / "models"),
    }


@dataclass(frozen=True)
class Row:
    """One way the gateway runs: its counter camera's frame rate (None: no camera), the empty
    scene between two photos, and the cores it may use (None: all)."""

    fps: float | None
    gap_s: float = 1.0
    cores: int | None = None

    @property
    def label(self) -> str:
        text = "counter off" if self.fps is None else f"counter on, {self.fps:g} fps"
        if self.fps is not None and self.gap_s == 0:
            text += ", a face in every frame"
        return text if self.cores is None else f"{text}, one core"


def site_config(data_dir: Path, gateway_id: str, broker: int, tty: Path, row: Row) -> str:
    """The demo site's shape: one wristband port and the row's counter, if any."""
    camera = (
        ""
        if row.fps is None
        else f"""
[vision]
liveness_alongside = true
[vision.camera]
source = "{data_dir.parent / "camera"}"
fps = {row.fps}
replay_loop = true
replay_gap_s = {row.gap_s}
"""
    )
    return f"""
[gateway]
id = "{gateway_id}"
site = "bench"
data_dir = "{data_dir}"
[clock]
sync_source = "never"
[mqtt]
brokers = ["mqtt://127.0.0.1:{broker}"]
health_interval_s = 1
session_expiry_s = 0
[devices]
definitions_dir = "{ROOT / "device_configs"}"
[[devices.ports]]
name = "wristbands"
station = "hall"
definition = "aa55-reference.toml"
url = "{tty}"
{camera}"""


def stage_faces(work: Path) -> Path:
    """The demo's elders enrolled in a gallery of their own (faces.db and faces.key under
    ``work/enrolled``), and another photo of each in ``work/camera`` for the counter."""
    env = gateway_env()
    staged = work / "staged"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "stage_demo.py"), str(staged)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    camera = work / "camera"
    camera.mkdir()
    for photo in sorted((staged / "counter").glob("*-E-*.jpg")):
        (camera / photo.name).symlink_to(photo.resolve())
    enrolled = work / "enrolled"
    enrolled.mkdir(mode=0o700)
    config = work / "enrol.toml"
    config.write_text(site_config(enrolled, "gw-enrol", 1, work / "none", Row(15.0)))
    done = subprocess.run(
        [gateway_exe(), "enroll", "--config", str(config), "--folder", str(staged / "enrol")],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"enrolment for the benchmark failed:\n{done.stderr[-3000:]}")
    return enrolled


def analysed(health: dict[str, Any]) -> int:
    """Frames the counter has analysed since its start, from a health message."""
    return int(health["services"].get("vision", {}).get("pipeline", {}).get("frames", 0))


@dataclass
class Platform:
    """A subscriber on the broker that notes when each alarm, and each health message,
    arrives (on its network thread, before anything else is done with it)."""

    port: int
    gateway_id: str
    alarms: dict[tuple[str, int], float] = field(default_factory=dict)
    health: list[dict[str, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"platform-{self.gateway_id}"
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        for topic in ("event/alarm.sos", "health"):
            self.client.subscribe(f"+/+/{self.gateway_id}/{topic}", qos=0)
        self.client.loop_start()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        at = time.monotonic()
        body = json.loads(msg.payload)
        with self.changed:
            if msg.topic.endswith("/health"):
                self.health.append(body)
            else:
                data = body["data"]
                self.alarms.setdefault((str(data["device"]), int(data["seq"])), at)
            self.changed.notify_all()

    def wait_ready(self, counter: bool, timeout: float = 60.0) -> None:
        """Until a health message shows the gateway connected and, with a counter, frames
        analysed: the models are loaded and the counter is at work."""

        def ready() -> bool:
            return any(not counter or analysed(h) > 0 for h in self.health)

        with self.changed:
            if not self.changed.wait_for(ready, timeout):
                raise TimeoutError("the gateway did not get ready")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def frames_per_s(health: list[dict[str, Any]]) -> float:
    """The counter's analysed frames a second between the first and last health messages."""
    points = [(float(h["uptime_s"]), float(analysed(h))) for h in health]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return 0.0
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timeline(bands: int, seconds: float, rng: random.Random) -> list[tuple[float, bytes, Any]]:
    """What the base station says and when (seconds from the start): every band seen once
    per interval, spread evenly, and SOS at random moments, each keyed by (band, seq)."""
    definition = load_definition(DEFINITION)
    traffic = Traffic(
        definition, bands=bands, repeats=1, alarms_per_hour=0, seed=rng.randrange(2**32)
    )
    out: list[tuple[float, bytes, Any]] = []
    start = 0.0
    while start < seconds:
        sends = list(traffic.tick(BAND_INTERVAL_S))
        out += [
            (start + i * BAND_INTERVAL_S / len(sends), s.frame, None) for i, s in enumerate(sends)
        ]
        start += BAND_INTERVAL_S
    at, n = rng.uniform(*SOS_GAP_S), 0
    while at < seconds:
        band, seq = f"{0xC0000000 + n:012X}", 1 + n % 255
        out.append((at, traffic.encode(band, Kind.SOS, seq), (band, seq)))
        at += rng.uniform(*SOS_GAP_S)
        n += 1
    return sorted(out, key=lambda item: item[0])


def play(master: int, plan: list[tuple[float, bytes, Any]]) -> dict[Any, float]:
    """Write the plan on the pty; when each SOS's last byte went out."""
    sent: dict[Any, float] = {}
    t0 = time.monotonic()
    for at, frame, key in plan:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        os.write(master, frame)
        if key is not None:
            sent[key] = time.monotonic()
    return sent


def stop_gateway(proc: subprocess.Popen[Any]) -> None:
    """As systemd stops it; killed if it has not gone within a minute."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def one_run(
    work: Path,
    enrolled: Path,
    broker: int,
    row: Row,
    *,
    args: argparse.Namespace,
    n: int,
) -> dict[str, float]:
    """One gateway run with the row's counter; its SOS latencies, CPU and frame rate."""
    gateway_id = f"gw-{n}"
    data = work / gateway_id
    data.mkdir(mode=0o700)
    if row.fps is not None:
        for name in ("faces.db", "faces.key"):
            shutil.copy2(enrolled / name, data / name)
    master, slave = os.openpty()
    tty = work / f"tty-{n}"
    tty.symlink_to(os.ttyname(slave))
    config = work / f"{gateway_id}.toml"
    config.write_text(site_config(data, gateway_id, broker, tty, row))
    plan = timeline(args.bands, args.seconds, random.Random(n))
    platform_ = Platform(broker, gateway_id)
    log = (work / f"{gateway_id}.log").open("w")
    pin = [] if row.cores is None else ["taskset", "-c", f"0-{row.cores - 1}"]
    proc = subprocess.Popen(
        [*pin, gateway_exe(), "run", "--config", str(config)],
        cwd=ROOT,
        env=gateway_env(),
        stderr=log,
        stdout=log,
    )
    try:
        platform_.wait_ready(row.fps is not None)
        time.sleep(1.0)  # the first frames' warm-up is not what a site sees all day
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        with platform_.changed:
            health0 = len(platform_.health)
        sent = play(master, plan)
        cpu = cpu_seconds(proc.pid) - cpu0
        wall = time.monotonic() - wall0
        with platform_.changed:
            health = platform_.health[health0:]
            platform_.changed.wait_for(lambda: sent.keys() <= platform_.alarms.keys(), 10.0)
            arrived = dict(platform_.alarms)
    except BaseException:
        log.flush()
        print((work / f"{gateway_id}.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        stop_gateway(proc)
        log.close()
        platform_.close()
        os.close(master)
        os.close(slave)
    latencies = [(arrived[k] - at) * 1000 for k, at in sent.items() if k in arrived]
    lost = math.nan  # every SOS lost: the table shows nan and the count missing, the run goes on
    return {
        "sos": len(sent),
        "missing": len(sent) - len(latencies),
        "p50": statistics.median(latencies) if latencies else lost,
        "p99": percentile(latencies, 0.99) if latencies else lost,
        "max": max(latencies, default=lost),
        "cpu": 100 * cpu / wall,
        "fps": frames_per_s(health),
    }


ROWS = {
    "default": [Row(None), Row(15.0), Row(60.0, gap_s=0.0)],
    "one-core": [Row(None, cores=1), Row(60.0, gap_s=0.0, cores=1)],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="of SOS and traffic per run")
    parser.add_argument("--bands", type=int, default=40, help="background wristbands")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    args = parser.parse_args()
    groups = [ROWS[name] for name in args.rows]
    results: dict[Row, list[dict[str, float]]] = {row: [] for rows in groups for row in rows}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        enrolled = stage_faces(work)
        broker = Mosquitto(work).start()
        try:
            n = 0
            for _ in range(args.runs):
                for row, runs in results.items():
                    runs.append(one_run(work, enrolled, broker.port, row, args=args, n=n))
                    n += 1
        finally:
            broker.stop()
    print(f"machine: {machine()}\n")
    print(
        f"Medians of {args.runs} interleaved runs of {args.seconds:.0f} s each; {args.bands} "
        f"wristbands every {BAND_INTERVAL_S:.0f} s in the background; SOS every "
        f"{SOS_GAP_S[0] * 1000:.0f}-{SOS_GAP_S[1] * 1000:.0f} ms at random; a ratio is the "
        "median of each run's figure over the counter-off row's of the same round.\n"
    )
    print(
        "| SOS: last byte on the pty -> at a platform subscriber | SOS per run (lost) | "
        "p50 ms | p99 ms | max ms | p50 vs off | p99 vs off | counter frames/s | "
        "gateway CPU % |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows in groups:
        base = results[rows[0]]
        for row in rows:
            runs = results[row]

            def med(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            def ratio(
                key: str,
                runs: list[dict[str, float]] = runs,
                base: list[dict[str, float]] = base,
            ) -> float:
                return statistics.median(r[key] / b[key] for r, b in zip(runs, base, strict=True))

            fps = "" if row.fps is None else f"{med('fps'):.1f}"
            print(
                f"| {row.label} | {med('sos'):.0f} ({sum(r['missing'] for r in runs):.0f}) | "
                f"{med('p50'):.1f} | {med('p99'):.1f} | {med('max'):.1f} | "
                f"{ratio('p50'):.2f} | {ratio('p99'):.2f} | {fps} | {med('cpu'):.0f} |"
            )
    print("\nevery run's p50 / p99 / max, ms:")
    for row, runs in results.items():
        each = ", ".join(f"{r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.1f}" for r in runs)
        print(f"- {row.label}: {each}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
