"""A minimal MQTT 3.1.1 broker that takes the connection and every message but refuses every
subscription (SUBACK 0x80), as brokers with subscribe ACLs do; mosquitto's acl_file grants the
subscription and only withholds the messages."""

from __future__ import annotations

import contextlib
import socket
import threading


def _read_packet(conn: socket.socket) -> tuple[int, bytes]:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    header = exact(1)[0]
    length, shift = 0, 0
    while True:
        byte = exact(1)[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return header, exact(length)


class SubscriptionRefuser:
    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._serve, name="subrefuser", daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._server.accept()
                threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    @staticmethod
    def _talk(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ConnectionError):
            while True:
                header, body = _read_packet(conn)
                kind = header & 0xF0
                if kind == 0x10:  # CONNECT
                    conn.sendall(b"\x20\x02\x00\x00")
                elif kind == 0x80:  # SUBSCRIBE: packet id, then (length, filter, QoS) each
                    filters, at = 0, 2
                    while at < len(body):
                        at += 2 + int.from_bytes(body[at : at + 2], "big") + 1
                        filters += 1
                    conn.sendall(bytes([0x90, 2 + filters]) + body[:2] + b"\x80" * filters)
                elif kind == 0x30 and header & 0x06:  # PUBLISH, QoS 1
                    at = 2 + int.from_bytes(body[:2], "big")
                    conn.sendall(b"\x40\x02" + body[at : at + 2])
                elif kind == 0xC0:  # PINGREQ
                    conn.sendall(b"\xd0\x00")
                elif kind == 0xE0:  # DISCONNECT
                    return

    def close(self) -> None:
        self._server.close()
