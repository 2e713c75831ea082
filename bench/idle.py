"""What a real ``gateway run`` costs when nothing happens, per thread; and an alarm's time from
that idle to the platform.

    scripts/bench idle [--runs 3] [--seconds 60] [--rows port empty noface] [--alarms 10]

Each run starts ``gateway run`` (a subprocess) with a real mosquitto on a free port and a
wristband base station on a pty that stays silent, and, per row, no camera, a counter camera
replaying an empty folder, or one replaying a photo with no face in it (at the default 15 fps),
the models from $GATEWAY_MODELS_DIR. Default intervals otherwise (health every 30 s). Once a
health message shows it connected, and ``--settle`` s later (the start's commits checkpointed),
the gateway's /proc entries are read at the start and the end of the window: CPU (utime +
stime of /proc/PID/stat, with the processes it started and waited for, and of each
/proc/PID/task/TID/stat), context switches (voluntary + involuntary, /proc/.../status; a
thread's wake-ups), bytes written to storage (write_bytes of /proc/.../io) and, from a
subscriber on the broker, the MQTT messages it published. Threads are named by their kernel
name (comm), which the gateway sets to its Python name. After the window, ``--alarms`` SOS are
written on the pty a second apart, each timed from its last byte to its arrival at the
subscriber: an alarm out of a quiet line. Figures are medians over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.backbone import machine  # noqa: E402
from bench.mixed import DEFINITION, gateway_env, gateway_exe, stop_gateway  # noqa: E402
from gateway.devices.definitions import load_definition  # noqa: E402
from gateway.devices.model import Kind  # noqa: E402
from gateway.devices.simulate import Traffic  # noqa: E402
from tests.support.broker import Mosquitto  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
ROWS = {
    "port": "wristband port and broker, no camera",
    "empty": "and a camera replaying an empty folder",
    "noface": "and a camera replaying a photo with no face, 15 fps",
}


def site_config(
    data_dir: Path, gateway_id: str, broker: int, tty: Path, camera: Path | None
) -> str:
    """The demo site's shape with a silent wristband port and the row's camera, if any."""
    vision = "" if camera is None else f'[vision.camera]\nsource = "{camera}"\nreplay_loop = true\n'
    return f"""
