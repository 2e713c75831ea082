"""Serial links: the only module that imports pyserial.

A link is a URL (``serial_for_url``: device paths, by-id symlinks, ``loop://``,
``socket://``, ``spy://``) read by one thread that reopens the port with backoff whenever it
fails. An unplugged USB adapter is a state of the link, never a reason for the process to end.

A device path of the kernel's (``/dev/ttyUSB0``) names whichever adapter was plugged in
first, not the station's: an adapter pulled and plugged back can come back as ``ttyUSB1``
(``ttyUSB0`` still held by our closing port, or taken by another adapter plugged in meanwhile),
and another station's adapter can be ``ttyUSB0`` then. So the link remembers the udev names
(``/dev/serial/by-id/...``: vendor, model, serial number) of the adapter it opened and reopens
that adapter wherever it is now. While it is absent the link opens what is at the configured
path, a replacement adapter the installer plugged in, unless another port of the gateway has
claimed that adapter (``AdapterClaims``): that would be reading another station as this one.
Until udev has named what is there (a moment after the kernel), it may be such an adapter.

7-bit formats (ESPA's 7E1/7E2) are opened as 8 data bits without parity and checked here in
software: Linux never reports parity errors to pyserial (it clears INPCK), and a pty has no
parity at all, so this is the only way a wrong parity bit becomes visible. A byte with bad
parity is handed on as 0xFF, which no 7-bit byte can be.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import select
import socket
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import parse_qs

import serial
from serial.urlhandler.protocol_spy import Serial as SpySerial

from gateway.lifecycle import Opener, Worker
from gateway.private import narrow_private, open_private

log = logging.getLogger(__name__)

PARITY_ERROR = 0xFF
BY_ID_DIR = Path("/dev/serial/by-id")
_KERNEL_NAME = re.compile(r"tty(USB|ACM)\d+")  # numbered in the order adapters appear


class LinkSink(Protocol):
    def on_up(self, gap_s: float | None) -> None: ...

    def on_down(self, reason: str) -> None: ...

    def on_data(self, data: bytes, at: float) -> None: ...

    def on_idle(self, at: float) -> None: ...

    def idle_due(self, at: float) -> float: ...


def _parity_tables(odd: bool) -> tuple[bytes, bytes]:
    decode = bytearray(256)
    encode = bytearray(256)
    for b in range(256):
        data = b & 0x7F
        ones = bin(data).count("1") + (b >> 7)
        ok = ones % 2 == (1 if odd else 0)
        decode[b] = data if ok else PARITY_ERROR
        parity_bit = (bin(data).count("1") + (1 if odd else 0)) % 2
        encode[b] = data | (parity_bit << 7)
    return bytes(decode), bytes(encode)


@dataclass(frozen=True)
class SerialSettings:
    baudrate: int
    format: str  # e.g. "8N1", "7E1"

    @property
    def char_s(self) -> float:
        """Seconds one character takes on the line: start bit, data bits, parity, stop bits."""
        bits, parity, stop = self.format[0], self.format[1], self.format[2]
        return (1 + int(bits) + (parity != "N") + int(stop)) / self.baudrate

    @property
    def software_parity(self) -> bool:
        return self.format[0] == "7" and self.format[1] in "EO"

    def pyserial_kwargs(self) -> dict[str, Any]:
        bits, parity, stop = self.format[0], self.format[1], self.format[2]
        if self.software_parity:
            bits, parity = "8", "N"
        return {
            "baudrate": self.baudrate,
            "bytesize": int(bits),
            "parity": parity,
            "stopbits": int(stop),
        }


SerialPort = serial.Serial
WRITE_TIMEOUT_S = 1.0
IDLE_WAKE_S = 1.0  # a quiet line wakes the reader at least this often (its sink's ``idle_due``)
SOCKET_READ_MAX = 4096  # bytes a socket:// port's reader takes in one read


def open_port(
    url: str,
    settings: SerialSettings,
    timeout: float | None,
    *,
    write_timeout: float | None = None,
    exclusive: bool = False,
    capture: TextIO | None = None,
) -> SerialPort:
    """Open a serial URL (also used by the simulators to write to a port). A ``spy://`` port
    writes its dump to ``capture`` when one is given, from before it opens."""
    port: serial.Serial = serial.serial_for_url(
        url,
        timeout=timeout,
        write_timeout=write_timeout,
        exclusive=exclusive or None,
        do_not_open=True,
        **settings.pyserial_kwargs(),
    )
    if capture is not None and isinstance(port, SpySerial) and port.formatter is not None:
        port.formatter.output = capture
    try:
        port.open()
    except termios.error as exc:
        # an adapter that drops out between pyserial's open and its tcsetattr or tcflush: a
        # failed open like any other (pyserial has closed the descriptor), not an error of
        # another kind that would end the caller's thread
        raise serial.SerialException(f"could not open port {url}: {exc}") from exc
    return port


def _poll(port: SerialPort, wake_r: int) -> select.poll | None:
    """A poll on the port's file descriptor and the reader's wake-up pipe; None for a port
    that has no descriptor (``loop://``, ``rfc2217://``)."""
    try:
        fd = port.fileno()
    except (AttributeError, NotImplementedError, serial.SerialException, OSError):
        return None
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    poll.register(wake_r, select.POLLIN)
    return poll


def split_capture(url: str) -> tuple[str, str | None]:
    """A ``spy://`` URL without its ``file=`` option, and that file. pyserial opens the file
    with mode 'w' each time the port opens (and never closes it), so every reopen after an
    unplugged adapter would erase the traffic that led up to it; the link appends to the file
    itself instead, one session after another, and closes it with the port."""
    base, _, query = url.partition("?")
    files = parse_qs(query, keep_blank_values=True).get("file")
    if not url.startswith("spy://") or not files:
        return url, None
    kept = [part for part in query.split("&") if part.partition("=")[0] != "file"]
    return (f"{base}?{'&'.join(kept)}" if kept else base), files[0]


def _device_url(url: str) -> tuple[str, str, str]:
    """A URL's device path between what comes before and after it (``spy://``, its options):
    a ``spy://`` capture of an adapter reads that adapter like its plain path. An empty path
    for a URL of no device (a serial server, ``loop://``)."""
    prefix = "spy://" if url.startswith("spy://") else ""
    path, mark, options = url.removeprefix(prefix).partition("?")
    if not path.startswith("/"):
        return "", "", ""
    return prefix, path, mark + options


def _close_port(port: SerialPort | None) -> None:
    """A port opened after its link stopped: nobody reads it."""
    if port is not None:
        with contextlib.suppress(serial.SerialException, OSError, ValueError):
            port.close()


def watch_network_path(port: SerialPort, dead_after_s: int) -> None:
    """TCP keepalive on a ``socket://`` port. A base station only sends and the gateway only
    listens, so when the path to a serial server dies without a reset (the server rebooted,
    a cable cut beyond the switch) nothing else would ever notice: the port would stay "up"
    and every alarm from that station would be lost. Probes start after half of
    ``dead_after_s`` of silence; three unanswered ones (or a write unacknowledged that long)
    fail the read, and the link reopens. Set on a duplicate of the port's descriptor (the
    same socket), through pyserial's public ``fileno()``."""
    idle = max(1, dead_after_s // 2)
    interval = max(1, (dead_after_s - idle) // 3)
    with socket.socket(fileno=os.dup(port.fileno())) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, dead_after_s * 1000)


class AdapterClaims:
    """The adapters the ports of one gateway have opened, by their udev names in
    ``by_id_dir``: a port whose own adapter is absent must not take another port's adapter
    found at its old path. A port's claim lasts until it stops, so it holds while that port
    is down too. Shared by the ports' reader threads, hence the lock."""

    def __init__(self, by_id_dir: Path = BY_ID_DIR) -> None:
        self.by_id_dir = by_id_dir
        self._lock = threading.Lock()
        self._claims: dict[str, tuple[str, ...]] = {}

    def names(self, device: str) -> tuple[str, ...]:
        """The udev names that lead to ``device`` now (none for a pty, a serial server, or an
        adapter udev has not named yet)."""
        try:
            entries = sorted(self.by_id_dir.iterdir())
        except OSError:
            return ()
        here = os.path.realpath(device)
        return tuple(str(e) for e in entries if os.path.realpath(e) == here and e.exists())

    def claim(self, port: str, names: tuple[str, ...]) -> None:
        with self._lock:
            self._claims[port] = names

    def release(self, port: str) -> None:
        with self._lock:
            self._claims.pop(port, None)

    def holder(self, names: tuple[str, ...], port: str) -> str | None:
        """The other port that claimed one of ``names``, if any."""
        with self._lock:
            for other, claimed in self._claims.items():
                if other != port and set(claimed) & set(names):
                    return other
        return None


class SoftwareParity:
    def __init__(self, settings: SerialSettings) -> None:
        self.enabled = settings.software_parity
        self._decode, self._encode = _parity_tables(odd=settings.format[1] == "O")

    def decode(self, data: bytes) -> bytes:
        return data.translate(self._decode) if self.enabled else data

    def encode(self, data: bytes) -> bytes:
        return data.translate(self._encode) if self.enabled else data


@dataclass
class LinkStats:
    state: str = "starting"
    opens: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0
    parity_errors: int = 0
    last_error: str = ""
    device: str | None = None  # the device open, where another than the configured one
    down_since: float | None = None
    last_gap_s: float | None = None
    gaps: int = 0

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state,
            "opens": self.opens,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "errors": self.errors,
            "parity_errors": self.parity_errors,
            "last_error": self.last_error,
            "device": self.device,
            "down_for_s": None if self.down_since is None else round(now - self.down_since, 3),
            "last_gap_s": None if self.last_gap_s is None else round(self.last_gap_s, 3),
            "gaps": self.gaps,
        }


class SerialLink:
    def __init__(
        self,
        name: str,
        url: str,
        settings: SerialSettings,
        sink: LinkSink,
        *,
        reopen_min_s: float = 0.5,
        reopen_max_s: float = 5.0,
        read_timeout_s: float = 0.05,
        dead_path_s: int = 30,
        now: Callable[[], float] = time.monotonic,
        claims: AdapterClaims | None = None,
    ) -> None:
        """``claims``: the adapters of the gateway's ports (default: this link's alone)."""
        self.name = name
        self.url = url
        self.settings = settings
        self.sink = sink
        self.reopen_min_s = reopen_min_s
        self.reopen_max_s = reopen_max_s
        self.read_timeout_s = read_timeout_s
        self.dead_path_s = dead_path_s
        self._now = now
        self._parity = SoftwareParity(settings)
        self.stats = LinkStats()
        self._worker = Worker(f"link-{name}", self._run, wake=self._wake)
        self._wake_lock = threading.Lock()
        self._wake_w: int | None = None  # the reader's wake-up pipe, while it runs
        self._stop = self._worker.stopping
        self._port: serial.Serial | None = None
        self._url, self._capture_path = split_capture(url)
        self._capture: TextIO | None = None
        self._write_lock = threading.Lock()
        self._opener = Opener(self._stop)
        self._claims = claims or AdapterClaims()
        self._adapter: tuple[str, ...] = ()  # the udev names of the adapter last opened

    def start(self) -> None:
        self._worker.start()

    def begin_stop(self) -> None:
        """No new attempt to open the port, and one under way is let go: a serial server out
        of reach holds pyserial's connect for 5 s, nothing can wake it, and the stop of every
        port would wait for it."""
        self._stop.set()
        self._opener.abandon()

    def stop(self) -> None:
        self._worker.stop()

    def alive(self) -> bool:
        return self._worker.alive()

    def write(self, data: bytes) -> bool:
        """Send bytes (ESPA ACK/NAK, Contact ID ACK); False if the port is not open or the
        write fails. The drain (tcdrain) of a tty that hung up raises ``termios.error``, not an
        OSError: were it let through, an alarm already stored would be NAKed after its ACK."""
        with self._write_lock:
            port = self._port
            if port is None:
                return False
            try:
                port.write(self._parity.encode(data))
                port.flush()
            except (serial.SerialException, OSError, termios.error) as exc:
                self.stats.errors += 1
                self.stats.last_error = f"write: {exc}"
                return False
        self.stats.bytes_out += len(data)
        return True

    # ---- the reader thread ----------------------------------------------------------------

    def _wake(self) -> None:
        """A reader asleep on a quiet line hears the stop at once."""
        with self._wake_lock:
            if self._wake_w is not None:
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"\0")

    def _run(self, _stopping: threading.Event) -> None:
        wake_r, wake_w = os.pipe()
        with self._wake_lock:
            self._wake_w = wake_w
        try:
            self._serve(wake_r)
        finally:
            self._claims.release(self.name)  # however the reader ended
            with self._wake_lock:
                self._wake_w = None
            os.close(wake_r)
            os.close(wake_w)

    def _serve(self, wake_r: int) -> None:
        """Open and read the port until stopped. An error of a kind no pass expects (a bug, a
        driver's exception pyserial lets through) is a failed pass too, not the end of the
        reader: the port would be deaf until the gateway restarts. Its traceback is logged
        once, then a line at the 2nd, 4th, 8th... in a row."""
        delay = self.reopen_min_s
        in_a_row = 0
        while not self._stop.is_set():
            try:
                up_s = self._pass(wake_r)
                in_a_row = 0
            except Exception as exc:
                in_a_row += 1
                if in_a_row == 1:
                    log.exception("port %s: reader failed", self.name)
                elif in_a_row & (in_a_row - 1) == 0:
                    log.error(
                        "port %s: reader failed %d times in a row: %s", self.name, in_a_row, exc
                    )
                self._went_down(f"reader: {exc!r}")
                up_s = 0.0
            if up_s is None:
                break
            # a port that fails as soon as it opens (a serial server that accepts and hangs
            # up) backs off like one that cannot be opened; one that was up a while does not
            if up_s >= self.reopen_max_s:
                delay = self.reopen_min_s
            self._stop.wait(delay)
            delay = min(delay * 2, self.reopen_max_s)
        if self.stats.state != "down":
            self.stats.state = "stopped"

    def _pass(self, wake_r: int) -> float | None:
        """One open of the port and its reading: how long it was up (0 if it did not open),
        None once stopped. The port is closed however the pass ends: left open, the exclusive
        lock on it would refuse every reopen."""
        opened = self._open()
        if opened is None:
            return 0.0
        port, target = opened
        since = self._now()
        try:
            self._up(port, target)
            reason = self._read(port, wake_r)
        finally:
            with self._write_lock:
                self._port = None
            with contextlib.suppress(serial.SerialException, OSError, termios.error):
                port.close()
            self._close_capture()
        if not reason:
            return None
        self._went_down(reason)
        return self._now() - since

    def _open(self) -> tuple[serial.Serial, str] | None:
        """The port and what was opened; None if it could not be (or the link stopped)."""
        try:
            target = self._target()
            if self._capture_path is not None:
                # closed with the port (_close_capture), not at the end of a block; the bytes
                # may hold a nurse call's display text naming a resident: the gateway's alone
                capture = Path(self._capture_path)
                narrow_private(capture)
                fd = open_private(capture, os.O_WRONLY | os.O_APPEND)
                self._capture = os.fdopen(fd, "a", encoding="utf-8")
            port = self._connect(target)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._close_capture()
            if self.stats.state != "down":
                self._went_down(f"open: {exc}")
            self.stats.last_error = f"open: {exc}"
            return None
        if port is None:  # stopped while it opened
            self._close_capture()
            return None
        return port, target

    def _up(self, port: serial.Serial, target: str) -> None:
        self._opened(target)
        if self.url.startswith("socket://"):
            try:
                watch_network_path(port, self.dead_path_s)
            except OSError as exc:  # the port still works; only a dead path goes unnoticed
                log.warning("port %s: no keepalive on %s: %s", self.name, self.url, exc)
        now = self._now()
        gap = None if self.stats.down_since is None else now - self.stats.down_since
        if gap is not None:
            self.stats.last_gap_s = gap
            self.stats.gaps += 1
            log.warning("port %s: reopened %s after %.1f s", self.name, self.url, gap)
        else:
            log.info("port %s: opened %s", self.name, self.url)
        self.stats.state = "up"
        self.stats.opens += 1
        self.stats.down_since = None
        with self._write_lock:
            self._port = port
        self._notify(self.sink.on_up, gap)

    def _target(self) -> str:
        """What to open: the adapter last opened, by its udev name, wherever it is now; while
        it is absent, the configured URL, unless what is there is another port's adapter or
        one udev has not named yet, which may be another port's (refused, tried again with
        the backoff)."""
        prefix, path, options = _device_url(self._url)
        for name in self._adapter:
            if os.path.exists(name):
                return prefix + name + options
        there = self._claims.names(path) if path else ()
        if self._adapter and not there:
            raise serial.SerialException(
                f"{self._adapter[0]} is not plugged in, nor a named adapter at {path}"
            )
        holder = self._claims.holder(there, self.name)
        if holder is not None:
            mine = f"; {self._adapter[0]} is not plugged in" if self._adapter else ""
            raise serial.SerialException(
                f"{self._url} is port {holder}'s adapter ({there[0]}){mine}"
            )
        return self._url

    def _opened(self, target: str) -> None:
        """Claim the adapter opened, and for a kernel name remember it and say where it is when
        that is not the configured path. A udev link (by-id, by-path, a site's own rule) names
        one adapter already, and a serial server has none."""
        _, opened, _ = _device_url(target)
        if not opened:
            return
        names = self._claims.names(opened) or self._adapter
        self._claims.claim(self.name, names)
        _, path, _ = _device_url(self._url)
        if not _KERNEL_NAME.fullmatch(os.path.basename(path)):
            return
        self._adapter = names
        moved: str | None = os.path.realpath(opened)
        if moved == os.path.realpath(path):
            moved = None
        elif moved != self.stats.device:
            log.warning(
                "port %s: its adapter is %s now, not %s (configure %s: a replug then never "
                "changes the port's path)",
                self.name,
                moved,
                self._url,
                target,
            )
        self.stats.device = moved

    def _connect(self, target: str) -> serial.Serial | None:
        """The open, on a thread of its own that a stop can let go (then None)."""
        capture = self._capture
        _, port = self._opener.open(
            f"open-{self.name}",
            # exclusive: a second gateway (or a terminal program) on the same device would
            # split its bytes with this one; write_timeout: an ACK the other end never drains
            # must not wedge the reader (and with it the port and the gateway's stop)
            lambda: open_port(
                target,
                self.settings,
                self.read_timeout_s,
                write_timeout=WRITE_TIMEOUT_S,
                exclusive=True,
                capture=capture,
            ),
            _close_port,
        )
        return port

    def _close_capture(self) -> None:
        if self._capture is not None:
            with contextlib.suppress(OSError):
                self._capture.close()
            self._capture = None

    def _went_down(self, reason: str) -> None:
        first = self.stats.state != "down"
        self.stats.state = "down"
        self.stats.errors += 1
        self.stats.last_error = reason
        if first:
            self.stats.down_since = self._now()
            log.warning("port %s: %s; reopening with backoff", self.name, reason)
            self._notify(self.sink.on_down, reason)

    def _read(self, port: serial.Serial, wake_r: int) -> str:
        """Read until stopped (returns "") or the port fails (returns why).

        Once a read has found nothing, the line is slept on until its sink has something to
        do when idle (``idle_due``, at most ``IDLE_WAKE_S``), not woken every read timeout:
        bytes, or the stop, end the sleep at once. A busy line is read as it always was, and a
        port without a file descriptor (``loop://``) with the read timeout."""
        poll = _poll(port, wake_r)
        # pyserial's in_waiting on a socket is 1 when it is readable, never how much it holds:
        # read by it, a serial server's line came one byte a read, at ten times a tty's CPU. A
        # socket is polled before every read instead, then read at once for all it holds.
        socketed = poll is not None and self.url.startswith("socket://")
        if socketed:
            port.timeout = 0
        quiet = False
        while not self._stop.is_set():
            try:
                if poll is not None and (quiet or socketed):
                    if not poll.poll(math.ceil(self._idle_wait() * 1000)):
                        self._notify(self.sink.on_idle, self._now())
                        continue
                    if self._stop.is_set():
                        break
                data = port.read(SOCKET_READ_MAX if socketed else port.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                return f"read: {exc}"
            now = self._now()
            quiet = not data
            if data:
                self.stats.bytes_in += len(data)
                data = self._parity.decode(data)
                if self._parity.enabled:
                    self.stats.parity_errors += data.count(PARITY_ERROR)
                self._notify(self.sink.on_data, data, now)
            else:
                self._notify(self.sink.on_idle, now)
        return ""

    def _idle_wait(self) -> float:
        try:
            due = self.sink.idle_due(self._now())
        except Exception:  # as a handler's failure: counted, and the port keeps reading
            self.stats.errors += 1
            log.exception("port %s: handler failed", self.name)
            due = 0.0
        return min(IDLE_WAKE_S, max(self.read_timeout_s, due))

    def _notify(self, fn: Callable[..., None], *args: Any) -> None:
        # The boundary of the reader thread: a bug in one frame's handling is logged and
        # counted, and the port keeps reading.
        try:
            fn(*args)
        except Exception:
            self.stats.errors += 1
            log.exception("port %s: handler failed", self.name)
