"""SIA DC-09 receiver on TCP and UDP: alarm hubs and one-key-call panels over IP.

Every message is answered: ACK only after its events are committed, NAK (with our time) on a
CRC error, a timestamp outside the window, a store failure or a fault of ours in handling it
(counted as ``decode_error``), DUH for what we cannot use (an unknown ID, no key for an
encrypted account; an event code the definition does not map is recorded, as a device alarm).
The one exception is a UDP datagram that is not a DC-09 message at all: it is counted and not
answered, since its source address may be forged and our reply would go to a third party.
A retry (same account and sequence within the window) is ACKed again without a second event;
a message not ACKed is forgotten, so its retry is handled afresh. While the wall clock is not
synchronised (a Pi has no RTC) timestamps are not checked: NAKing alarms because our own clock
is wrong would be worse than accepting a stale one.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any

from gateway.devices.config import Dc09Receiver
from gateway.devices.decoders import dc09 as msgs
from gateway.devices.decoders.contact_id import decode_dc09
from gateway.devices.decoders.sia import decode_dcs
from gateway.devices.dedup import Dedup
from gateway.devices.definitions import Dc09Spec, DefinitionFile
from gateway.devices.framers.lines import LineFramer
from gateway.devices.model import (
    Decoded,
    DeviceEvent,
    Frame,
    Kind,
    Reject,
    Scalar,
    decode_error,
)
from gateway.devices.recorder import Recorder
from gateway.lifecycle import StartupError
from gateway.store import Store

log = logging.getLogger(__name__)
POLL_S = 0.2


class Dc09Handler:
    """Message in, reply out. Transport-free, so TCP, UDP and tests share it."""

    def __init__(
        self,
        cfg: Dc09Receiver,
        definition: DefinitionFile,
        recorder: Recorder,
        *,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock_synced: Callable[[], bool] = lambda: True,
    ) -> None:
        assert definition.dc09 is not None
        self.cfg = cfg
        self.spec: Dc09Spec = definition.dc09
        self.definition = definition
        self.recorder = recorder
        self.wall = wall
        self.clock_synced = clock_synced
        self.keys = {k.account.upper(): bytes.fromhex(k.key.get_secret_value()) for k in cfg.keys}
        self.dedup = Dedup(self.spec.dedup_window_s)
        self.replies: dict[str, int] = {"ACK": 0, "NAK": 0, "DUH": 0}
        self.length_mismatches = 0
        self.unanswered = 0  # datagrams that were not DC-09 messages at all
        # TCP connections and UDP share the dedup and counters; held for those only, not while
        # a message is stored, or each panel would wait for the commits of all the others
        self._lock = threading.Lock()
        self._storing: dict[Hashable, threading.Event] = {}  # messages whose commit is awaited

    def handle(self, content: bytes, *, datagram: bool = False) -> tuple[bytes, str]:
        """The reply to one message and its kind (ACK, NAK, DUH); never raises, so one message
        cannot end a receiver. A ``datagram`` that is not a DC-09 message at all (no CRC and
        length before a ``"ID"SEQ...#acct[`` body) gets no reply: ``b""``, kind ``""``. UDP
        has no handshake, so anyone can send one under a forged source address and have our
        reply sent there; a DC-09 transmitter only needs answers to DC-09 messages."""
        try:
            reply, kind = self._handle(content, datagram)
        except Exception as exc:  # a fault of ours: NAK, so the panel sends it again
            self.recorder.stats.reject(self.recorder.port, decode_error(content, exc))
            reply, kind = msgs.nak(self.wall()), "NAK"
        with self._lock:
            if kind:
                self.replies[kind] += 1
            else:
                self.unanswered += 1
        return reply, kind

    def _refuse(self, reason: str, content: bytes, detail: str = "") -> None:
        self.recorder.stats.reject(self.recorder.port, Reject(reason, content, detail))

    def _handle(self, content: bytes, datagram: bool) -> tuple[bytes, str]:
        now = self.wall()
        stats = self.recorder.stats
        try:
            msg = msgs.parse(content.decode("latin-1"), self.keys)
        except msgs.Dc09Error as exc:
            self._refuse(exc.reason, content, str(exc))
            if datagram and not exc.dc09:
                return b"", ""
            if exc.reason == "bad_crc":
                return msgs.nak(now), "NAK"
            return msgs.duh(None), "DUH"
        with self._lock:
            stats.frames += 1
            if not msg.length_ok:
                self.length_mismatches += 1
        if not msg.length_ok:
            log.info("dc09 %s: length field mismatch (CRC ok)", self.recorder.port)
        if msg.id not in self.spec.accept_ids:
            self._refuse("unknown_id", content, msg.id)
            return msgs.duh(msg), "DUH"
        if not msg.encrypted and msg.account.upper() in self.keys:
            # anyone on the network could otherwise raise or cancel this panel's alarms, or
            # take the sequence number of its next real alarm so that it is dropped as a repeat
            self._refuse("not_encrypted", content, f"account {msg.account} has a key")
            return msgs.duh(msg), "DUH"
        if msg.encrypted and msg.timestamp is None:
            self._refuse("bad_timestamp", content, "encrypted without timestamp")
            return msgs.nak(now), "NAK"
        # A retry is the same message again: its sequence number and what it says, stamped
        # when first sent. A panel that restarts counts from 0001 again: its new messages
        # reuse numbers of the last minutes, but not their content and time.
        key = (
            msg.account.upper(),
            msg.receiver,
            msg.line,
            msg.seq,
            msg.id,
            msg.encrypted,
            msg.data,
            msg.extended,
            msg.timestamp,
        )
        reply = msgs.ack(msg, self.keys.get(msg.account.upper()), now)
        # A repeat is ACKed before its time is checked: it still bears the time it was first
        # sent, which a third try, or the first one after our clock has synchronised, may be
        # outside the window by. Its events are stored; a NAK would have the panel send it
        # afresh, restamped, and it would be recorded twice. (A replay within the window so
        # gets an ACK and nothing more.)
        while True:
            with self._lock:
                storing = self._storing.get(key)
                if storing is None:
                    if self.dedup.is_repeat(key):
                        stats.duplicates += 1
                        return reply, "ACK"
                    storing = self._storing[key] = threading.Event()
                    break
            # a retry (over another connection, or by UDP) of a message still being stored:
            # ACKed once that is, handled afresh if it was not, never ACKed before
            storing.wait()
        answer = msgs.nak(now), "NAK"
        try:
            answer = self._checked(msg, content, reply, now)
        finally:
            with self._lock:
                if answer[1] != "ACK":  # not stored: the panel's retry is not a repeat
                    self.dedup.forget(key)
                del self._storing[key]
            storing.set()
        return answer

    def _checked(
        self, msg: msgs.Dc09Message, content: bytes, ack: bytes, now: datetime
    ) -> tuple[bytes, str]:
        """A message not seen before: NAKed (with our time) if its timestamp is outside the
        window while our clock is synchronised, else handled as fresh."""
        if msg.timestamp is not None and self.clock_synced():
            skew = (msg.timestamp - now).total_seconds()
            if not -self.spec.max_past_s <= skew <= self.spec.max_future_s:
                self._refuse("bad_timestamp", content, f"{skew:+.0f} s")
                return msgs.nak(now), "NAK"
        return self._fresh(msg, content, ack, now)

    def _fresh(
        self, msg: msgs.Dc09Message, content: bytes, ack: bytes, now: datetime
    ) -> tuple[bytes, str]:
        """A message not seen before: its events stored (ACK), refused (DUH) or not (NAK)."""
        decoded = self._decode(msg, content)
        borrowed = self._borrowed_account(msg, decoded)
        if borrowed is not None:
            self._refuse("not_encrypted", content, f"account {borrowed} has a key")
            return msgs.duh(msg), "DUH"
        for reject in decoded.rejects:
            self.recorder.stats.reject(self.recorder.port, reject)
        if decoded.rejects and not decoded.events:
            return msgs.duh(msg), "DUH"
        if not decoded.events:  # only codes the definition maps to "ignore": ACKed, counted
            with self._lock:
                self.recorder.stats.ignored += 1
        events = [self.recorder.event(ev) for ev in decoded.events]
        if not self.recorder.record(events):
            return msgs.nak(now), "NAK"
        return ack, "ACK"

    def _borrowed_account(self, msg: msgs.Dc09Message, decoded: Decoded) -> str | None:
        """A keyed account named in the data (``[#acct|...]``, which the events take their
        account from) of a message not encrypted under that very account: anyone could
        otherwise raise or cancel its alarms by putting it inside a plaintext message."""
        header = msg.account.upper()
        for event in decoded.events:
            account = str(event.ids.get("account", header)).upper()
            if account in self.keys and (account != header or not msg.encrypted):
                return account
        return None

    def _decode(self, msg: msgs.Dc09Message, raw: bytes) -> Decoded:
        ids: dict[str, Scalar] = {"dc09_id": msg.id, "encrypted": msg.encrypted}
        if msg.receiver is not None:
            ids["receiver"] = msg.receiver
        if msg.line is not None:
            ids["line"] = msg.line
        if msg.timestamp is not None:
            ids["timestamp"] = msg.timestamp.strftime(msgs.TS_FORMAT)
        if msg.id == "ADM-CID":
            return decode_dc09(msg.data, self.definition.codes, raw, msg.seq, ids)
        if msg.id == "SIA-DCS":
            return decode_dcs(msg.data, self.definition.sia_codes, raw, msg.seq, ids)
        test = DeviceEvent(
            Kind.STATUS,
            msg.account,
            code="NULL",
            seq=msg.seq,
            name="link_test",
            ids={**ids, "account": msg.account},
            raw=raw,
        )
        return Decoded(events=(test,))


class Dc09Service:
    # A port another program holds, or an address not (yet) this machine's, must not stop the
    # serial ports' alarms: the receiver is reported "not started" and tried again.
    essential = False
    retry_max_s = 60.0  # not the face stage's 15 min: the panels' alarms wait for it

    def __init__(
        self,
        cfg: Dc09Receiver,
        definition: DefinitionFile,
        store: Store,
        record_timeout_s: float,
        clock_synced: Callable[[], bool] = lambda: True,
    ) -> None:
        self.name = f"dc09:{cfg.name}"
        self.cfg = cfg
        self.recorder = Recorder.for_source(store, cfg, definition.name, record_timeout_s)
        self.handler = Dc09Handler(cfg, definition, self.recorder, clock_synced=clock_synced)
        self.port = cfg.port
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tcp: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(cfg.max_connections)
        self.connections = 0
        self.refused_connections = 0

    def start(self) -> None:
        """Both listeners or neither: a UDP port taken by another program must not leave the
        TCP accept thread running (it would keep a failed gateway from exiting). A port that
        cannot be had (another program's, an address this machine does not have) is a
        StartupError naming the receiver, not an unexpected fault with a traceback."""
        self._stop.clear()
        try:
            self._listen()
        except OSError as exc:
            self.stop()
            raise StartupError(
                f"dc09 {self.cfg.name}: cannot listen on {self.cfg.host}:{self.port}: "
                f"{exc.strerror or exc}"
            ) from exc
        except BaseException:
            self.stop()
            raise
        log.info("dc09 %s: listening on %s:%d", self.cfg.name, self.cfg.host, self.port)

    def _listen(self) -> None:
        if self.cfg.tcp:
            self._tcp = socket.create_server((self.cfg.host, self.port), reuse_port=False)
            self._tcp.settimeout(POLL_S)
            self.port = self._tcp.getsockname()[1]
            self._spawn(self._accept, "accept")
        if self.cfg.udp:
            self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._udp.bind((self.cfg.host, self.port))
            self._udp.settimeout(POLL_S)
            self.port = self._udp.getsockname()[1]
            self._spawn(self._datagrams, "udp")

    def stop(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join()
        self._threads.clear()
        for sock in (self._tcp, self._udp):
            if sock is not None:
                sock.close()
        self._tcp = self._udp = None

    def healthy(self) -> bool:
        return all(t.is_alive() for t in self._threads if t.name.endswith(("accept", "udp")))

    def health(self) -> dict[str, Any]:
        return {
            "listen": f"{self.cfg.host}:{self.port}",
            "connections": self.connections,
            "refused_connections": self.refused_connections,
            "replies": dict(self.handler.replies),
            "length_mismatches": self.handler.length_mismatches,
            "unanswered": self.handler.unanswered,
            **self.recorder.stats.as_dict(),
        }

    def _spawn(self, target: Callable[..., None], what: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"dc09-{self.cfg.name}-{what}")
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._tcp is not None
        while not self._stop.is_set():
            try:
                conn, _peer = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.error("dc09 %s: accept failed: %s", self.cfg.name, exc)
                self._stop.wait(1.0)
                continue
            if not self._slots.acquire(blocking=False):
                self.refused_connections += 1
                conn.close()
                continue
            self.connections += 1
            self._spawn(self._connection, "conn", conn)

    def _connection(self, conn: socket.socket) -> None:
        """Idle means no *acknowledged message*: a client trickling a byte or a line of junk
        now and then (slowloris) would otherwise hold one of the receiver's slots for ever, and
        with all of them, the panels out. A panel refused for a while (a wrong key, a full
        disk) is let go too, and simply connects again."""
        framer = LineFramer(max_line=2048)
        conn.settimeout(POLL_S)
        last_rx = last_message = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    data = None
                now = time.monotonic()
                if data == b"":
                    return
                if data is not None:
                    last_rx = now
                    if self._items(framer.feed(data), conn):
                        last_message = now
                elif (
                    framer.pending
                    and now - last_rx >= self.cfg.frame_timeout_s
                    and self._items(framer.flush(), conn)
                ):
                    last_message = now
                if now - last_message >= self.cfg.idle_timeout_s:  # also under a steady stream
                    return
        except OSError as exc:
            log.info("dc09 %s: connection ended: %s", self.cfg.name, exc)
        finally:
            conn.close()
            self._slots.release()

    def _items(self, items: list[Frame | Reject], conn: socket.socket) -> bool:
        """Reply to each message; whether any was acknowledged."""
        acked = False
        for item in items:
            if isinstance(item, Reject):
                self.recorder.stats.reject(self.cfg.name, item)
            else:
                reply, kind = self.handler.handle(item.data)
                conn.sendall(reply)
                acked = acked or kind == "ACK"
        return acked

    def _datagrams(self) -> None:
        assert self._udp is not None
        while not self._stop.is_set():
            try:
                data, peer = self._udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError as exc:
                log.warning("dc09 %s: udp receive failed: %s", self.cfg.name, exc)
                continue
            reply, _kind = self.handler.handle(data.strip(b"\r\n"), datagram=True)
            if not reply:
                continue
            try:
                self._udp.sendto(reply, peer)
            except OSError as exc:
                log.warning("dc09 %s: udp reply failed: %s", self.cfg.name, exc)
