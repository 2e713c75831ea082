"""ESPA 4.4.4 / ISO 1745 tokens: control sequences and ``SOH ... ETX BCC`` blocks.

On a 7-bit link (7E1, 7E2) bytes arrive with parity already checked (see link.py); a byte
whose parity was wrong reaches this framer as ``PARITY_ERROR`` (0xFF, impossible in 7-bit
data), so the block holding it is refused and the session answers NAK. On an 8-bit link (8N1
for Latin-1 or GBK text) 0xFF is an ordinary byte: a character, or a block's BCC.

ISO 1745 basic mode keeps transmission control characters out of the text, so before ETX an
SOH, EOT or ENQ ends the block as truncated: a noise SOH on an idle line then cannot swallow
the master's next ``EOT <addr> ENQ``. After ETX any byte is the BCC (it can be 0x03 or 0x04).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.devices.framers.checksums import xor8
from gateway.devices.model import Frame, Reject

SOH, STX, ETX, EOT, ENQ, ACK, NAK, RS, US = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x15, 0x1E, 0x1F
PARITY_ERROR = 0xFF
MAX_BLOCK = 1024


@dataclass(frozen=True)
class Control:
    """EOT, ACK, NAK, or ``<address> ENQ`` (``address`` set)."""

    kind: str
    address: str | None = None


Item = Frame | Reject | Control
_CONTROLS = {EOT: "eot", ACK: "ack", NAK: "nak"}


def bcc(body: bytes) -> int:
    """XOR of every byte after SOH up to and including ETX."""
    return xor8(body)


class EspaFramer:
    def __init__(self, *, parity_checked: bool = True) -> None:
        """``parity_checked``: the bytes come from a 7-bit link that marks bad parity as
        ``PARITY_ERROR``; False for an 8-bit link, where that byte is data."""
        self._parity_error = PARITY_ERROR if parity_checked else None
        self._block: bytearray | None = None
        self._await_bcc = False
        self._address: int | None = None
        self._garbage = bytearray()

    @property
    def pending(self) -> int:
        return len(self._block) if self._block is not None else 0

    def feed(self, data: bytes) -> list[Item]:
        out: list[Item] = []
        for b in data:
            if self._block is not None:
                self._in_block(b, out)
            else:
                self._idle(b, out)
        self._report_garbage(out)
        return out

    def flush(self) -> list[Item]:
        out: list[Item] = []
        if self._block is not None:
            out.append(Reject("truncated", bytes(self._block)))
        self._block = None
        self._await_bcc = False
        if self._address is not None:
            self._garbage.append(self._address)
            self._address = None
        self._report_garbage(out)
        return out

    def _report_garbage(self, out: list[Item]) -> None:
        if self._garbage:
            out.append(Reject("garbage", bytes(self._garbage)))
            self._garbage.clear()

    def _idle(self, b: int, out: list[Item]) -> None:
        if self._address is not None:
            address, self._address = self._address, None
            if b == ENQ:
                self._report_garbage(out)
                out.append(Control("enq", chr(address)))
                return
            self._garbage.append(address)
        if b == SOH:
            self._report_garbage(out)
            self._block = bytearray([SOH])
        elif b in _CONTROLS:
            self._report_garbage(out)
            out.append(Control(_CONTROLS[b]))
        elif 0x30 <= b <= 0x39:
            self._address = b
        else:
            self._garbage.append(b)

    def _in_block(self, b: int, out: list[Item]) -> None:
        block = self._block
        assert block is not None
        if self._await_bcc:
            self._end_block(block, b, out)
            return
        if b == EOT:
            # The master's forward abort: it is neutral again and waits for no reply, so the
            # session sees the EOT first (and sends no NAK for the block it abandoned).
            self._block = None
            out.append(Control("eot"))
            out.append(Reject("truncated", bytes(block)))
            return
        if b in (SOH, ENQ):
            # SOH: the block was cut and the next one begins. ENQ: the sender aborted the
            # block (the session answers NAK, as to a bad one).
            out.append(Reject("truncated", bytes(block)))
            self._block = bytearray([SOH]) if b == SOH else None
            return
        block.append(b)
        if b == ETX:
            self._await_bcc = True
        elif len(block) > MAX_BLOCK:
            out.append(Reject("too_long", bytes(block[:64])))
            self._block = None

    def _end_block(self, block: bytearray, b: int, out: list[Item]) -> None:
        """``b`` is the BCC: the block is whole, or refused for parity or BCC."""
        self._block = None
        self._await_bcc = False
        raw = bytes(block) + bytes([b])
        parity = self._parity_error is not None and self._parity_error in raw
        if not parity and bcc(raw[1:-1]) == b:
            out.append(Frame(raw))
            return
        out.append(Reject("parity" if parity else "bad_bcc", raw))
        if b == SOH:  # a block cut off before its BCC, then the next block
            self._block = bytearray([SOH])
