"""SIA DC-09 messages: parse and check what a transmitter sent, build the receiver's replies.

``<LF> CRC LLLL "ID" SEQ [Rrcvr] Lpref #acct [data] [extended]... _HH:MM:SS,MM-DD-YYYY <CR>``.
The CRC (CRC-16/ARC over the span from the first quote) is checked strictly; a wrong length
field is only noted, as some transmitters get it wrong. With a ``*`` before the ID, everything
after ``[`` is AES-CBC (zero IV) hex holding random padding, ``|``, the data and timestamp.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.devices.framers.checksums import crc16_arc

_HEAD = re.compile(r"^([0-9A-Fa-f]{4})([0-9A-Fa-f]{4})(\".*)$", re.S)
_BODY = re.compile(
    r'^"(\*?)([A-Z0-9-]{1,16})"(\d{4})(?:R([0-9A-Fa-f]{1,6}))?(?:L([0-9A-Fa-f]{1,6}))?'
    r"#([0-9A-Fa-f]{3,16})\[(.*)$",
    re.S,
)
_TS = re.compile(r"_(\d{2}):(\d{2}):(\d{2}),(\d{2})-(\d{2})-(\d{4})$")
_TEXT = r"[^\x00-\x1f\x7f\[\]]"
# After the pad and its '|': the data (empty, or "#acct|...") up to ']', any extended data
# blocks, the timestamp. Text decrypted under a wrong key practically never has this shape.
_PLAIN = re.compile(
    rf"(?:#?[0-9A-Fa-f]{{0,16}}\|{_TEXT}*)?\](?:\[{_TEXT}*\])*"
    r"(?:_\d{2}:\d{2}:\d{2},\d{2}-\d{2}-\d{4})?"
)
_PAD_CHARS = bytes(c for c in range(0x20, 0x7F) if c not in b"[]|")
TS_FORMAT = "%H:%M:%S,%m-%d-%Y"


class Dc09Error(ValueError):
    """A message that cannot be used; ``reason`` is the counter name and decides the reply.
    ``dc09``: whether it has the shape of a DC-09 message at all (CRC and length, then
    ``"ID"SEQ...#acct[``); a UDP receiver does not answer one that has not, as its sender
    may be a forged address (see Dc09Service)."""

    def __init__(self, reason: str, detail: str = "", *, dc09: bool = True) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.dc09 = dc09


@dataclass(frozen=True)
class Dc09Message:
    id: str
    seq: int
    receiver: str | None
    line: str | None
    account: str
    encrypted: bool
    data: str
    extended: tuple[str, ...]
    timestamp: datetime | None
    length_ok: bool


def aes(key: bytes, data: bytes, *, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(bytes(16)))
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return op.update(data) + op.finalize()


def crc_hex(body: str) -> str:
    return f"{crc16_arc(body.encode('latin-1')):04X}"


def frame(body: str) -> bytes:
    """``<LF> CRC 0LLL body <CR>``."""
    return f"\n{crc_hex(body)}{len(body):04X}{body}\r".encode("latin-1")


def parse(content: str, key_for: dict[str, bytes]) -> Dc09Message:
    """``content`` is a message without its LF and CR. ``key_for`` maps account -> AES key."""
    head = _HEAD.match(content)
    if head is None:
        raise Dc09Error("bad_format", "no CRC/length header", dc09=False)
    crc, length, body = head.groups()
    m = _BODY.match(body)
    if crc_hex(body) != crc.upper():
        raise Dc09Error("bad_crc", dc09=m is not None)
    if m is None:
        raise Dc09Error("bad_format", "header fields", dc09=False)
    star, ident, seq, receiver, line, account, rest = m.groups()
    encrypted = star == "*"
    if encrypted:
        key = key_for.get(account.upper())
        if key is None:
            raise Dc09Error("no_key", f"account {account}")
        rest = _decrypt(key, rest)
    data, extended, timestamp = _split(rest)
    return Dc09Message(
        id=ident,
        seq=int(seq),
        receiver=receiver,
        line=line,
        account=account,
        encrypted=encrypted,
        data=data,
        extended=extended,
        timestamp=timestamp,
        length_ok=int(length, 16) == len(body),
    )


def _decrypt(key: bytes, hex_text: str) -> str:
    try:
        cipher = bytes.fromhex(hex_text)
    except ValueError:
        raise Dc09Error("bad_format", "encrypted part is not hex") from None
    if not cipher or len(cipher) % 16:
        raise Dc09Error("bad_format", "encrypted part is not whole AES blocks")
    plain = aes(key, cipher, encrypt=False).decode("latin-1")
    pad, sep, rest = plain.partition("|")
    if not sep or "[" in pad or "]" in pad or _PLAIN.fullmatch(rest) is None:
        raise Dc09Error("bad_decrypt", "not padding, '|', data and timestamp (wrong key?)")
    return rest


def _split(rest: str) -> tuple[str, tuple[str, ...], datetime | None]:
    data, sep, tail = rest.partition("]")
    if not sep:
        raise Dc09Error("bad_format", "data without ']'")
    timestamp = None
    ts = _TS.search(tail)
    if ts is not None:
        hh, mi, ss, mo, dd, yyyy = (int(x) for x in ts.groups())
        try:
            timestamp = datetime(yyyy, mo, dd, hh, mi, ss, tzinfo=UTC)
        except ValueError:
            raise Dc09Error("bad_timestamp") from None
        tail = tail[: ts.start()]
    extended = tuple(x.strip("[") for x in tail.split("]") if x.strip("["))
    return data, extended, timestamp


def _timestamp(now: datetime) -> str:
    return "_" + now.strftime(TS_FORMAT)


def _pad(n: int) -> str:
    return "".join(chr(_PAD_CHARS[b % len(_PAD_CHARS)]) for b in os.urandom(n))


def _encrypted_tail(key: bytes, inner: str) -> str:
    padded = _pad(16 - (len(inner) + 1) % 16 or 16) + "|" + inner
    return aes(key, padded.encode("latin-1"), encrypt=True).hex().upper()


def build(
    ident: str,
    seq: int,
    account: str,
    data: str,
    *,
    receiver: str | None = None,
    line: str | None = None,
    key: bytes | None = None,
    now: datetime | None = None,
) -> bytes:
    """A DC-09 message (transmitter side: the simulator) or reply (receiver side)."""
    head = f'"{"*" if key else ""}{ident}"{seq:04d}'
    if receiver is not None:
        head += f"R{receiver}"
    if line is not None:
        head += f"L{line}"
    head += f"#{account}["
    stamp = _timestamp(now) if now is not None else ""
    if key is None:
        return frame(f"{head}{data}]{stamp}")
    return frame(head + _encrypted_tail(key, f"{data}]{stamp}"))


def ack(msg: Dc09Message, key: bytes | None, now: datetime) -> bytes:
    return build(
        "ACK",
        msg.seq,
        msg.account,
        "",
        receiver=msg.receiver,
        line=msg.line,
        key=key if msg.encrypted else None,
        now=now if msg.encrypted else None,
    )


def duh(msg: Dc09Message | None) -> bytes:
    if msg is None:
        return frame('"DUH"0000R0L0A0[]')
    return build("DUH", msg.seq, msg.account, "", receiver=msg.receiver, line=msg.line)


def nak(now: datetime) -> bytes:
    """NAK carries the receiver's time so the transmitter can correct its clock."""
    return frame(f'"NAK"0000R0L0A0[]{_timestamp(now)}')
