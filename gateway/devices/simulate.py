"""Simulators for demos, tests and benchmarks: base stations, an ESPA master, a DC-09 panel.

They produce traffic from the same device definitions the gateway decodes with, so a new
vendor file can be exercised end to end before the hardware arrives.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from gateway.devices.decoders import dc09
from gateway.devices.decoders.contact_id import with_checksum
from gateway.devices.decoders.fields import write_field
from gateway.devices.definitions import BinarySpec, DefinitionFile, MessageSpec, as_code_map
from gateway.devices.framers.binary import encode_frame
from gateway.devices.framers.espa import ACK, ENQ, EOT, ETX, RS, SOH, STX, US, bcc
from gateway.devices.model import Kind

ALARM_KINDS = (Kind.SOS, Kind.FALL, Kind.BAND_REMOVED, Kind.BAND_WORN, Kind.BATTERY_LOW)


@dataclass(frozen=True)
class Sent:
    """One simulated transmission: what it meant and when its last byte was written."""

    kind: Kind
    band: str
    seq: int
    frame: bytes


class Traffic:
    """Many bands: a heartbeat each per interval, occasional alarms, periodic bursts.

    ``alarms_per_hour`` is per band; a burst makes every band send at once (a crowd passing
    a station), the worst case for latency.
    """

    def __init__(
        self,
        definition: DefinitionFile,
        *,
        bands: int = 300,
        repeats: int = 2,
        alarms_per_hour: float = 2.0,
        seed: int = 1,
    ) -> None:
        self.definition = definition
        self.rng = random.Random(seed)
        self.bands = [f"{0xB0000000 + i:012X}" for i in range(bands)]
        self.seq = dict.fromkeys(self.bands, 0)
        self.repeats = repeats
        self.alarm_p = alarms_per_hour / 3600
        self.station = f"{self.rng.getrandbits(48):012X}"
        self.alarm_kinds = alarm_kinds(definition)

    def tick(self, interval_s: float) -> Iterator[Sent]:
        """One interval's transmissions, in a shuffled order."""
        order = list(self.bands)
        self.rng.shuffle(order)
        if self.definition.jsonlines is not None:
            yield Sent(Kind.STATUS, "", 0, self._gateway_line())
        for band in order:
            kind = Kind.SEEN
            if self.alarm_kinds and self.rng.random() < self.alarm_p * interval_s:
                kind = self.rng.choice(self.alarm_kinds)
            yield from self.transmit(band, kind)

    def transmit(self, band: str, kind: Kind) -> Iterator[Sent]:
        self.seq[band] = (self.seq[band] + 1) % 256
        frame = self.encode(band, kind, self.seq[band])
        for _ in range(self.repeats if kind is not Kind.SEEN else 1):
            yield Sent(kind, band, self.seq[band], frame)

    def encode(self, band: str, kind: Kind, seq: int) -> bytes:
        if self.definition.binary is not None:
            return _binary_frame(self.definition.binary, band, kind, seq, self.rng)
        if self.definition.jsonlines is not None:
            return self._bthome_line(band, kind, seq)
        raise ValueError(f"{self.definition.name}: no base-station traffic for this protocol")

    def _gateway_line(self) -> bytes:
        return json.dumps({"type": "Gateway", "mac": self.station}).encode() + b"\n"

    def _bthome_line(self, band: str, kind: Kind, seq: int) -> bytes:
        service = bytes([0xD2, 0xFC, 0x40, 0x00, seq, 0x01, self.rng.randint(40, 100)])
        if kind is not Kind.SEEN:
            service += bytes([0x3A, _bthome_button(self.definition, kind)])
        raw = bytes([2, 1, 6, len(service) + 1, 0x16]) + service
        obj = {"timestamp": int(time.time()), "mac": band, "rssi": self.rng.randint(-90, -40)}
        obj["rawData"] = raw.hex().upper()
        return json.dumps(obj).encode() + b"\n"


def alarm_kinds(definition: DefinitionFile) -> tuple[Kind, ...]:
    """The alarms a station of this definition can send: those it maps. A kind it does not
    map would reach the gateway as something else (a plain sighting), and the simulator
    would report an alarm that never was."""
    kinds = []
    for kind in ALARM_KINDS:
        try:
            if definition.binary is not None:
                _message_for(definition.binary, kind)
            elif definition.jsonlines is not None:
                _bthome_button(definition, kind)
            else:
                continue
        except ValueError:
            continue
        kinds.append(kind)
    return tuple(kinds)


def _bthome_button(definition: DefinitionFile, kind: Kind) -> int:
    """The BTHome button event the definition maps to ``kind``."""
    assert definition.jsonlines is not None
    for value, mapped in definition.jsonlines.bthome_buttons.items():
        if as_code_map(mapped).kind is kind:
            return int(value)
    raise ValueError(f"the definition has no button event for {kind.value}")


