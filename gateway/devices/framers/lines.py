"""Line framer for JSON-lines gateways and Contact ID receivers: CR, LF or CRLF ends a line."""

from __future__ import annotations

from gateway.devices.model import Frame, Reject

Item = Frame | Reject
_ENDS = b"\r\n"


class LineFramer:
    def __init__(self, max_line: int = 4096) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._overlong = False  # inside a line already refused as too long

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line; inside a line already refused as too long, at least 1,
        so the frame timeout ends it like any cut line and the next line is read whole."""
        return len(self._buf) or int(self._overlong)

    def feed(self, data: bytes) -> list[Item]:
        out: list[Item] = []
        self._buf += data
        while True:
            end = _find_end(self._buf)
            if end < 0:
                if len(self._buf) > self.max_line:
                    if not self._overlong:
                        out.append(Reject("too_long", bytes(self._buf[:64])))
                    self._overlong = True
                    self._buf.clear()
                return out
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._overlong:
                self._overlong = False
                continue
            if len(line) > self.max_line:
                out.append(Reject("too_long", line[:64]))
            elif line.strip():
                out.append(Frame(line))

    def flush(self) -> list[Item]:
        out: list[Item] = []
        if self._buf.strip() and not self._overlong:
            out.append(Reject("truncated", bytes(self._buf)))
        self._buf.clear()
        self._overlong = False
        return out


def _find_end(buf: bytearray) -> int:
    cr = buf.find(_ENDS[:1])
    lf = buf.find(_ENDS[1:])
    found = [i for i in (cr, lf) if i >= 0]
    return min(found) if found else -1
