"""Command line: ``gateway run | validate-config | outbox stats`` and the commands of each stage.

Each stage package adds its own commands through a ``register(subparsers)`` function in a light
module, so ``gateway --help`` stays fast (heavy imports happen inside the handlers).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway import __version__
from gateway.config import ConfigFileError, load_config
from gateway.devices.cli import register as register_devices
from gateway.logs import size_text
from gateway.stdout import EXIT_PIPE, discard, reader_gone
from gateway.store import StoreError, read_stats
from gateway.vision.cli import register as register_vision

Handler = Callable[[argparse.Namespace], int]
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", type=Path, help="gateway TOML config (default: built-in defaults)"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import run

    try:
        loaded = load_config(args.config)
    except ConfigFileError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run(loaded)


def cmd_validate(args: argparse.Namespace) -> int:
    from gateway.app import named_files

    try:
        loaded = load_config(args.path)
    except ConfigFileError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    for issue in loaded.retired:
        print(f"warning: {issue}", file=sys.stderr)
    _password, issues = named_files(loaded)
    if issues:
        print(ConfigFileError(issues), file=sys.stderr)
        return EXIT_CONFIG
    print(f"{loaded.source}: ok (version {loaded.version})")
    return EXIT_OK


def cmd_config_reference(_args: argparse.Namespace) -> int:
    from gateway.configdoc import reference

    print(reference(), end="")
    return EXIT_OK


def cmd_outbox_stats(args: argparse.Namespace) -> int:
    try:
        db = load_config(args.config).config.db_path
        stats = read_stats(db)
    except ConfigFileError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(stats.as_dict(), indent=2))
        return EXIT_OK
    print(f"database  {stats.path}")
    print(f"session   {stats.session}    next seq {stats.next_seq}    delivered {stats.delivered}")
    header = ("lane", "pending", "bytes", "oldest age", "evicted", "expired", "refused")
    rows = [
        (
            s.lane.name,
            str(s.pending),
            size_text(s.pending_bytes),
            "-" if s.oldest_age_s is None else _human_age(s.oldest_age_s),
            str(s.evicted),
            str(s.expired),
            str(s.refused),
        )
        for s in stats.lanes
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return EXIT_OK


def _human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _register_backbone(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the gateway")
    _add_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate-config", help="check a config file; non-zero exit if invalid")
    p.add_argument("path", type=Path)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("config-reference", help="every config key with its default (Markdown)")
    p.set_defaults(func=cmd_config_reference)

    p = sub.add_parser("outbox", help="inspect the outbox")
    outbox = p.add_subparsers(dest="outbox_cmd", required=True)
    s = outbox.add_parser("stats", help="pending events per lane, evictions, ages")
    _add_config(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_outbox_stats)


REGISTRARS: tuple[Registrar, ...] = (_register_backbone, register_devices, register_vision)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="Eldercare edge gateway for canteens and care centres."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except KeyboardInterrupt:  # Ctrl-C at a field command: it stops, no traceback
        return EXIT_INTERRUPTED
    except BrokenPipeError as exc:
        if not reader_gone(exc):
            raise
        discard()
        return EXIT_PIPE
