"""The one place that imports onnxruntime: sessions are created once, with bounded threads.

Keeping the runtime behind this module means a site could swap in another engine (or a newer
onnxruntime with a different API) by changing one file, and the thread budget is decided here:
a Pi 4 has four cores that the camera, the store and the serial links share with inference.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

# onnxruntime's telemetry (a device id and a usage database in
# $XDG_CACHE_HOME/Microsoft/DeveloperTools, and a client for Microsoft's event collector) starts
# when the library is imported, whatever is switched off afterwards: only this variable, read at
# import, keeps it from starting. Nothing of the counter's may leave the box or be kept that way.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_limits

from gateway.vision.errors import ModelError

ort.disable_telemetry_events()


def engine_version() -> str:
    return f"onnxruntime {ort.__version__}"


def one_blas_thread() -> None:
    """Keep NumPy's BLAS (the gallery search's matrix product) to the calling thread.

    OpenBLAS starts a thread per core and leaves them spinning after each call; beside a model
    running on the other core they take the CPU it needs (measured: liveness run alongside the
    embedding went from 8 to 14 ms per frame). One thread searches 10,000 templates in 0.3 ms.
    """
    threadpool_limits(1, user_api="blas")


@dataclass(frozen=True)
class InputInfo:
    name: str
    shape: tuple[int | str | None, ...]


class Session:
    """An inference session with one input; ``run`` returns the outputs in declared order."""

    def __init__(self, path: Path, threads: int) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle pool threads would spin for the next call; with four sessions taking turns (and
        # two at once) the spinners hold the cores the running model needs. Measured on two
        # cores at two threads per inference: 58 ms per frame spinning, 20 ms not.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped exception classes
            raise ModelError(f"{path.name}: onnxruntime cannot load it: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{path.name}: expected one input, found {len(inputs)}")
        self.input = InputInfo(inputs[0].name, tuple(inputs[0].shape))
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.path = path
        self.calls = 0
        self.busy_s = 0.0

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run on one NCHW float32 tensor; time spent is accumulated for the benchmark."""
        start = time.perf_counter()
        outputs = self._session.run(None, {self.input.name: tensor})
        self.busy_s += time.perf_counter() - start
        self.calls += 1
        return [np.asarray(o) for o in outputs]