[gateway]
id = "{gateway_id}"
site = "bench"
data_dir = "{data_dir}"
[clock]
sync_source = "kernel"
[mqtt]
brokers = ["mqtt://127.0.0.1:{broker}"]
[devices]
definitions_dir = "{ROOT / "device_configs"}"
[[devices.ports]]
name = "wristbands"
station = "hall"
definition = "aa55-reference.toml"
url = "{tty}"
{vision}"""


def stage_cameras(work: Path) -> dict[str, Path | None]:
    """An empty folder, and a folder with one photo of an empty counter (a gradient and some
    noise: no face, but not a blank frame either)."""
    empty = work / "camera-empty"
    empty.mkdir()
    noface = work / "camera-noface"
    noface.mkdir()
    rng = np.random.default_rng(1)
    ramp = np.linspace(60, 190, 640, dtype=np.float32)[None, :, None]
    image = np.clip(ramp + rng.normal(0, 12, (480, 640, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(noface / "counter.jpg"), image)
    return {"port": None, "empty": empty, "noface": noface}


@dataclass
class Sample:
    """Counters of the process and of each thread, by kernel name."""

    cpu_s: float
    switches: int
    written: int
    threads: dict[str, tuple[float, int, int]]


def _status_switches(path: Path) -> int:
    total = 0
    for line in path.read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            total += int(line.split()[1])
    return total


def _stat_cpu(path: Path, children: bool = False) -> float:
    """CPU seconds of a process or thread; ``children``: with the processes it waited for."""
    fields = path.read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11 : 15 if children else 13])
    return ticks / TICK


def _written(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def sample(pid: int) -> Sample:
    proc = Path(f"/proc/{pid}")
    threads: dict[str, tuple[float, int, int]] = {}
    switches = 0
    for task in proc.glob("task/*"):
        try:
            name = (task / "comm").read_text().strip()
            cpu, sw, wr = _stat_cpu(task / "stat"), _status_switches(task / "status"), 0
            wr = _written(task / "io")
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        switches += sw
        was = threads.get(name, (0.0, 0, 0))
        threads[name] = (was[0] + cpu, was[1] + sw, was[2] + wr)
    return Sample(_stat_cpu(proc / "stat", children=True), switches, _written(proc / "io"), threads)


@dataclass
class Platform:
    """A subscriber to everything the gateway publishes: counts messages, notes each SOS's
    arrival and each health message."""

    port: int
    gateway_id: str
    messages: int = 0
    alarms: dict[int, float] = field(default_factory=dict)
    healthy: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"p-{self.gateway_id}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.subscribe(f"+/+/{self.gateway_id}/#", qos=0)
        self.client.loop_start()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        at = time.monotonic()
        with self.lock:
            self.messages += 1
        if msg.topic.endswith("/event/alarm.sos"):
            self.alarms.setdefault(int(json.loads(msg.payload)["data"]["seq"]), at)
        elif msg.topic.endswith("/health"):
            self.healthy.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def one_run(
    work: Path, broker: int, camera: Path | None, args: argparse.Namespace, n: int
) -> dict[str, Any]:
    """One gateway at rest with the given camera folder (None: no camera); its figures."""
    gateway_id = f"gw-{n}"
    data = work / gateway_id
    data.mkdir(mode=0o700)
    master, slave = os.openpty()
    tty = work / f"tty-{n}"
    tty.symlink_to(os.ttyname(slave))
    config = work / f"{gateway_id}.toml"
    config.write_text(site_config(data, gateway_id, broker, tty, camera))
    platform = Platform(broker, gateway_id)
    log = (work / f"{gateway_id}.log").open("w")
    proc = subprocess.Popen(
        [gateway_exe(), "run", "--config", str(config)],
        cwd=ROOT,
        env=gateway_env(),
        stderr=log,
        stdout=log,
    )
    traffic = Traffic(load_definition(DEFINITION), bands=1, repeats=1, alarms_per_hour=0, seed=n)
    try:
        if not platform.healthy.wait(60):
            raise TimeoutError("the gateway did not connect")
        time.sleep(args.settle)  # the start's own work (models, first commits) is over
        with platform.lock:
            messages0 = platform.messages
        before, wall0 = sample(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        after, wall = sample(proc.pid), time.monotonic() - wall0
        with platform.lock:
            messages = platform.messages - messages0
        sent: dict[int, float] = {}
        for i in range(args.alarms):
            seq = 1 + i
            os.write(master, traffic.encode("C0000000AA01", Kind.SOS, seq))
            sent[seq] = time.monotonic()
            time.sleep(1.0)
        deadline = time.monotonic() + 10
        while sent.keys() - platform.alarms.keys() and time.monotonic() < deadline:
            time.sleep(0.05)
    except BaseException:
        log.flush()
        print((work / f"{gateway_id}.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        stop_gateway(proc)
        log.close()
        platform.close()
        os.close(master)
        os.close(slave)
    per_min = 60.0 / wall
    threads: dict[str, tuple[float, float, float]] = {}
    for name, (cpu, sw, wr) in after.threads.items():
        cpu0, sw0, wr0 = before.threads.get(name, (0.0, 0, 0))
        threads[name] = ((cpu - cpu0) * per_min, (sw - sw0) / wall, (wr - wr0) * per_min)
    latencies = [(platform.alarms[s] - t) * 1000 for s, t in sent.items() if s in platform.alarms]
    return {
        "cpu": (after.cpu_s - before.cpu_s) * per_min,
        "switches": (after.switches - before.switches) / wall,
        "written": (after.written - before.written) * per_min,
        "messages": messages * per_min,
        "threads": threads,
        "latencies": latencies,
        "lost": len(sent) - len(latencies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window per run")
    parser.add_argument("--settle", type=float, default=35.0, help="after the first health")
    parser.add_argument("--alarms", type=int, default=10, help="SOS after the window, per run")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {row: [] for row in args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cameras = stage_cameras(work)
        broker = Mosquitto(work).start()
        try:
            n = 0
            for _ in range(args.runs):
                for row, runs in results.items():
                    runs.append(one_run(work, broker.port, cameras[row], args, n))
                    n += 1
        finally:
            broker.stop()
    print(f"machine: {machine()}\n")
    print(
        f"Medians of {args.runs} interleaved runs, each an idle window of {args.seconds:.0f} s "
        f"then {args.alarms} SOS a second apart.\n"
    )
    print(
        "| gateway at rest | CPU s/min | context switches/s | written KiB/min | "
        "MQTT messages/min | SOS pty -> platform, p50 / max ms (lost) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for row, runs in results.items():

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        latencies = [lat for r in runs for lat in r["latencies"]]
        lost = sum(r["lost"] for r in runs)
        sos = (
            f"{statistics.median(latencies):.1f} / {max(latencies):.1f} ({lost})"
            if latencies
            else f"- ({lost})"
        )
        print(
            f"| {ROWS[row]} | {med('cpu'):.3f} | {med('switches'):.1f} | "
            f"{med('written') / 1024:.1f} | {med('messages'):.1f} | {sos} |"
        )
    for row, runs in results.items():
        print(f"\n{ROWS[row]}, per thread:\n")
        print("| thread | CPU s/min | context switches/s | written KiB/min |")
        print("|---|---:|---:|---:|")
        per: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        for r in runs:
            for name, figures in r["threads"].items():
                per[name].append(figures)
        ordered = sorted(per.items(), key=lambda kv: -statistics.median(f[1] for f in kv[1]))
        for name, figures in ordered:
            cpu, sw, wr = (statistics.median(f[i] for f in figures) for i in range(3))
            print(f"| {name} | {cpu:.3f} | {sw:.1f} | {wr / 1024:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
