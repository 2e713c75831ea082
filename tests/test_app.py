"""`gateway run` as a process: it stops cleanly on the signals an appliance gets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.deadpeer import Silent, Unanswered, outage_config


def _run_then_stop(
    config: Path, signum: signal.Signals = signal.SIGTERM
) -> tuple[int, list[str], str]:
    """Run the gateway until it says it is running, then signal it: its exit code, the log
    lines up to then and the rest."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "running (config" in line:
            break
    proc.send_signal(signum)
    _, rest = proc.communicate(timeout=60)
    return proc.returncode, seen, rest


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_the_gateway_stops_cleanly_on_a_signal(tmp_path: Path, signum: signal.Signals) -> None:
    """SIGHUP: the SSH session of `scripts/run CONFIG` was lost. A clean stop spares the next
    start its database check."""
    config = tmp_path / "g.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n[clock]\nsync_source = "never"\n'
    )
    returncode, _, rest = _run_then_stop(config, signum)
    assert returncode == 0, rest
    assert f"signal {int(signum)}: stopping" in rest and "Traceback" not in rest


def test_a_config_of_the_first_release_with_a_retired_key_starts_with_a_warning(
    tmp_path: Path,
) -> None:
    """An upgraded site keeps its config file: one that set ``ttl_s`` for records, as the
    first release allowed, exited 2 and systemd did not restart it (no alarms either)."""
    config = tmp_path / "g.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n[clock]\nsync_source = "never"\n'
        "[store.lanes.p1]\nquota_mb = 512\nttl_s = 86400\n"
    )
    returncode, seen, rest = _run_then_stop(config)
    assert returncode == 0, "".join(seen) + rest
    assert any("g.toml:7: store.lanes.p1.ttl_s: ignored" in line for line in seen), seen


def test_a_stop_in_a_full_network_outage_ends_well_before_the_service_manager_kills(
    tmp_path: Path, shared_dir: Path
) -> None:
    """systemd sends SIGKILL 30 s after SIGTERM (TimeoutStopSec), and the clean stop's
    guarantees go with it. Sent while the TLS handshake with the broker hangs and the camera's
    open waits, each with the 60 s connect timeout of a slow mobile link, the stop must not
    wait for either."""
    broker, camera, station = Silent(), Silent(), Unanswered()
    config = tmp_path / "g.toml"
    site = outage_config(
        tmp_path / "var", f"mqtts://127.0.0.1:{broker.port}", camera.port, station.port, 60
    )
    config.write_text(site)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GATEWAY_MODELS_DIR": str(shared_dir / "models")},
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "running (config" in line:
                break
        assert broker.accepted.wait(30) and camera.accepted.wait(30), "no connection attempts"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            _, rest = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("still stopping 20 s after SIGTERM")
        took = time.monotonic() - started
        assert proc.returncode == 0 and "Traceback" not in rest, rest
        assert "stopping store" in rest, f"not a clean stop ({took:.1f} s)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for peer in (broker, camera, station):
            peer.close()


def test_a_dc09_port_another_program_holds_leaves_the_serial_alarms_running(
    tmp_path: Path,
) -> None:
    """One log line saying which receiver and which port, no traceback, and the rest of the
    gateway runs on (the receiver is tried again): before, the whole gateway exited, and the
    wristbands on its serial ports went unheard while systemd restarted it every 3 s."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = tmp_path / "g.toml"
        config.write_text(
            f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n[clock]\nsync_source = "never"\n'
            f'[devices]\ndefinitions_dir = "{Path(__file__).parents[1] / "device_configs"}"\n'
            '[[devices.ports]]\nname = "ward"\nurl = "loop://"\n'
            'definition = "aa55-reference.toml"\n'
            '[[devices.dc09]]\nname = "panel"\ndefinition = "dc09-receiver.toml"\n'
            f'host = "127.0.0.1"\nport = {port}\n'
        )
        returncode, seen, rest = _run_then_stop(config)
    log = "".join(seen) + rest
    assert returncode == 0, log
    assert (
        f"dc09:panel not started, the rest runs on: dc09 panel: cannot listen on 127.0.0.1:{port}: "
        in log
    )
    assert "starting port:ward" in log and "Traceback" not in log


def test_the_running_gateway_is_called_gateway_by_ss_fuser_and_pgrep(tmp_path: Path) -> None:
    """`ss -ltnup` on a taken port and `fuser -v` on a held database (the README's checks)
    name a process by its kernel name: it must stay `gateway`, which the threads' names must
    not overwrite (the main thread's is the process's own)."""
    config = tmp_path / "g.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n[clock]\nsync_source = "never"\n'
    )
    proc = subprocess.Popen(
        [Path(sys.executable).parent / "gateway", "run", "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "running (config" in line:
                break
        time.sleep(2)  # a few ticks of the main loop, which names new threads
        comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
        threads = {p.read_text().strip() for p in Path(f"/proc/{proc.pid}/task").glob("*/comm")}
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert comm == "gateway"
    assert "store-writer" in threads  # the other threads keep their own names
