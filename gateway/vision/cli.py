"""Commands of the face stage: models, enroll, gallery, eval, identify, audit.

Light module: OpenCV and onnxruntime are imported inside the handlers, so ``gateway --help``
and the other stages' commands stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gateway.argtypes import at_least_one, positive, rate
from gateway.config import ConfigFileError, GatewayConfig, load_config
from gateway.lifecycle import StartupError
from gateway.stdout import EXIT_PIPE, discard, reader_gone, stdout_closed
from gateway.vision.config import VisionSection, shown_source
from gateway.vision.errors import VisionError

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2
EXIT_FLAGGED = 3


def _config(args: argparse.Namespace) -> GatewayConfig:
    return load_config(args.config).config


def _guard(handler: Any) -> Any:
    """Turn the errors a user can act on into a message and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            result: int = handler(args)
        except ConfigFileError as exc:
            print(f"configuration error:\n{exc}", file=sys.stderr)
            return EXIT_CONFIG
        except (VisionError, StartupError, ValueError, OSError) as exc:
            if reader_gone(exc):  # `| head` has what it wanted: not an error
                raise
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL
        return result

    return run


# ---- models ----------------------------------------------------------------------------------


def cmd_models_verify(args: argparse.Namespace) -> int:
    from gateway.vision.models import load_manifest, resolve_models_dir, verify

    vision = _config(args).vision
    models_dir = args.models_dir or resolve_models_dir(vision.models_dir)
    checks = verify(models_dir, load_manifest(vision.manifest))
    for c in checks:
        status = "ok" if c.ok else f"BAD: {c.problem}"
        print(f"{c.role:15} {c.spec.model_id:36} {c.path}: {status}")
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAIL


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from gateway.vision.models import fetch, load_manifest, resolve_models_dir

    vision = _config(args).vision
    models_dir = args.models_dir or resolve_models_dir(vision.models_dir)
    results = fetch(args.source, models_dir, load_manifest(vision.manifest))
    for r in results:
        print(f"{r.role:15} {r.file:36} {r.action}{': ' + r.detail if r.detail else ''}")
    return EXIT_OK if all(r.action != "failed" for r in results) else EXIT_FAIL


# ---- enrolment and gallery ------------------------------------------------------------------

DAMAGED_ADVICE = "erase them ('gateway gallery remove') and enrol those elders again"


def _open_gallery(cfg: GatewayConfig, create: bool) -> Any:
    from gateway.vision.gallery import Gallery

    return Gallery.configured(cfg.vision, cfg.gateway.data_dir, create=create)


