"""A network camera for tests: a real HTTP server streaming MJPEG (multipart/x-mixed-replace),
as many IP cameras do, behind HTTP basic authentication. It can stop sending without closing
the connection (a hung camera) and be shut down and started again on the same port."""

from __future__ import annotations

import base64
import http.server
import socketserver
import threading
import time
from typing import Any

BOUNDARY = b"frame"


class CameraServer:
    """What every test camera has: its pictures, a password, a switch to stop sending and one
    to freeze. ``pictures`` are sent in turn, as a real sensor's noise makes every frame differ;
    while ``frozen`` is set, the first is sent over and over (a stream stuck on one picture)."""

    def __init__(self, pictures: list[bytes], user: str, password: str, fps: float = 15.0) -> None:
        self.pictures = pictures
        self.fps = fps
        self.sending = threading.Event()
        self.sending.set()
        self.frozen = threading.Event()
        # set: the next picture is sent half, and nothing more (a camera hanging mid-frame)
        self.cut = threading.Event()
        self.refused = 0
        self.port = 0
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._closed = threading.Event()

    def picture(self, n: int) -> bytes:
        return self.pictures[0 if self.frozen.is_set() else n % len(self.pictures)]


class NetworkCamera(CameraServer):
    def __init__(self, pictures: list[bytes], user: str, password: str, fps: float = 15.0) -> None:
        super().__init__(pictures, user, password, fps)
        self._server: socketserver.ThreadingTCPServer | None = None

    def url(self, credentials: str) -> str:
        return f"http://{credentials}@127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> None:
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.headers.get("Authorization") != camera._auth:
                    camera.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header(
                    "Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}"
                )
                self.end_headers()
                camera._stream(self.wfile)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._closed.clear()
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Gone from the network: the listener and every open stream are closed."""
        self._closed.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _stream(self, out: Any) -> None:
        n = 0
        try:
            while not self._closed.is_set():
                if self.sending.is_set():
                    jpeg = self.picture(n)
                    n += 1
                    head = b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                    part = head % (BOUNDARY, len(jpeg)) + jpeg + b"\r\n"
                    if self.cut.is_set():
                        out.write(part[: len(part) - len(jpeg) // 2])
                        out.flush()
                        self._closed.wait()
                        return
                    out.write(part)
                    out.flush()
                time.sleep(1 / self.fps)
        except (BrokenPipeError, ConnectionResetError):
            pass
