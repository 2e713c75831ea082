"""`gateway run` as a process: it stops cleanly on the signals an appliance gets."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_the_gateway_stops_cleanly_on_a_signal(tmp_path: Path, signum: signal.Signals) -> None:
    """SIGHUP: the SSH session of `scripts/run CONFIG` was lost. A clean stop spares the next
    start its database check."""
    config = tmp_path / "g.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n[clock]\nsync_source = "never"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "running (config" in line:
            break
    proc.send_signal(signum)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert f"signal {int(signum)}: stopping" in rest and "Traceback" not in rest