def _message_for(spec: BinarySpec, kind: Kind) -> tuple[MessageSpec, int | None]:
    for msg in spec.messages:
        for value, mapped in msg.events.items():
            if as_code_map(mapped).kind is kind:
                return msg, value
        if msg.kind is kind:
            return msg, None
    raise ValueError(f"the definition has no message for {kind.value}")


def _binary_frame(spec: BinarySpec, band: str, kind: Kind, seq: int, rng: random.Random) -> bytes:
    msg, event_value = _message_for(spec, kind)
    payload = bytearray(msg.min_payload)
    values: dict[str | None, int | str] = {
        msg.device: band,
        msg.seq: seq,
        msg.rssi: rng.randint(-90, -40),
        msg.battery: 15 if kind is Kind.BATTERY_LOW else rng.randint(40, 100),
    }
    if event_value is not None:
        values[msg.event] = event_value
    for f in msg.fields:
        if f.name in values:
            value = values[f.name]
            if f.type == "hex":
                value = str(value)[-2 * f.width :].rjust(2 * f.width, "0")
            write_field(payload, f, value, spec.byte_order)
    command = msg.command.to_bytes(spec.framing.command_width, spec.byte_order)
    gap = spec.framing.payload_offset - spec.framing.command_offset - len(command)
    return encode_frame(spec.framing, command + bytes(max(0, gap)) + bytes(payload))


