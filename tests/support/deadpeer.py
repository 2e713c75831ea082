"""Network peers that are out of reach, made on this machine without privileges: a port that
never answers a connect, and one that accepts and then never says a word."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Unanswered:
    """A port that takes no connection and refuses none: its accept queue (of one) is held
    full, so the kernel drops every further SYN and a connect waits out its timeout, as with
    a host that is gone."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=0)
        self.port = int(self._server.getsockname()[1])
        self._filler = socket.create_connection(("127.0.0.1", self.port))

    def answer(self, timeout: float) -> socket.socket:
        """Free the queue and take the next connection: a connect still under way gets
        through at its next SYN (retried after 1, 3, 7... s)."""
        self._server.accept()[0].close()
        self._server.settimeout(timeout)
        return self._server.accept()[0]

    def close(self) -> None:
        self._filler.close()
        self._server.close()


class Silent:
    """A port that accepts every connection and never sends a byte (a TLS handshake or an
    RTSP request that is never answered); ``accepted`` is set at each accept."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.accepted = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="silent-peer", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                conn, _ = self._server.accept()
                self._held.append(conn)
                self.accepted.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._server.close()
        self._thread.join(5)
        for conn in self._held:
            conn.close()


def outage_config(
    data_dir: Path, broker: str, camera: int, station: int, connect_timeout_s: float | None
) -> str:
    """A site (the demo's, without its alarm panel) whose broker, RTSP counter camera and
    ``socket://`` base station are all out of reach. ``connect_timeout_s`` for the broker and
    the camera as an installer sets it for a slow mobile link, or the defaults (None)."""
    timeout = "" if connect_timeout_s is None else f"connect_timeout_s = {connect_timeout_s}"
    return f"""
[gateway]
id = "gw-demo"
site = "canteen-demo"
data_dir = "{data_dir}"
[clock]
sync_source = "never"
[mqtt]
brokers = ["{broker}"]
{timeout}
[devices]
definitions_dir = "{ROOT / "device_configs"}"
[[devices.ports]]
name = "wristbands"
station = "hall"
definition = "aa55-reference.toml"
url = "socket://127.0.0.1:{station}"
[vision.camera]
source = "rtsp://127.0.0.1:{camera}/counter"
{timeout}
"""
