import os
import subprocess
import sys
from pathlib import Path

from gateway.vision.models import Manifest


def test_onnxruntime_keeps_no_usage_store_and_starts_no_telemetry(
    tmp_path: Path, models_dir: Path, manifest: Manifest
) -> None:
    """onnxruntime would write a device id and a usage database under the user's cache
    directory on import; a session made through the gateway leaves nothing there."""
    home = tmp_path / "home"
    home.mkdir()
    model = models_dir / manifest.recognizer.file
    code = (
        "from pathlib import Path\n"
        "from gateway.vision.runtime import Session\n"
        f"Session(Path({str(model)!r}), 1)\n"
    )
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert list(home.rglob("*")) == []