def run_traffic(
    write: Callable[[bytes], object],
    traffic: Traffic,
    *,
    interval_s: float,
    duration_s: float,
    burst_every_s: float | None = None,
    on_sent: Callable[[Sent, float], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Write ``traffic`` spread evenly over each interval; return the frames written."""
    count = 0
    start = time.monotonic()
    next_burst = start + burst_every_s if burst_every_s else None
    tick_start = start
    while time.monotonic() - start < duration_s and not stop():
        sends = list(traffic.tick(interval_s))
        if next_burst is not None and time.monotonic() >= next_burst:
            next_burst += burst_every_s or 0
            write(b"".join(s.frame for s in sends))  # a burst: everyone at once
            count += len(sends)
            if on_sent is not None:
                for sent in sends:
                    on_sent(sent, time.monotonic())
            sends = []
        spacing = interval_s / max(1, len(sends))
        for i, sent in enumerate(sends):
            delay = tick_start + i * spacing - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            write(sent.frame)
            count += 1
            if on_sent is not None:
                on_sent(sent, time.monotonic())
        tick_start += interval_s
        delay = tick_start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return count


class Paced:
    """Write no faster than a serial line at ``baudrate`` (10 bits a byte) could carry."""

    def __init__(self, write: Callable[[bytes], object], baudrate: int) -> None:
        self._write = write
        self._bytes_per_s = baudrate / 10
        self._start = time.monotonic()
        self._sent = 0

    def __call__(self, data: bytes) -> None:
        self._sent += len(data)
        self._write(data)
        ahead = self._sent / self._bytes_per_s - (time.monotonic() - self._start)
        if ahead > 0:
            time.sleep(ahead)


# ---- ESPA 4.4.4 control station --------------------------------------------------------------


class VirtualPort:
    """A pty pair standing in for a USB serial adapter: the gateway opens ``link`` (a symlink
    to the pty's device) like any port; the simulator writes to and reads from the other end.
    Bytes written while nobody has the port open are dropped and counted, as on a real line."""

    def __init__(self, link: Path, *, read_timeout_s: float = 3.0) -> None:
        self.link = link
        self.read_timeout_s = read_timeout_s
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no line discipline: binary frames pass untouched
        os.set_blocking(self._master, False)
        self.device = os.ttyname(self._slave)
        link.parent.mkdir(parents=True, exist_ok=True)
        staging = link.with_name(f".{link.name}.new")
        staging.unlink(missing_ok=True)
        staging.symlink_to(self.device)
        staging.replace(link)
        self.dropped = 0

    def write(self, data: bytes, /) -> int:
        """All of ``data`` leaves, as on a line: what the full pty did not take, the tail of
        a frame that only partly fitted too, is counted in ``dropped``."""
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        self.dropped += len(data) - written
        return len(data)

    def read(self, size: int = 1, /) -> bytes:
        """Up to ``size`` bytes the gateway wrote; nothing after ``read_timeout_s``."""
        ready, _, _ = select.select([self._master], [], [], self.read_timeout_s)
        if not ready:
            return b""
        try:
            return os.read(self._master, size)
        except BlockingIOError:
            return b""

    def reset_input_buffer(self) -> None:
        try:
            while os.read(self._master, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.link.is_symlink() and os.readlink(self.link) == self.device:
            self.link.unlink()
        os.close(self._master)
        os.close(self._slave)


class ByteIO(Protocol):
    def write(self, data: bytes, /) -> int | None: ...

    def read(self, size: int = 1, /) -> bytes: ...

    def reset_input_buffer(self) -> None: ...


def espa_block(
    records: list[tuple[str, str]], header: str = "1", encoding: str = "latin-1"
) -> bytes:
    body = header.encode() + bytes([STX])
    body += bytes([RS]).join(i.encode() + bytes([US]) + v.encode(encoding) for i, v in records)
    body += bytes([ETX])
    return bytes([SOH]) + body + bytes([bcc(body)])


class EspaMaster:
    """The control station ('1') selecting the paging system and sending it calls."""

    def __init__(self, io: ByteIO, *, address: str = "1", target: str = "2") -> None:
        self.io = io
        self.address = address
        self.target = target

    def reply(self) -> int | None:
        data = self.io.read(1)
        return data[0] & 0x7F if data else None

    def select(self) -> bool:
        """A reply still on the line came after its call was given up (a slow commit at the
        pager): taken for this selection's, it would keep the station one answer behind."""
        self.io.reset_input_buffer()
        self.io.write(bytes([EOT]) + self.address.encode() + bytes([ENQ]))
        self.io.write(self.target.encode() + bytes([ENQ]))
        return self.reply() == ACK

    def send_block(self, block: bytes, retries: int = 3) -> int | None:
        """Send a block until ACKed (NAK or silence: retry); the last reply."""
        answer = None
        for _ in range(retries + 1):
            self.io.write(block)
            answer = self.reply()
            if answer == ACK:
                break
        return answer

    def end(self) -> None:
        self.io.write(bytes([EOT]))

    def call(self, address: str, text: str, call_type: str = "3", priority: str = "1") -> bool:
        if not self.select():
            self.end()
            return False
        records = [("1", address), ("2", text), ("4", call_type), ("6", priority)]
        ok = self.send_block(espa_block(records)) == ACK
        self.end()
        return ok


def corrupt(block: bytes) -> bytes:
    """The same block with a wrong BCC (for NAK/retry tests and demos)."""
    return block[:-1] + bytes([block[-1] ^ 0x5A])


# ---- SIA DC-09 transmitter -------------------------------------------------------------------


class Dc09Transmitter:
    """An alarm panel: sends DC-09 messages over TCP or UDP and reads the receiver's reply."""

    def __init__(
        self,
        host: str,
        port: int,
        account: str,
        *,
        udp: bool = False,
        key: bytes | None = None,
        timeout_s: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.address = (host, port)
        self.account = account
        self.udp = udp
        self.key = key
        self.timeout_s = timeout_s
        self.clock = clock
        self.seq = 0
        self._sock: socket.socket | None = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            if self.udp:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._sock.connect(self.address)
            else:
                self._sock = socket.create_connection(self.address, timeout=self.timeout_s)
            self._sock.settimeout(self.timeout_s)
        return self._sock

    def message(self, ident: str, data: str, seq: int | None = None) -> bytes:
        if seq is None:
            self.seq = self.seq % 9999 + 1
            seq = self.seq
        return dc09.build(
            ident, seq, self.account, data, receiver="0", line="0", key=self.key, now=self.clock()
        )

    def exchange(self, raw: bytes) -> bytes:
        """Send one message and return the reply. A TCP connection the receiver closed while
        it was idle (its idle_timeout_s) is replaced once, as a panel does: a panel that sends
        less often than that must not stop at its second message."""
        try:
            return self._exchange(raw)
        except ConnectionError:
            if self.udp:
                raise
            self.close()
            return self._exchange(raw)

    def _exchange(self, raw: bytes) -> bytes:
        sock = self._socket()
        sock.sendall(raw)
        reply = b""
        while not reply.endswith(b"\r"):
            ready, _, _ = select.select([sock], [], [], self.timeout_s)
            if not ready:
                raise TimeoutError("no reply from the receiver")
            chunk = sock.recv(1024)
            if not chunk:
                raise ConnectionError("receiver closed the connection")
            reply += chunk
        return reply

    def cid_message(self, qualifier: str, code: str, zone: str, group: str = "01") -> bytes:
        """A Contact ID event, with the next seq: its retries send these very bytes."""
        return self.message("ADM-CID", f"#{self.account}|{qualifier}{code} {group} {zone}")

    def cid(self, qualifier: str, code: str, zone: str, group: str = "01") -> bytes:
        return self.exchange(self.cid_message(qualifier, code, zone, group))

    def link_test(self) -> bytes:
        return self.exchange(self.message("NULL", ""))


def contact_id_line(account: str, qualifier: str, code: str, group: str, zone: str) -> bytes:
    return with_checksum(f"{account}18{qualifier}{code}{group}{zone}").encode() + b"\r\n"
