"""Commands whose output an installer pipes into ``head`` or ``less`` and quits early: the
command ends quietly with a shell's SIGPIPE status (141), no traceback and no error about its
own output, as other command-line tools do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.clock import ClockSync, SystemClock
from gateway.store import Store
from tests.devices.conftest import CONFIGS
from tests.support.gateway import config

SOS = "AA550A01A1B2C3D4E5F602C601A525"


def _to_closed_pipe(*args: str, timeout: float = 120) -> tuple[int, str]:
    """Run ``gateway ARGS`` with its standard output a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


def test_decode_into_a_reader_that_stopped_reading(tmp_path: Path) -> None:
    """`gateway decode --file CAPTURE | head`: a day's capture is more than a pipe holds."""
    capture = tmp_path / "capture.bin"
    capture.write_bytes(bytes.fromhex(SOS) * 5000)
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "decode",
            "--device",
            str(CONFIGS / "aa55-reference.toml"),
            "--file",
            str(capture),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert '"alarm.sos"' in proc.stdout.readline()
        proc.stdout.close()  # head has its line
        err = proc.stderr.read()
    assert proc.returncode == 141
    assert err == ""


def test_outbox_stats_into_a_closed_pipe(tmp_path: Path) -> None:
    loaded = config(tmp_path / "data", None)
    store = Store(loaded.config.store, loaded.config.db_path, SystemClock(), ClockSync("never", 60))
    store.start()
    store.stop()
    site = tmp_path / "gw.toml"
    site.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n')
    for args in (
        ["outbox", "stats", "-c", str(site)],
        ["outbox", "stats", "-c", str(site), "--json"],
    ):
        assert _to_closed_pipe(*args) == (141, "")


def test_config_reference_and_models_verify_into_a_closed_pipe(tmp_path: Path) -> None:
    assert _to_closed_pipe("config-reference") == (141, "")
    # the face stage's commands turn OSError into "error: ...": not their own output's
    assert _to_closed_pipe("models", "verify", "--models-dir", str(tmp_path)) == (141, "")


def test_identify_into_a_reader_that_has_gone(tmp_path: Path, shared_dir: Path) -> None:
    """The decisions are printed from the face stage's thread: a closed pipe there ends the
    command, not that thread with a traceback while the command waits on for --seconds."""
    models_dir = Path(os.environ.get("GATEWAY_MODELS_DIR") or shared_dir / "models")
    faces_dir = shared_dir / "faces"
    site = tmp_path / "gw.toml"
    site.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n[vision]\nmodels_dir = "{models_dir}"\n'
    )
    photo = str(faces_dir / "deepface" / "img24.jpg")
    enrolled = subprocess.run(
        [sys.executable, "-m", "gateway", "enroll", "-c", str(site), "--elder", "e-1", photo],
        capture_output=True,
        check=False,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    camera = tmp_path / "camera"
    camera.mkdir()
    shutil.copyfile(faces_dir / "deepface" / "img25.jpg", camera / "1.jpg")
    status, err = _to_closed_pipe(
        "identify", "-c", str(site), "--camera", str(camera), "--lockstep", "--seconds", "30"
    )
    assert status == 141
    assert "Traceback" not in err and "Broken pipe" not in err


def test_identify_ends_when_head_has_its_line_and_nobody_is_at_the_counter(
    tmp_path: Path, shared_dir: Path
) -> None:
    """`gateway identify --camera /dev/video0 | head -n 1`: the closed pipe was only found
    at the next decision, and at an empty counter none came, so the command ran on with the
    camera held (the service could not open it) until Ctrl-C."""
    models_dir = Path(os.environ.get("GATEWAY_MODELS_DIR") or shared_dir / "models")
    site = tmp_path / "gw.toml"
    site.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n[vision]\nmodels_dir = "{models_dir}"\n'
        "[vision.camera]\nreplay_loop = true\nreplay_hold_s = 0.5\nreplay_gap_s = 60\n"
    )
    camera = tmp_path / "camera"
    camera.mkdir()
    shutil.copyfile(shared_dir / "faces" / "antispoof" / "image_T1.jpg", camera / "1.jpg")
    command = [sys.executable, "-m", "gateway", "identify", "-c", str(site), "--camera"]
    with subprocess.Popen(
        [*command, str(camera)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert '"outcome": "unknown"' in proc.stdout.readline()
        proc.stdout.close()  # head has its line; a minute of empty counter follows
        try:
            status = proc.wait(timeout=30)
        finally:
            proc.kill()
        err = proc.stderr.read()
    assert status == 141
    assert "Traceback" not in err and "Broken pipe" not in err
