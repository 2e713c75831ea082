"""Face stage benchmark: per-frame latency by stage, 1:N search, time to an accepted decision,
gallery writes at site scale, peak memory, and a Raspberry Pi 4 projection. Prints markdown
tables; reports medians (the machine is shared and noisy).

    .venv/bin/python bench/vision.py [--frames 300] [--threads 1]

Models come from $GATEWAY_MODELS_DIR (default ../shared/models), photos from ../shared/faces.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from gateway.vision.align import align
from gateway.vision.analyze import Analyzer, AnalyzerSettings
from gateway.vision.camera import CameraReader, Frame, ImageFolder
from gateway.vision.config import CameraSection, DecisionSection, VisionSection
from gateway.vision.decide import Outcome, Policy
from gateway.vision.embed import l2_normalise
from gateway.vision.enroll import LEARN_UP_TO, enrol, learn, unlearn
from gateway.vision.gallery import Gallery, Snapshot
from gateway.vision.images import decode_image, read_image
from gateway.vision.liveness import crop as liveness_crop
from gateway.vision.models import Models, load_manifest
from gateway.vision.pipeline import CounterPipeline
from gateway.vision.runtime import engine_version
from gateway.vision.still import StillGate

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS_DIR = Path(os.environ.get("GATEWAY_MODELS_DIR") or SHARED / "models")
FACES = SHARED / "faces"
STAGES = ("decode", "detect", "quality", "align", "embed", "liveness", "search")
# Published Raspberry Pi 4 timings (MODELS.md: opencv_zoo benchmark, OpenCV DNN, Cortex-A72)
# against the same models' x86 single-thread timings measured for MODELS.md:
PI4_SLOWER = {
    # a MobileFaceNet-based 112x112 model: Pi 4 27.81 ms; MobileFaceNet here in cv2.dnn 6.7 ms
    "MobileFaceNet-class": 27.81 / 6.7,
    # YuNet 2023mar: Pi 4 6.23 ms at 160x120; x86 3.5 ms at 320x240 (4x the pixels)
    "YuNet per pixel": 6.23 * 4 / 3.5,
}
# who is enrolled with which photo, and which other photo of them the camera shows
SHOWN = {
    "img20.jpg": "img21.jpg",
    "img24.jpg": "img25.jpg",
    "img18.jpg": "img19.jpg",
    "img8.jpg": "img9.jpg",
    "img16.jpg": "img17.jpg",
}
# the per-frame benchmark's frames: a live face nobody enrolled, and the enrolled people shown
FRAME_PHOTOS = [FACES / "antispoof" / "image_T1.jpg"] + [
    FACES / "deepface" / n for n in SHOWN.values()
]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def frame_jpeg(photo: Path) -> bytes:
    """A real photo as a 640x480 camera frame (scaled into the frame, grey borders), JPEG."""
    image = read_image(photo)
    h, w = image.shape[:2]
    factor = min(640 / w, 480 / h)
    size = (round(w * factor), round(h * factor))
    canvas = np.full((480, 640, 3), 96, np.uint8)
    x, y = (640 - size[0]) // 2, (480 - size[1]) // 2
    canvas[y : y + size[1], x : x + size[0]] = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def random_gallery(elders: int, templates: int, seed: int = 1) -> list[tuple[str, np.ndarray]]:
    vectors = l2_normalise(
        np.random.default_rng(seed).standard_normal((elders * templates, 128)).astype(np.float32)
    )
    return [(f"elder-{i // templates:06d}", v) for i, v in enumerate(vectors)]


def open_gallery(folder: Path, model_id: str, rows: list[tuple[str, np.ndarray]]) -> Gallery:
    gallery = Gallery.open(folder / "faces.db", folder / "faces.key", model_id, create=True)
    by_elder: dict[str, list[np.ndarray]] = {}
    for elder, vector in rows:
        by_elder.setdefault(elder, []).append(vector)
    gallery.add_many(by_elder.items())
    return gallery


def peak_rss_mb() -> float:
    """VmHWM: this process's peak resident memory (ru_maxrss would include the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_frames(
    models: Models, cfg: VisionSection, gallery: Gallery, count: int
) -> dict[str, float]:
    """Median per-frame milliseconds by stage, the pipeline total, and the models' own time
    inside it (meaningful only with liveness in turn: alongside, two models overlap)."""
    jpegs = [frame_jpeg(p) for p in FRAME_PHOTOS]
    pipeline = CounterPipeline(
        Analyzer(models, AnalyzerSettings.from_config(cfg)),
        gallery,
        Policy.from_config(cfg.decision),
        "bench",
        models.model_ids(),
        still=StillGate.from_config(cfg),
    )
    sessions = models.sessions()
    stage_ms: dict[str, list[float]] = {s: [] for s in STAGES}
    totals: list[float] = []
    bare: list[float] = []
    for i in range(count):
        data = jpegs[i % len(jpegs)]
        busy = sum(s.busy_s for s in sessions.values())
        start = time.perf_counter()
        image = decode_image(data)
        decoded = time.perf_counter()
        pipeline.process(Frame(image, i / 15, i + 1, decoded - start))
        totals.append((time.perf_counter() - start) * 1000)
        bare.append((sum(s.busy_s for s in sessions.values()) - busy) * 1000)
        for stage in STAGES:
            stage_ms[stage].append(pipeline.last_timings.get(stage, 0.0) * 1000)
    pipeline.analyzer.close()
    out = {stage: median(v) for stage, v in stage_ms.items()}
    out["total"] = median(totals)
    out["inside"] = median(bare)
    out["faces"] = pipeline.counts["face"] / count
    return out


