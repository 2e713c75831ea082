"""End to end: the base-station simulator on a pty at 115200 baud, the gateway built from a
config file as ``gateway run`` builds it, every transmission delivered once with the right
content at a platform subscriber on a real mosquitto (radio repeats dropped)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import build
from gateway.config import load_config
from gateway.devices.framers.binary import BinaryFramer
from gateway.devices.model import Frame
from gateway.devices.service import PortService
from gateway.devices.simulate import Paced, Sent, Traffic, VirtualPort, run_traffic
from tests.devices.conftest import CONFIGS, definition
from tests.devices.support import Pty
from tests.support.broker import Mosquitto
from tests.support.subscriber import Subscriber
from tests.support.wait import eventually

TYPE_OF = {
    "seen": "wristband.seen",
    "sos": "alarm.sos",
    "fall": "alarm.fall",
    "band_removed": "band.removed",
    "band_worn": "band.worn",
    "battery_low": "battery.low",
}


def test_simulated_base_station_to_the_platform(tmp_path: Path, mosquitto: Mosquitto) -> None:
    pty = Pty(tmp_path / "ttyBASE")
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f"""
[gateway]
data_dir = "{tmp_path / "var"}"
[clock]
sync_source = "assume_synced"
[mqtt]
brokers = ["{mosquitto.url}"]
[devices]
definitions_dir = "{CONFIGS}"
[[devices.ports]]
name = "ward-a"
station = "station-1"
definition = "aa55-reference.toml"
url = "{pty.path}"
baudrate = 115200
"""
    )
    loaded = load_config(cfg)
    gw = build(loaded, password=None)
    platform = Subscriber(mosquitto.port)
    traffic = Traffic(definition("aa55-reference"), bands=60, repeats=3, alarms_per_hour=3600 * 0.1)
    sent: list[Sent] = []
    gw.start()
    try:
        # a station's bytes before the port is open are not heard (pyserial flushes them)
        (port,) = [s for s in gw.services if isinstance(s, PortService)]
        eventually(lambda: port.link.stats.state == "up")
        writer = threading.Thread(
            target=run_traffic,
            args=(Paced(pty.write, 115200), traffic),
            kwargs={
                "interval_s": 0.5,
                "duration_s": 2.0,
                "burst_every_s": 1.0,
                "on_sent": lambda s, _t: sent.append(s),
            },
        )
        writer.start()
        writer.join()
        unique = {(s.band, s.seq, s.kind) for s in sent}

        def delivered() -> list[dict[str, Any]]:
            return [e for e in platform.events() if e["type"] in TYPE_OF.values()]

        eventually(lambda: len({e["event_id"] for e in delivered()}) >= len(unique), timeout=20)
        health = gw.supervisor.health()["port:ward-a"]
    finally:
        gw.stop()
        pty.close()
        platform.close()
    events = list({e["event_id"]: e for e in delivered()}.values())
    got = {(e["data"]["device"], e["data"]["seq"], e["type"]) for e in events}
    assert got == {(band, seq, TYPE_OF[kind.value]) for band, seq, kind in unique}
    assert len(events) == len(got)  # each once
    assert any(e["type"] == "alarm.sos" for e in events)
    assert all(e["data"]["station"] == "station-1" for e in events)
    assert health["duplicates"] == len(sent) - len(unique) > 0
    assert health["rejected"] == {} and health["replies"] == {}  # a radio link: nothing to answer
    assert health["alarm_record_ms"]["p50"] > 0
    assert all(e["data"]["raw"] for e in events)


def test_simulate_command_writes_decodable_frames(tmp_path: Path) -> None:
    pty = Pty(tmp_path / "ttySIM")
    cmd = [sys.executable, "-m", "gateway", "simulate", "basestation"]
    cmd += ["--device", str(CONFIGS / "aa55-reference.toml"), "--port", str(pty.path)]
    cmd += ["--bands", "20", "--interval", "0.2", "--duration", "0.5", "--burst-every", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    spec = definition("aa55-reference").binary
    assert spec is not None
    framer = BinaryFramer(spec.framing)
    frames = []
    while data := pty.read(4096, timeout=0.2):
        frames += [f for f in framer.feed(data) if isinstance(f, Frame)]
    sent = int(proc.stderr.split("sent ")[1].split()[0])
    assert len(frames) == sent >= 40
    pty.close()
    assert not os.path.exists(str(pty.path) + ".new")


def test_a_virtual_base_station_says_what_nobody_read(tmp_path: Path) -> None:
    """An installer who starts the simulator before the gateway, or points the gateway at
    another port, is told the frames went nowhere rather than that they were sent."""
    cmd = [sys.executable, "-m", "gateway", "simulate", "basestation"]
    cmd += ["--device", str(CONFIGS / "aa55-reference.toml"), "--pty", str(tmp_path / "ttyW")]
    cmd += ["--bands", "200", "--interval", "0.01", "--duration", "1", "--burst-every", "0"]
    cmd += ["--baud", "921600"]  # more than a pty holds, within a second
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("sent ") and "bytes lost: nobody was reading the port" in last


def test_a_virtual_base_station_is_a_port_the_gateway_opens(tmp_path: Path) -> None:
    """`simulate basestation --pty LINK`: the gateway opens LINK like a USB adapter."""
    from gateway.devices.link import SerialSettings, open_port

    link = tmp_path / "ttyWRIST"
    cmd = [sys.executable, "-m", "gateway", "simulate", "basestation"]
    cmd += ["--device", str(CONFIGS / "aa55-reference.toml"), "--pty", str(link)]
    cmd += ["--bands", "20", "--interval", "0.2", "--duration", "3", "--burst-every", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert "virtual base station at" in proc.stderr.readline()
    spec = definition("aa55-reference").binary
    assert spec is not None
    framer = BinaryFramer(spec.framing)
    port = open_port(str(link), SerialSettings(115200, "8N1"), timeout=0.2)
    frames: list[Frame] = []
    try:
        deadline = time.monotonic() + 10
        while len(frames) < 40 and time.monotonic() < deadline:
            frames += [f for f in framer.feed(port.read(4096)) if isinstance(f, Frame)]
    finally:
        port.close()
        proc.communicate(timeout=30)  # waits, and closes its pipe
    assert len(frames) >= 40
    assert not link.exists(), "the simulator removes its port when it ends"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["kill", "hangup"])
def test_a_killed_virtual_base_station_removes_its_port(tmp_path: Path, signum: int) -> None:
    """The demo stops its simulators with a kill, an installer by closing the terminal: a
    link left behind would point at a pty that someone's terminal may be given next."""
    link = tmp_path / "ttyWRIST"
    cmd = [sys.executable, "-m", "gateway", "simulate", "basestation"]
    cmd += ["--device", str(CONFIGS / "aa55-reference.toml"), "--pty", str(link)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert "virtual base station at" in proc.stderr.readline()
    assert link.is_symlink()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum  # as a shell reports a killed process
    assert "Traceback" not in err
    assert not link.is_symlink()


def test_a_virtual_port_counts_every_byte_it_could_not_pass_on(tmp_path: Path) -> None:
    """Frames that do not divide the pty's buffer: the one that only partly fits loses its
    tail, and that tail is in the count the simulator reports, not gone unsaid."""
    link = tmp_path / "ttyV"
    port = VirtualPort(link)
    frame = b"\xaa\x55" + bytes(range(97))  # 99 bytes
    given = 0
    while not port.dropped:
        port.write(frame)
        given += len(frame)
    reader = os.open(link, os.O_RDONLY | os.O_NOCTTY)  # the gateway's end
    on_line = 0
    try:  # the pty passes its buffer on in steps: until it has nothing more for a while
        while select.select([reader], [], [], 0.5)[0]:
            on_line += len(os.read(reader, 65536))
    finally:
        os.close(reader)
        port.close()
    assert on_line + port.dropped == given
