"""Field commands: ``gateway decode`` and ``gateway simulate basestation | espa | dc09``.

Light on purpose: the handlers import the devices stage only when they run.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.argtypes import at_least_one, not_negative, positive, tcp_port, zero_or_more
from gateway.stdout import reader_gone

if TYPE_CHECKING:
    from gateway.devices.link import SerialPort, SerialSettings
    from gateway.devices.simulate import VirtualPort

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
_STOPS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _guard(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A port that is not there, a file that is missing, a key that is not hex: one line
    for the installer, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
            if reader_gone(exc):  # `| head` has what it wanted: not an error
                raise
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL

    return run


class _Stopped(KeyboardInterrupt):
    """A kill or a hang-up, unwound as Ctrl-C is so the port closes and its link goes."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def _simulator(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """A kill, or the closing of its terminal, ends a simulator as Ctrl-C does: its virtual
    port's link is removed, not left pointing at a pty that someone's terminal may be given
    next. The exit status still names the signal (128 + its number), as a shell reports a
    killed process."""
    guarded = _guard(handler)

    def run(args: argparse.Namespace) -> int:
        before = {
            signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)
        }
        try:
            return guarded(args)
        except _Stopped as stop:
            return 128 + stop.signum
        finally:
            for signum, action in before.items():
                signal.signal(signum, action)

    return run


@contextmanager
def _simulated_line(
    args: argparse.Namespace, settings: SerialSettings, timeout: float, what: str
) -> Iterator[VirtualPort | SerialPort]:
    """The simulator's end of the line, closed however the simulator ends. Stop signals wait
    while the port opens: a kill in that instant would skip the close and leave the link."""
    from gateway.devices.link import open_port
    from gateway.devices.simulate import VirtualPort

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    port: VirtualPort | SerialPort
    try:
        if args.pty:
            port = VirtualPort(args.pty, read_timeout_s=timeout)
        else:
            port = open_port(args.port, settings, timeout=timeout)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if isinstance(port, VirtualPort):
            print(f"{what} at {args.pty} -> {port.device}", file=sys.stderr)
        yield port
    finally:
        port.close()


def _definition(path: Path) -> object:
    from gateway.configfile import ConfigFileError
    from gateway.devices.definitions import load_definition

    try:
        return load_definition(path)
    except ConfigFileError as exc:
        print(f"device definition error:\n{exc}", file=sys.stderr)
        return None


def cmd_decode(args: argparse.Namespace) -> int:
    from gateway.devices.decode import decode_capture, spy_received
    from gateway.devices.definitions import DefinitionFile

    definition = _definition(args.device)
    if not isinstance(definition, DefinitionFile):
        return EXIT_CONFIG
    if args.hex is not None:
        try:
            data = bytes.fromhex(args.hex.replace(":", " "))
        except ValueError:
            print("--hex: not hex bytes", file=sys.stderr)
            return EXIT_CONFIG
    else:
        data = args.file.read_bytes()
        received = spy_received(data)
        if received is not None:
            print(f"{args.file}: a spy:// dump, {len(received)} bytes received", file=sys.stderr)
            data = received
    for item in decode_capture(definition, data):
        print(json.dumps(item, ensure_ascii=False))
    return EXIT_OK


def cmd_basestation(args: argparse.Namespace) -> int:
    from gateway.devices.definitions import DefinitionFile
    from gateway.devices.link import SerialSettings
    from gateway.devices.simulate import Paced, Traffic, VirtualPort, run_traffic

    definition = _definition(args.device)
    if not isinstance(definition, DefinitionFile):
        return EXIT_CONFIG
    settings = SerialSettings(args.baud or definition.serial.baudrate, definition.serial.format)
    traffic = Traffic(
        definition,
        bands=args.bands,
        repeats=args.repeats,
        alarms_per_hour=args.alarms_per_hour,
        seed=args.seed,
    )
    with _simulated_line(args, settings, 1.0, "virtual base station") as port:
        sent = run_traffic(
            Paced(port.write, settings.baudrate),
            traffic,
            interval_s=args.interval,
            duration_s=args.duration,
            burst_every_s=args.burst_every or None,
        )
    unread = port.dropped if isinstance(port, VirtualPort) else 0
    closed = f" ({unread} bytes lost: nobody was reading the port)" if unread else ""
    print(f"sent {sent} frames{closed}", file=sys.stderr)
    return EXIT_OK


def cmd_espa(args: argparse.Namespace) -> int:
    import time

    from gateway.devices.link import SerialSettings, SoftwareParity
    from gateway.devices.simulate import EspaMaster

    settings = SerialSettings(args.baud, args.format)
    parity = SoftwareParity(settings)
    failed = 0
    with _simulated_line(args, settings, 3.0, "virtual nurse-call control station") as port:

        class ParityIO:
            def write(self, data: bytes, /) -> int | None:
                return port.write(parity.encode(data))

            def read(self, size: int = 1, /) -> bytes:
                return parity.decode(port.read(size))

            def reset_input_buffer(self) -> None:
                port.reset_input_buffer()

        master = EspaMaster(ParityIO())
        for i in range(args.calls):
            # a control station keeps a call until the pager takes it: each try waits up to 3 s
            for attempt in range(1, args.tries + 1):
                ok = master.call(f"{100 + i % 50:04d}", f"ROOM {100 + i % 50}", call_type="3")
                if ok:
                    break
                again = ", trying again" if attempt < args.tries else ", given up"
                print(f"call {i + 1}: not acknowledged{again}", file=sys.stderr)
            failed += not ok
            if ok:
                print(f"call {i + 1}: ACK", file=sys.stderr)
            time.sleep(args.interval)
    return EXIT_OK if failed == 0 else EXIT_FAIL


def cmd_dc09(args: argparse.Namespace) -> int:
    import time

    from gateway.devices.simulate import Dc09Transmitter

    key = bytes.fromhex(args.key) if args.key else None
    panel = Dc09Transmitter(args.host, args.port, args.account, udp=args.udp, key=key)
    failed = 0
    try:
        for i in range(args.count):
            raw = (
                panel.message("NULL", "")
                if i % 5 == 4
                else panel.cid_message("1", "101", f"{i % 8:03d}")
            )
            # a panel keeps a message until the receiver answers: the same bytes, same seq
            for attempt in range(1, args.tries + 1):
                try:
                    reply = panel.exchange(raw)
                except (OSError, TimeoutError) as exc:
                    panel.close()
                    again = ", trying again" if attempt < args.tries else ", given up"
                    print(f"message {i + 1}: {exc}{again}", file=sys.stderr)
                    if attempt < args.tries:
                        time.sleep(min(2.0**attempt, 30.0))
                    continue
                print(reply.decode("latin-1").strip(), file=sys.stderr)
                break
            else:
                failed += 1
            time.sleep(args.interval)
    finally:
        panel.close()
    return EXIT_OK if failed == 0 else EXIT_FAIL


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("decode", help="decode a capture with a device definition (JSON lines)")
    p.add_argument("--device", type=Path, required=True, help="device definition (TOML)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hex", help="bytes as hex, spaces allowed")
    src.add_argument(
        "--file", type=Path, help="a capture: raw bytes, or the text a spy:// port writes"
    )
    p.set_defaults(func=_guard(cmd_decode))

    sim = sub.add_parser("simulate", help="simulated devices for demos, tests, benchmarks")
    kinds = sim.add_subparsers(dest="simulator", required=True)
    b = kinds.add_parser("basestation", help="wristband base station traffic on a serial URL")
    b.add_argument("--device", type=Path, required=True, help="binary or jsonlines definition")
    where = b.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial URL to write to, e.g. /dev/ttyUSB1 or socket://...")
    where.add_argument(
        "--pty", type=Path, help="make a virtual port: the gateway opens this path (a symlink)"
    )
    b.add_argument("--baud", type=at_least_one, help="default: the definition's")
    b.add_argument("--bands", type=at_least_one, default=300)
    b.add_argument("--interval", type=positive, default=1.0, help="seconds between heartbeats")
    b.add_argument("--duration", type=positive, default=60.0, help="seconds to run")
    b.add_argument("--burst-every", type=not_negative, default=10.0, help="0 = no bursts")
    b.add_argument("--repeats", type=zero_or_more, default=2, help="radio repeats of each alarm")
    b.add_argument("--alarms-per-hour", type=not_negative, default=2.0, help="per band")
    b.add_argument("--seed", type=int, default=1)
    b.set_defaults(func=_simulator(cmd_basestation))

    e = kinds.add_parser("espa", help="ESPA 4.4.4 control station sending calls")
    where = e.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial URL of the line to the gateway's port")
    where.add_argument(
        "--pty", type=Path, help="make a virtual port: the gateway opens this path (a symlink)"
    )
    e.add_argument("--baud", type=at_least_one, default=9600)
    e.add_argument("--format", default="7E1", choices=["7E1", "7E2", "8N1"])
    e.add_argument("--calls", type=at_least_one, default=10)
    e.add_argument("--interval", type=positive, default=2.0)
    e.add_argument("--tries", type=at_least_one, default=3, help="of each call, until an ACK")
    e.set_defaults(func=_simulator(cmd_espa))

    d = kinds.add_parser("dc09", help="SIA DC-09 alarm panel (ADM-CID events, NULL tests)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=tcp_port, required=True)
    d.add_argument("--account", default="1234")
    d.add_argument("--udp", action="store_true")
    d.add_argument("--key", help="AES key as hex (encrypts the messages)")
    d.add_argument("--count", type=at_least_one, default=10)
    d.add_argument("--interval", type=positive, default=1.0)
    d.add_argument("--tries", type=at_least_one, default=5, help="of each message, until a reply")
    d.set_defaults(func=_simulator(cmd_dc09))