def bare_alone(models: Models, cfg: VisionSection, repeats: int = 60) -> dict[str, float]:
    """Milliseconds per frame of each model run alone, in a loop on the very inputs the
    pipeline makes from the benchmark's frames: warm caches, no other work in between."""
    analyzer = Analyzer(models, AnalyzerSettings.from_config(cfg))
    roles = {id(session): role for role, session in models.sessions().items()}
    per_role: dict[str, list[float]] = {role: [] for role in roles.values()}
    for image in (decode_image(frame_jpeg(p)) for p in FRAME_PHOTOS):
        face = analyzer.detector.detect(image)[0]
        runs = [(analyzer.detector.session, analyzer.detector.prepare(image)[0])]
        aligned = align(image, face.landmarks)
        runs.append((analyzer.embedder.session, analyzer.embedder.spec.tensor(aligned)))
        for session, spec in analyzer.liveness.pairs:
            assert spec.crop_scale is not None
            patch = liveness_crop(image, face.box, spec.crop_scale, spec.input_size)
            runs.append((session, spec.tensor(patch)))
        for session, tensor in runs:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                session.run(tensor)
                times.append(time.perf_counter() - start)
            per_role[roles[id(session)]].append(median(times[repeats // 5 :]) * 1000)
    return {role: statistics.mean(v) for role, v in per_role.items()}


def frame_rounds(models: Models, cfg: VisionSection, count: int, rounds: int) -> dict[str, float]:
    """Both liveness modes and the models alone, interleaved in rounds; the median of each
    figure (and of each ratio) over the rounds, so a noisy spell on the machine hits all."""
    modes = {
        "turn": cfg.model_copy(update={"liveness_alongside": False}),
        "along": cfg.model_copy(update={"liveness_alongside": True}),
    }
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        gallery = open_gallery(
            Path(tmp), models.manifest.recognizer.model_id, random_gallery(5000, 1)
        )
        for _ in range(rounds):
            out: dict[str, float] = {}
            for mode, mode_cfg in modes.items():
                run = bench_frames(models, mode_cfg, gallery, count)
                out.update({f"{mode} {key}": value for key, value in run.items()})
            alone = bare_alone(models, cfg)
            out.update({f"alone {role}": ms for role, ms in alone.items()})
            out["all four"] = sum(alone.values())
            out["critical"] = alone["detector"] + max(
                alone["recognizer"], alone["antispoof_v2"] + alone["antispoof_v1se"]
            )
            for mode in modes:
                whole = out[f"{mode} total"]
                for cut, total in (("", whole), (" nodecode", whole - out[f"{mode} decode"])):
                    out[f"{mode}/all{cut}"] = total / out["all four"] - 1
                    out[f"{mode}/critical{cut}"] = total / out["critical"] - 1
            out["along/turn"] = out["along total"] / out["turn total"]
            results.append(out)
    return {key: median([r[key] for r in results]) for key in results[0]}


def print_frames(frame: dict[str, float], count: int, rounds: int) -> None:
    print(
        f"## Per frame, 640x480 ({count} frames of real photos x {rounds} rounds, "
        "gallery of 5,000)\n"
    )
    print(
        "Liveness in turn (after the embedding) or alongside it on a second thread, the "
        "default where the machine has twice `threads` cores (a Pi 4 at 2 threads, this "
        "machine at 1). Alongside, the liveness row overlaps align, quality, embed and search.\n"
    )
    print("| stage | in turn, ms | alongside, ms |\n|---|---:|---:|")
    for stage in STAGES:
        print(f"| {stage} | {frame[f'turn {stage}']:.2f} | {frame[f'along {stage}']:.2f} |")
    print(
        f"| **pipeline total** | **{frame['turn total']:.2f}** | **{frame['along total']:.2f}** |"
    )
    print(
        f"| the models' own time inside the pipeline | {frame['turn inside']:.2f} | "
        "(overlapping) |\n"
    )
    parts = ", ".join(
        f"{key[6:]} {ms:.2f}" for key, ms in frame.items() if key.startswith("alone ")
    )
    print("| bare inference: each model alone, in a loop on the same inputs | ms |")
    print("|---|---:|")
    print(f"| {parts} | |")
    print(f"| all four, one after another | {frame['all four']:.2f} |")
    print(
        "| critical path: detector, then the longer of recognizer and liveness pair | "
        f"{frame['critical']:.2f} |\n"
    )
    print(
        "| pipeline overhead | in turn vs all four | alongside vs all four | "
        "alongside vs critical path |"
    )
    print("|---|---:|---:|---:|")
    for label, cut in (
        ("whole frame", ""),
        ("without JPEG decode (a live camera decodes on its reader thread)", " nodecode"),
    ):
        print(
            f"| {label} | {frame[f'turn/all{cut}'] * 100:+.1f} % | "
            f"{frame[f'along/all{cut}'] * 100:+.1f} % | "
            f"{frame[f'along/critical{cut}'] * 100:+.1f} % |"
        )
    print(f"\nAlongside / in turn: {frame['along/turn']:.2f}x the time per frame.\n")


def bench_search(sizes: tuple[int, ...], repeats: int = 300) -> dict[int, float]:
    probes = l2_normalise(
        np.random.default_rng(9).standard_normal((repeats, 128)).astype(np.float32)
    )
    out = {}
    for size in sizes:
        snapshot = Snapshot.build(random_gallery(size, 1), 128)
        times = []
        for probe in probes:
            start = time.perf_counter()
            snapshot.search(probe, 3)
            times.append((time.perf_counter() - start) * 1000)
        out[size] = median(times)
    return out


def bench_gallery_writes(model_id: str, elders: int = 5000, repeats: int = 5) -> dict[str, float]:
    """What staff wait for on the downlink thread, in ms, with ``elders`` x 3 templates:
    opening the gallery (every template decrypted), a confirmation that adds a learned face
    (memory updated in place), one at the limit that replaces the oldest learned face, and
    undoing one confirmation (both reload and decrypt everything)."""
    rules = DecisionSection()
    spare = iter(l2_normalise(np.random.default_rng(11).standard_normal((99, 128))))
    times: dict[str, list[float]] = {}

    @contextmanager
    def clock(name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        times.setdefault(name, []).append((time.perf_counter() - start) * 1000)

    with tempfile.TemporaryDirectory() as tmp:
        db, key = Path(tmp) / "faces.db", Path(tmp) / "faces.key"
        open_gallery(Path(tmp), model_id, random_gallery(elders, 3))
        for _ in range(repeats):
            with clock("open"):
                gallery = Gallery.open(db, key, model_id)
        elder = gallery.snapshot.elders[0]
        for i in range(LEARN_UP_TO - 3):
            with clock("learn"):
                learn(gallery, elder, next(spare), rules=rules, decision=f"d{i}")
        for i in range(repeats):
            with clock("learn at the limit"):
                learn(gallery, elder, next(spare), rules=rules, decision=f"r{i}")
        for decision in gallery.learned(elder)[:repeats]:
            with clock("unlearn"):
                unlearn(gallery, elder, rules=rules, decision=decision)
    return {name: median(values) for name, values in times.items()}


class Onsets:
    """A replay source that notes when each photo first comes into view."""

    def __init__(self, source: ImageFolder) -> None:
        self.source = source
        self.name = source.name
        self.paced = True
        self.onsets: list[float] = []
        self._showing = False

    def open(self) -> None:
        self.source.open()

    def read(self) -> tuple[np.ndarray | None, float]:
        image, decode_s = self.source.read()
        face = image is not None and not np.all(image == image.flat[0])
        if face and not self._showing:
            self.onsets.append(time.monotonic())
        self._showing = face
        return image, decode_s

    def close(self) -> None:
        self.source.close()


def bench_time_to_accept(models: Models, cfg: VisionSection, loops: int) -> tuple[list[float], int]:
    """Real time at 15 fps: from the first frame showing an enrolled face to its acceptance
    (the empty frames between the photos are the still scene the gate skips)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        analyzer = Analyzer(models, AnalyzerSettings.from_config(cfg))
        gallery = Gallery.open(
            folder / "faces.db",
            folder / "faces.key",
            models.manifest.recognizer.model_id,
            create=True,
        )
        shown = folder / "camera"
        shown.mkdir()
        for enrolled, other in SHOWN.items():
            enrol(
                gallery,
                analyzer,
                f"elder-{enrolled}",
                [FACES / "deepface" / enrolled],
                rules=cfg.decision,
            )
            (shown / other).write_bytes((FACES / "deepface" / other).read_bytes())
        camera = CameraSection(fps=15, replay_hold_s=1.5, replay_gap_s=1.0, replay_loop=True)
        policy = Policy.from_config(cfg.decision.model_copy(update={"cooldown_s": 0.0}))
        # as a site runs it: the still-scene gate skips the detector between the photos
        pipeline = CounterPipeline(
            analyzer, gallery, policy, "bench", models.model_ids(), still=StillGate.from_config(cfg)
        )
        source = Onsets(ImageFolder(shown, camera))
        reader = CameraReader(source, camera)
        latencies: list[float] = []
        decisions = 0
        reader.start()
        deadline = time.monotonic() + loops * len(SHOWN) * 2.5 + 2
        try:
            while time.monotonic() < deadline:
                frame = reader.next_frame(timeout=0.2)
                events = pipeline.process(frame) if frame else pipeline.idle(reader.now())
                for event in events:
                    decisions += 1
                    if event.decision.outcome is Outcome.ACCEPTED and source.onsets:
                        latencies.append((time.monotonic() - source.onsets[-1]) * 1000)
        finally:
            reader.stop()
        return latencies, decisions


def rss_child(threads: int) -> None:
    """Peak RSS with every model loaded, 5,000 elders (3 templates each) decrypted into memory,
    and frames analysed; printed in MB. Run in its own process so nothing else counts."""
    cfg = VisionSection(models_dir=MODELS_DIR, threads=threads, liveness_alongside=True)
    base = peak_rss_mb()
    models = Models.open(MODELS_DIR, load_manifest(), threads)
    with tempfile.TemporaryDirectory() as tmp:
        built = open_gallery(
            Path(tmp), models.manifest.recognizer.model_id, random_gallery(5000, 3)
        )
        del built
        gallery = Gallery.open(
            Path(tmp) / "faces.db", Path(tmp) / "faces.key", models.manifest.recognizer.model_id
        )
        assert gallery.report.elders == 5000 and gallery.report.templates == 15000
        bench_frames(models, cfg, gallery, 50)
    print(f"{base:.0f} {peak_rss_mb():.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads per inference")
    parser.add_argument("--accept-loops", type=int, default=3)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.threads)
        return 0
    cfg = VisionSection(models_dir=MODELS_DIR, threads=args.threads)
    models = Models.open(MODELS_DIR, load_manifest(), args.threads)

    print("# Face stage benchmark\n")
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"Machine: {cpu}, {os.cpu_count()} cores (shared), Python {platform.python_version()}, "
        f"{engine_version()}, OpenCV {cv2.__version__}; "
        f"{args.threads} thread(s) per inference; medians.\n"
    )

    frame = frame_rounds(models, cfg, args.frames, args.rounds)
    print_frames(frame, args.frames, args.rounds)

    search = bench_search((1_000, 10_000, 50_000))
    print("## 1:N search (top 3 and runner-up, one matrix product)\n")
    print("| templates | ms |\n|---:|---:|")
    for size, ms in search.items():
        print(f"| {size:,} | {ms:.3f} |")
    print()

    latencies, decisions = bench_time_to_accept(models, cfg, args.accept_loops)
    policy = DecisionSection()
    print(f"## Time to an accepted decision, 15 fps, k={policy.k} of n={policy.n}\n")
    print(
        f"{len(latencies)} acceptances of {decisions} decisions; from the first frame showing "
        f"an enrolled face to the decision: median {median(latencies):.0f} ms, "
        f"max {max(latencies, default=float('nan')):.0f} ms.\n"
    )

    writes = bench_gallery_writes(models.manifest.recognizer.model_id)
    print("## Gallery writes at site scale, 5,000 elders x 3 templates\n")
    print("| staff action | ms |\n|---|---:|")
    print(f"| open the gallery (decrypt every template) | {writes['open']:.0f} |")
    print(f"| `face.confirm`: learn a face | {writes['learn']:.0f} |")
    print(
        f"| `face.confirm` at {LEARN_UP_TO} templates (replaces the oldest learned) | "
        f"{writes['learn at the limit']:.0f} |"
    )
    print(f"| `face.unlearn` one confirmation | {writes['unlearn']:.0f} |")
    print()

    child = subprocess.run(
        [sys.executable, __file__, "--rss-child", "--threads", str(args.threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    base_mb, peak_mb = (float(x) for x in child.stdout.split())
    print("## Memory\n")
    print(
        f"Peak RSS with all four models loaded, 5,000 elders x 3 templates decrypted into "
        f"memory and 50 frames analysed: **{peak_mb:.0f} MB** (the interpreter with its "
        f"imports alone: {base_mb:.0f} MB).\n"
    )

    print("## Raspberry Pi 4 (projection, not a measurement)\n")
    print(
        "Scaled from this run by the ratio of published Pi 4 timings to x86 timings of the "
        "same model class (MODELS.md); onnxruntime on ARM may differ from OpenCV DNN, which "
        "the published figures used.\n"
    )
    print("| basis | Pi 4 / x86 | frame total | frames/s | time to accept |")
    print("|---|---:|---:|---:|---:|")
    for basis, ratio in PI4_SLOWER.items():
        total = frame["along total"] * ratio
        fps = min(15.0, 1000 / total)
        accept = (policy.k - 1) * 1000 / fps + total
        print(f"| {basis} | {ratio:.1f}x | {total:.0f} ms | {fps:.1f} | ~{accept:.0f} ms |")
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