def cmd_enroll(args: argparse.Namespace) -> int:
    from gateway.vision.analyze import Analyzer
    from gateway.vision.calibrate import beyond_calibration
    from gateway.vision.elders import BadElderId, check_elder_id
    from gateway.vision.enroll import RECOMMENDED_PHOTOS, enrol, folder_photos, refused_id
    from gateway.vision.images import IMAGE_SUFFIXES
    from gateway.vision.progress import Progress

    cfg = _config(args)
    vision = cfg.vision
    jobs: list[tuple[str, list[Path] | str]]
    if args.folder is not None and args.allow_similar:
        print(
            "--allow-similar is for one elder whom staff have checked (--elder ID), not for "
            "every folder of a bulk run",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.folder is not None and (args.elder or args.photos):
        print("give either --elder ID PHOTOS... or --folder DIR, not both", file=sys.stderr)
        return EXIT_CONFIG
    if args.folder is not None:
        try:
            jobs = folder_photos(args.folder)
            loose = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in args.folder.iterdir())
        except OSError as exc:
            print(f"{args.folder}: cannot be read: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAIL
        if not jobs:
            print(
                f"{args.folder}: no elder folders in it (one sub-folder per elder id, holding "
                f"that elder's photos){'; its photos are not in sub-folders' if loose else ''}",
                file=sys.stderr,
            )
            return EXIT_FAIL
        if loose:
            print(
                f"WARNING: {loose} photo(s) directly in {args.folder} not enrolled: only "
                "photos in an elder's sub-folder (named by the elder id) are",
                file=sys.stderr,
            )
    elif args.elder and args.photos:
        try:  # before the models load and a gallery and key are made for nothing
            check_elder_id(args.elder)
        except BadElderId as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        jobs = [(args.elder, list(args.photos))]
    else:
        print("give --elder ID PHOTOS... or --folder DIR", file=sys.stderr)
        return EXIT_CONFIG
    analyzer = Analyzer.from_config(vision)
    gallery = _open_gallery(cfg, create=True)
    if gallery.damaged and not gallery.report.key_mismatch:  # a wrong key: refused below
        print(
            f"WARNING: {gallery.report.undecryptable} templates of {len(gallery.damaged)} "
            "elders fail to decrypt, so new photos are not checked against them, and "
            "photos for those elders are refused ('gateway gallery stats' names them)",
            file=sys.stderr,
        )
    progress = Progress(len(jobs), "enrolling") if len(jobs) > 1 else None
    counts = {"enrolled": 0, "refused": 0, "flagged": 0}
    few_photos = 0
    try:
        for done, (elder, photos) in enumerate(jobs, start=1):
            if isinstance(photos, str):
                result = refused_id(elder, photos)
            else:
                try:
                    result = enrol(
                        gallery,
                        analyzer,
                        elder,
                        photos,
                        rules=vision.decision,
                        allow_similar=args.allow_similar,
                    )
                except BadElderId as exc:
                    result = refused_id(elder, str(exc))
            counts[result.status] += 1
            few_photos += result.status == "enrolled" and result.templates < RECOMMENDED_PHOTOS
            if progress is None or result.status != "enrolled" or args.verbose:
                if progress is not None and progress.tty:
                    print(file=sys.stderr)
                print(f"{elder}: {result.status}: {result.message}")
                for v in result.photos:
                    verdict = "ok" if v.ok else f"refused: {v.reason}"
                    print(f"  {v.name}: {verdict}{' (' + v.detail + ')' if v.detail else ''}")
            if progress is not None:
                progress(done)
    except KeyboardInterrupt:  # Ctrl-C on a bulk run: where it got to, and how to go on
        if len(jobs) > 1:
            print(
                f"\ninterrupted after {sum(counts.values())} of {len(jobs)} elders: "
                f"{', '.join(f'{n} {k}' for k, n in counts.items())}; the same command "
                "again goes on (photos enrolled already are not added twice)",
                file=sys.stderr,
            )
        raise
    if len(jobs) > 1:
        print(", ".join(f"{n} {k}" for k, n in counts.items()))
        if few_photos:
            print(
                f"{few_photos} enrolled with fewer than {RECOMMENDED_PHOTOS} photos in all "
                "(--verbose lists them): add photos to recognise them more reliably"
            )
    problem = beyond_calibration(
        len(gallery.snapshot.elders), vision.decision.calibrated_for_elders
    )
    if problem is not None:
        print(f"WARNING: {problem}")
    return EXIT_OK if counts["refused"] == counts["flagged"] == 0 else EXIT_FLAGGED


def cmd_gallery_stats(args: argparse.Namespace) -> int:
    from gateway.vision.calibrate import beyond_calibration

    cfg = _config(args)
    gallery = _open_gallery(cfg, create=False)
    report = gallery.report
    print(f"gallery    {gallery.db_path}")
    print(f"model      {gallery.model_id}")
    print(f"elders     {report.elders}    templates {report.templates}")
    print(f"learned    {report.learned} from staff confirmations")
    print(f"unusable   {report.undecryptable} fail to decrypt, {report.other_model} other model")
    if gallery.damaged and not report.key_mismatch:
        print(f"damaged    rows of {', '.join(gallery.damaged)}: {DAMAGED_ADVICE}")
    if report.key_mismatch:
        print("KEY MISMATCH: the key file is not the one this gallery was written with")
    print(f"confusable {len(gallery.confusables())} pairs")
    listed = gallery.erasures() or []
    # an elder erased, enrolled again and erased again is listed twice, and taken in once
    waiting = {elder for _, elder in listed if elder is not None}
    sealed_elsewhere = sum(elder is None for _, elder in listed)
    if waiting:
        print(
            f"erased     {len(waiting)} elder(s) the counter has still to take in (at its next "
            "gallery reload, or its next start): their decisions since the erasure go then"
        )
    if sealed_elsewhere:
        print(
            f"erased     {sealed_elsewhere} sealed with another key: no counter with this key "
            "takes them in; they go with the first erasure after 30 days"
        )
    problem = beyond_calibration(report.elders, cfg.vision.decision.calibrated_for_elders)
    if problem is not None:
        print(f"WARNING: {problem}")
    return EXIT_FAIL if report.key_mismatch or report.undecryptable else EXIT_OK


def cmd_gallery_remove(args: argparse.Namespace) -> int:
    from gateway.store.erasure import Journal
    from gateway.vision import cooldown
    from gateway.vision.elders import check_elder_id
    from gateway.vision.operations import erase_elder

    cfg = _config(args)
    data_dir = cfg.gateway.data_dir
    db = cfg.store.db_path(data_dir)
    elder = check_elder_id(args.elder)
    gallery_db = cfg.vision.gallery.db_path(data_dir)
    audit = cfg.vision.audit.path(data_dir)
    if not any(p.exists() for p in (gallery_db, db, audit, data_dir / cooldown.FILE)):
        # "0 erased" would read as done to someone who left out the site's -c
        print(
            f"error: no face gallery ({gallery_db}), journal ({db}) or audit frames ({audit}), "
            f"so nothing of {elder} to erase there: give the site's config (-c FILE), which "
            "says where its data directory is",
            file=sys.stderr,
        )
        return EXIT_FAIL
    erased = erase_elder(cfg.vision, data_dir, elder, Journal(db, cfg.store.key_path(db)))
    print(
        f"{args.elder}: {erased.templates} template(s) erased, "
        f"{erased.audit_frames} audit frame(s) and {erased.decisions} delivered decision(s) "
        f"deleted; {erased.decisions_at_delivery} decision(s) still to be sent, deleted once "
        f"delivered; {erased.decisions_rewritten} other elders' decision(s) kept without her"
    )
    return EXIT_OK if any(erased) else EXIT_FAIL


def cmd_gallery_unlearn(args: argparse.Namespace) -> int:
    from gateway.vision.elders import check_elder_id
    from gateway.vision.enroll import unlearn

    cfg = _config(args)
    gallery = _open_gallery(cfg, create=False)
    elder = check_elder_id(args.elder)
    if elder not in gallery.snapshot.elders:
        print(f"{elder}: not enrolled in {gallery.db_path}; nothing to remove", file=sys.stderr)
        return EXIT_FAIL
    removed = unlearn(gallery, elder, rules=cfg.vision.decision, decision=args.event)
    left = gallery.snapshot.count(args.elder)
    print(f"{args.elder}: {removed} learned template(s) removed, {left} left")
    return EXIT_OK if removed else EXIT_FAIL


def cmd_gallery_confusable(args: argparse.Namespace) -> int:
    for pair in _open_gallery(_config(args), create=False).confusables():
        print(f"{pair.elder_a}\t{pair.elder_b}\t{pair.score:.3f}")
    return EXIT_OK


# ---- evaluation ------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from gateway.vision.report import run_eval

    report = run_eval(
        _config(args).vision,
        faces=args.faces,
        pairs=args.pairs,
        errata=args.errata,
        gallery_size=args.n,
        target_fpir=args.fpir,
        templates=args.templates,
        jobs=args.jobs,
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return EXIT_OK


# ---- live identification and audit ----------------------------------------------------------


def cmd_identify(args: argparse.Namespace) -> int:
    from gateway.configfile import validate_model
    from gateway.vision.camera import open_source
    from gateway.vision.pipeline import DecisionEvent
    from gateway.vision.service import VisionService

    cfg = _config(args)
    camera = cfg.vision.camera.model_copy(
        update={"source": args.camera, **({"fps": args.fps} if args.fps else {})}
    )
    # its decisions are printed, not recorded: no frame is kept for them, whatever the audit
    # option says (that is for the counter's decisions, which the journal holds)
    audit = cfg.vision.audit.model_copy(update={"enabled": False})
    vision = cfg.vision.model_copy(update={"camera": camera, "audit": audit})
    # the config's checks across keys hold for --fps too: k frames in the window, ...
    rate = f"--fps {camera.fps:g}" if args.fps else f"the config's camera.fps = {camera.fps:g}"
    validate_model(vision.model_dump(), VisionSection, f"with {rate}")
    source = open_source(args.camera, camera)
    if source.paced:  # a photo folder or video file that does not open now never will
        source.open()
        source.close()

    gone = threading.Event()  # the reader of the decisions (`| head -n 5`) has what it wanted

    def show(decision: DecisionEvent) -> None:
        line = {"event_id": decision.event.event_id, **decision.event.data}
        try:
            print(json.dumps(line, ensure_ascii=False), flush=True)
        except BrokenPipeError as exc:  # on the face stage's thread: main's handler is not here
            if not reader_gone(exc):
                raise
            gone.set()

    with contextlib.ExitStack() as scratch:
        vision = _trial_gallery(vision, cfg.gateway.data_dir, scratch)
        service = VisionService(
            vision, cfg.gateway.data_dir, None, realtime=not args.lockstep, listeners=[show]
        )
        service.start()
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        try:
            while not gone.is_set() and not service.wait(0.2):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if stdout_closed():  # `| head` has its lines, and nobody is at the counter
                    gone.set()
        except KeyboardInterrupt:
            pass
        finally:
            service.stop()
    health = service.health()
    print(json.dumps({"health": health}, default=str), file=sys.stderr)
    if gone.is_set():
        discard()
        return EXIT_PIPE
    seen = health.get("camera") or {}
    if seen.get("frames"):
        return EXIT_OK
    if seen.get("state") == "ended":  # a video file that opens but holds no frame that decodes
        print(
            f"error: camera {args.camera} ended without one usable frame "
            f"({seen.get('bad_frames', 0)} unusable): an empty recording, or one that does "
            "not decode",
            file=sys.stderr,
        )
    else:  # an installer's check of a camera that is not there must not read as success
        print(
            f"error: camera {shown_source(args.camera)} gave no usable frame: "
            f"{seen.get('last_error') or 'none arrived'}",
            file=sys.stderr,
        )
    return EXIT_FAIL


def _trial_gallery(
    vision: VisionSection, data_dir: Path, scratch: contextlib.ExitStack[bool | None]
) -> VisionSection:
    """Where nobody is enrolled yet, an empty gallery in a temporary directory: a trial run
    writes nothing at the site. Created in the data directory by whoever tries the camera
    (often root), a key and gallery would keep the service's face stage from starting."""
    db_path = vision.gallery.db_path(data_dir)
    if db_path.exists():
        return vision
    print(f"no face gallery yet ({db_path}): every face is unknown", file=sys.stderr)
    folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="gateway-identify-")))
    empty = {"path": folder / "faces.db", "key_file": folder / "faces.key"}
    return vision.model_copy(update={"gallery": vision.gallery.model_copy(update=empty)})


