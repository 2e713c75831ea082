"""Stop in a full network outage: the time from SIGTERM to the exit of ``gateway run``.

    .venv/bin/python bench/stop.py [--trials 5] [--seed 1]

The demo site with every network peer out of reach: the broker, an RTSP counter camera and a
``socket://`` wristband base station. Two kinds of dead peer, made on this machine: a port
whose accept queue is held full, so a connect gets no answer at all (a host that is gone), and
one that accepts and then says nothing (a TLS handshake or an RTSP request never answered).
The stop comes at a random moment of the run, or in the middle of a connection attempt to a
broker whose TLS handshake never answers, with the default connect timeouts or the 60 s of a
slow mobile link. Prints a markdown table: median and max, each row's median against the first
row's (the baseline of the same run), and the stops that did not exit 0 after closing the
store. To compare two versions, run each one's copy of
this script at the same time. Models come from $GATEWAY_MODELS_DIR (default ../shared/models).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.deadpeer import Silent, Unanswered, outage_config  # noqa: E402

ROWS = {  # name: (broker's TLS handshake hangs, connect timeout)
    "at a random moment (3-15 s in)": (False, None),
    "while a TLS handshake with the broker hangs": (True, None),
    "the same, connect timeouts 60 s (slow mobile link)": (True, 60.0),
}


def trial(tls: bool, connect_timeout_s: float | None, rng: random.Random) -> tuple[float, bool]:
    """Seconds from SIGTERM to the exit of one gateway run in the outage, and whether it
    exited 0 after closing the store."""
    dead, broker, camera = Unanswered(), Silent(), Silent()
    url = f"mqtts://127.0.0.1:{broker.port}" if tls else f"mqtt://127.0.0.1:{dead.port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "site.toml"
            var = Path(tmp) / "var"
            config.write_text(outage_config(var, url, camera.port, dead.port, connect_timeout_s))
            command = [str(Path(sys.executable).parent / "gateway"), "run", "-c", str(config)]
            proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
            try:
                return _stop_in_outage(proc, broker if tls else None, rng)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    finally:
        for peer in (dead, broker, camera):
            peer.close()


def _stop_in_outage(
    proc: subprocess.Popen[str], broker: Silent | None, rng: random.Random
) -> tuple[float, bool]:
    assert proc.stderr is not None
    for line in proc.stderr:
        if "running (config" in line:
            break
    else:
        raise RuntimeError("the gateway did not start")
    if broker is None:
        time.sleep(rng.uniform(3.0, 15.0))
    elif broker.accepted.wait(30):
        time.sleep(rng.uniform(0.0, 1.0))
    else:
        raise RuntimeError("no connection attempt to the broker")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=300)
    took = time.monotonic() - started
    clean = proc.returncode == 0 and "store closed" in rest
    if not clean:
        print(f"exit {proc.returncode} after {took:.1f} s:\n{rest[-1500:]}", file=sys.stderr)
    return took, clean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("GATEWAY_MODELS_DIR", str(ROOT.parent / "shared" / "models"))
    rng = random.Random(args.seed)
    results = {
        name: [trial(tls, timeout, rng) for _ in range(args.trials)]
        for name, (tls, timeout) in ROWS.items()
    }
    times = {name: [t for t, _ in runs] for name, runs in results.items()}
    base = statistics.median(next(iter(times.values())))
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print(
        "| SIGTERM in a full outage | trials | to exit, median | max | vs first row | not clean |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        median = statistics.median(times[name])
        unclean = sum(not clean for _, clean in runs)
        print(
            f"| {name} | {len(runs)} | {median:.1f} s | {max(times[name]):.1f} s "
            f"| {median / base:.2f} | {unclean} |"
        )
    print("\nall trials (s):", {k: [round(t, 1) for t in v] for k, v in times.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
