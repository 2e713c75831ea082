"""A TCP relay between the gateway and the broker that fails the way networks do without
telling either end: a frozen path (bytes vanish, nothing is reset, like a mobile NAT that has
forgotten us) or a slow way back; or as a broker does that closes the connection over a message
it will not take, without a word (AWS IoT Core over an unauthorised topic)."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class _Path:
    """One accepted connection and its upstream twin."""

    client: socket.socket
    upstream: socket.socket
    frozen: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class Relay:
    def __init__(
        self, target_port: int, *, delay_back_s: float = 0.0, cut_on: bytes | None = None
    ) -> None:
        """``cut_on``: the gateway's bytes that close the connection at once, unforwarded."""
        self.target_port = target_port
        self.delay_back_s = delay_back_s
        self.cut_on = cut_on
        self.cuts = 0
        self.accepted = 0
        self._server = socket.create_server(("127.0.0.1", 0))  # no window for another to take
        self.port = int(self._server.getsockname()[1])
        self._paths: list[_Path] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="relay-accept", daemon=True)]
        self._threads[0].start()

    def freeze(self) -> None:
        """Every open connection goes silent both ways; new connections still pass."""
        with self._lock:
            for path in self._paths:
                path.frozen.set()

    def stall(self) -> None:
        """Every open connection stops taking bytes from the gateway (its send buffer fills
        up, as on a path whose far end is gone) and passes nothing on either way."""
        with self._lock:
            for path in self._paths:
                path.stalled.set()
                path.frozen.set()

    def reset(self) -> None:
        """Every open connection breaks, as a path does that a NAT or a mobile cell change
        drops; new connections still pass."""
        with self._lock:
            paths = list(self._paths)
        for path in paths:
            path.close()

    def close(self) -> None:
        """Everything ends here, threads included: one left running would still listen, and
        pytest would charge its failure to whichever test runs then."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # close() alone does not wake accept()
        self._server.close()
        with self._lock:
            for path in self._paths:
                path.close()
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                continue
            path = _Path(client, upstream)
            with self._lock:
                self._paths.append(path)
                self.accepted += 1
            self._pump(path, client, upstream, 0.0)
            self._pump(path, upstream, client, self.delay_back_s)

    def _pump(self, path: _Path, src: socket.socket, dst: socket.socket, delay: float) -> None:
        due: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            while True:
                if src is path.client and path.stalled.is_set():
                    self._closed.wait()
                    due.put((0.0, b""))  # the writer ends too
                    return
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    due.put((0.0, b""))
                    return
                if src is path.client and self.cut_on is not None and self.cut_on in data:
                    with self._lock:
                        self.cuts += 1
                    path.close()
                    due.put((0.0, b""))
                    return
                if not path.frozen.is_set():
                    due.put((time.monotonic() + delay, data))

        def write() -> None:
            while True:
                at, data = due.get()
                time.sleep(max(0.0, at - time.monotonic()))
                if not data and path.frozen.is_set():
                    return  # a frozen path passes on no end either
                if path.frozen.is_set():
                    continue
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        for target, name in ((read, "relay-read"), (write, "relay-write")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()