def cmd_audit_export(args: argparse.Namespace) -> int:
    from gateway.private import open_private
    from gateway.store.db import saved_running_ms
    from gateway.vision.audit import AuditFrames

    cfg = _config(args)
    audit = cfg.vision.audit
    data_dir = cfg.gateway.data_dir
    # the retention is also counted in the store's running time, which a wall clock set back
    # (a Pi without RTC) does not hold back
    running = saved_running_ms(cfg.store.db_path(data_dir))
    frames = AuditFrames(
        audit.path(data_dir),
        cfg.vision.gallery.key_path(data_dir),
        audit.retention_days,
        None if running is None else lambda: running,
    )
    jpeg = frames.export(args.event_id)
    # an elder's face: the user's alone, and never written through a link planted in its place
    fd = open_private(args.out, os.O_WRONLY | os.O_TRUNC)
    try:
        st = os.fstat(fd)
        regular = stat.S_ISREG(st.st_mode)  # not /dev/null, which every user needs as it is
        if regular:
            os.fchmod(fd, 0o600)  # a file there already keeps its mode otherwise
        try:
            rest = memoryview(jpeg)
            while rest:
                rest = rest[os.write(fd, rest) :]
        except OSError as exc:
            if regular:  # a full disk: not half a face left where the export was asked for
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    if os.lstat(args.out).st_ino == st.st_ino:
                        args.out.unlink()
            print(
                f"error: cannot write {args.out}: {exc.strerror}; nothing kept of it",
                file=sys.stderr,
            )
            return EXIT_FAIL
    finally:
        os.close(fd)
    print(f"{args.out}: decision frame of {args.event_id}")
    return EXIT_OK


