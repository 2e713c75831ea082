"""The benchmark scripts still run against the code they measure (a few rows each, untimed):
they are not part of the package, and nothing else would notice a change that breaks them."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
from pathlib import Path

from bench import backbone, devices, idle, mixed, stop, vision
from tests.support.broker import Mosquitto


def test_the_backbone_ingest_benchmark_runs(tmp_path: Path) -> None:
    assert backbone.raw_ingest(tmp_path / "raw.db", 300, 100) > 0
    assert backbone.store_pipelined(tmp_path / "store.db", 300, 2) > 0


def test_the_reconnect_memory_benchmark_runs() -> None:
    out: mp.Queue[tuple[bool, list[int]]] = mp.Queue()
    backbone.reconnects(True, 1, 0.0, out)
    cycling, rss = out.get(timeout=5)
    assert cycling and len(rss) == 2 and min(rss) > 0


def test_the_device_decoding_benchmarks_run() -> None:
    assert devices.dc09_rate(50) > 0 and devices.espa_rate(50) > 0


def test_the_gallery_search_benchmark_runs() -> None:
    assert set(vision.bench_search((100,), repeats=3)) == {100}


def test_the_stop_benchmark_runs() -> None:
    took, clean = stop.trial(True, None, random.Random(1))
    assert took > 0 and clean


def test_the_mixed_load_benchmark_runs(tmp_path: Path, mosquitto: Mosquitto) -> None:
    enrolled = mixed.stage_faces(tmp_path)
    args = argparse.Namespace(seconds=2.0, bands=5)
    run = mixed.one_run(tmp_path, enrolled, mosquitto.port, mixed.Row(15.0), args=args, n=0)
    assert run["sos"] > 0 and run["missing"] == 0 and 0 < run["p50"] <= run["max"]


def test_the_idle_benchmark_runs(tmp_path: Path, mosquitto: Mosquitto) -> None:
    args = argparse.Namespace(seconds=1.0, settle=0.0, alarms=1)
    run = idle.one_run(tmp_path, mosquitto.port, None, args, 0)
    assert run["switches"] > 0 and run["lost"] == 0 and "store-writer" in run["threads"]
