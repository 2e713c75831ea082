"""An RTSP camera for tests: a real RTSP server (RFC 2326) streaming Motion JPEG over RTP
(RFC 2435), interleaved on the RTSP connection, behind basic authentication. Clients asking
for RTP over UDP get 461 and retry over TCP, as FFmpeg does. Like ``NetworkCamera`` it can
stop sending while keeping the connection open, and be shut down and started again."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from tests.support.netcam import CameraServer

JPEG_PT = 26
RTP_CLOCK = 90_000
MAX_PAYLOAD = 1400


def jpeg_parts(jpeg: bytes) -> tuple[int, int, int, bytes, bytes]:
    """(RFC 2435 type, width, height, quantisation tables, scan data) of a baseline JPEG with
    the standard Huffman tables (what OpenCV writes by default)."""
    tables = b""
    i = 2
    kind = width = height = -1
    while i < len(jpeg):
        marker = jpeg[i + 1]
        (length,) = struct.unpack(">H", jpeg[i + 2 : i + 4])
        body = jpeg[i + 4 : i + 2 + length]
        if marker == 0xDB:  # DQT: one or more 8-bit tables, each a Pq/Tq byte and 64 values
            for k in range(0, len(body), 65):
                tables += body[k + 1 : k + 65]
        elif marker == 0xC0:  # SOF0
            height, width = struct.unpack(">HH", body[1:5])
            sampling = body[7]
            kind = {0x21: 0, 0x22: 1}[sampling]  # 4:2:2 -> type 0, 4:2:0 -> type 1
        elif marker == 0xDA:  # SOS: the entropy-coded scan follows its header, up to EOI
            scan = jpeg[i + 2 + length : jpeg.rindex(b"\xff\xd9")]
            return kind, width, height, tables, scan
        i += 2 + length
    raise ValueError("no scan in JPEG")


def rtp_packets(jpeg: bytes, seq: int, timestamp: int) -> list[bytes]:
    kind, width, height, tables, scan = jpeg_parts(jpeg)
    packets = []
    offset = 0
    while offset < len(scan):
        chunk = scan[offset : offset + MAX_PAYLOAD]
        last = offset + len(chunk) >= len(scan)
        header = struct.pack(
            ">BBHII",
            0x80,
            JPEG_PT | (0x80 if last else 0),
            seq & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            0x5EED,
        )
        jpeg_header = struct.pack(">I", offset) + bytes([kind, 255, width // 8, height // 8])
        if offset == 0:  # Q >= 128: the tables travel in the first packet of each frame
            jpeg_header += struct.pack(">BBH", 0, 0, len(tables)) + tables
        packets.append(header + jpeg_header + chunk)
        offset += len(chunk)
        seq += 1
    return packets


class RtspCamera(CameraServer):
    def __init__(self, pictures: list[bytes], user: str, password: str, fps: float = 15.0) -> None:
        super().__init__(pictures, user, password, fps)
        self.plays = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def url(self, credentials: str) -> str:
        return f"rtsp://{credentials}@127.0.0.1:{self.port}/live"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._closed.clear()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        self._closed.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the blocked accept(); close() would not
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if self._closed.is_set():
                conn.close()
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """Until the client leaves: then its connection is closed and forgotten, so that a
        test counting descriptors across reopens sees only the gateway's own."""
        try:
            self._requests(conn)
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
            conn.close()

    def _requests(self, conn: socket.socket) -> None:
        lock = threading.Lock()
        buffer = b""
        try:
            while not self._closed.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while buffer:
                    if buffer[:1] == b"$":  # RTCP from the client, interleaved: skip it
                        if len(buffer) < 4:
                            break
                        size = 4 + struct.unpack(">H", buffer[2:4])[0]
                        if len(buffer) < size:
                            break
                        buffer = buffer[size:]
                        continue
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    request, buffer = buffer[:end].decode("latin-1"), buffer[end + 4 :]
                    self._answer(conn, lock, request)
        except OSError:
            return

    def _answer(self, conn: socket.socket, lock: threading.Lock, request: str) -> None:
        lines = request.split("\r\n")
        method, url, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        cseq = headers.get("cseq", "0")
        extra: dict[str, str] = {}
        body = b""
        status = "200 OK"
        if headers.get("authorization") != self._auth and method != "OPTIONS":
            self.refused += 1
            status = "401 Unauthorized"
            extra["WWW-Authenticate"] = 'Basic realm="camera"'
        elif method == "OPTIONS":
            extra["Public"] = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"
        elif method == "DESCRIBE":
            body = (
                "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=counter\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
                f"m=video 0 RTP/AVP {JPEG_PT}\r\na=control:track1\r\n"
            ).encode()
            extra["Content-Base"] = url.rstrip("/") + "/"
            extra["Content-Type"] = "application/sdp"
        elif method == "SETUP":
            if "TCP" not in headers.get("transport", ""):
                status = "461 Unsupported Transport"
            else:
                extra["Transport"] = "RTP/AVP/TCP;unicast;interleaved=0-1"
                extra["Session"] = "5EED"
        elif method == "PLAY":
            extra["Session"] = "5EED"
            self.plays += 1
            threading.Thread(target=self._stream, args=(conn, lock), daemon=True).start()
        elif method == "TEARDOWN":
            extra["Session"] = "5EED"
        head = f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        with lock:
            conn.sendall(head.encode() + body)

    def _stream(self, conn: socket.socket, lock: threading.Lock) -> None:
        seq, frame = 0, 0
        try:
            while not self._closed.is_set():
                if self.sending.is_set():
                    packets = rtp_packets(
                        self.picture(frame), seq, frame * RTP_CLOCK // round(self.fps)
                    )
                    seq += len(packets)
                    frame += 1
                    with lock:
                        for packet in packets:
                            conn.sendall(b"$\x00" + struct.pack(">H", len(packet)) + packet)
                time.sleep(1 / self.fps)
        except OSError:
            return