# ---- registration ----------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", type=Path, help="gateway TOML config")

    p = sub.add_parser("models", help="check or install the face models")
    models = p.add_subparsers(dest="models_cmd", required=True)
    s = models.add_parser("verify", help="check model files against models/manifest.toml")
    config(s)
    s.add_argument("--models-dir", type=Path)
    s.set_defaults(func=_guard(cmd_models_verify))
    s = models.add_parser("fetch", help="install model files from a folder or base URL")
    config(s)
    s.add_argument("--from", dest="source", required=True, metavar="DIR|URL")
    s.add_argument("--models-dir", type=Path)
    s.set_defaults(func=_guard(cmd_models_fetch))

    p = sub.add_parser("enroll", help="enrol an elder's face from photos")
    config(p)
    p.add_argument("--elder", help="the elder's id (from the platform)")
    p.add_argument("photos", nargs="*", type=Path)
    p.add_argument("--folder", type=Path, help="bulk: one sub-folder of photos per elder id")
    p.add_argument(
        "--allow-similar", action="store_true", help="staff confirm a look-alike (twins)"
    )
    p.add_argument("--verbose", "-v", action="store_true", help="every photo's verdict")
    p.set_defaults(func=_guard(cmd_enroll))

    p = sub.add_parser("gallery", help="inspect or erase enrolled faces")
    gallery = p.add_subparsers(dest="gallery_cmd", required=True)
    s = gallery.add_parser("stats", help="elders, templates, unreadable rows")
    config(s)
    s.set_defaults(func=_guard(cmd_gallery_stats))
    s = gallery.add_parser(
        "remove", help="erase an elder's templates, audit frames and decisions in the journal"
    )
    config(s)
    s.add_argument("--elder", required=True)
    s.set_defaults(func=_guard(cmd_gallery_remove))
    s = gallery.add_parser(
        "unlearn", help="remove faces learned from staff confirmations (enrolled photos stay)"
    )
    config(s)
    s.add_argument("--elder", required=True)
    s.add_argument("--event", help="only the face learned from this face.decision event id")
    s.set_defaults(func=_guard(cmd_gallery_unlearn))
    s = gallery.add_parser("confusable", help="the register of look-alike elder pairs")
    config(s)
    s.set_defaults(func=_guard(cmd_gallery_confusable))

    p = sub.add_parser("eval", help="accuracy and thresholds on a labelled folder of faces")
    config(p)
    p.add_argument("--faces", type=Path, required=True, help="one sub-folder per person")
    p.add_argument("--pairs", type=Path, help="LFW pairs.txt or a file_x,file_y,Decision CSV")
    p.add_argument("--errata", type=Path, help="label corrections (same A B / exclude PHOTO)")
    p.add_argument("--n", type=at_least_one, default=1000, help="the site's number of elders")
    p.add_argument("--fpir", type=rate, default=1e-3, help="target false positive rate")
    p.add_argument("--templates", type=at_least_one, default=1, help="photos enrolled per person")
    p.add_argument("--jobs", type=at_least_one, default=2, help="worker processes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_eval))

    p = sub.add_parser("identify", help="print the counter's decisions live, as JSON lines")
    config(p)
    p.add_argument("--camera", required=True, help="/dev/videoN, N, rtsp://..., file or folder")
    p.add_argument("--fps", type=positive, help="frame rate (replays)")
    p.add_argument(
        "--lockstep", action="store_true", help="replays: analyse every frame, as fast as possible"
    )
    p.add_argument("--seconds", type=positive, help="stop after this long")
    p.set_defaults(func=_guard(cmd_identify))

    p = sub.add_parser("audit", help="decision frames kept by the audit option")
    audit = p.add_subparsers(dest="audit_cmd", required=True)
    s = audit.add_parser("export", help="write one decision's frame as a JPEG")
    config(s)
    s.add_argument("event_id")
    s.add_argument("out", type=Path)
    s.set_defaults(func=_guard(cmd_audit_export))
