"""Declarative binary framer: header, length field or fixed size, checksum, from a definition.

Resynchronisation: a candidate frame with an absurd length or a bad checksum costs one byte
and the scan restarts at the next header, so a valid frame hidden behind a truncated one is
still found. An incomplete candidate gives way at once to a complete, valid frame further on
(an SOS behind a cut-off frame must not wait), and ``flush`` after the frame timeout walks the
rest of the buffer the same way instead of dropping it. Each candidate behind the front is
checked once, when its last byte comes: checked again on every read, a stream of headers
behind a long incomplete candidate cost CPU growing with the square of ``max_length``.
"""

from __future__ import annotations

import heapq

from gateway.devices.definitions import BinaryFraming
from gateway.devices.framers.checksums import CHECKSUMS
from gateway.devices.model import Frame, Reject

Item = Frame | Reject


class BinaryFramer:
    def __init__(self, spec: BinaryFraming) -> None:
        self.spec = spec
        self._header = spec.header_bytes
        self._check, self._csize = CHECKSUMS[spec.checksum.kind]
        self._min_total = max(
            len(self._header), spec.payload_offset, spec.command_offset + spec.command_width
        )
        self._min_total += self._csize
        self._buf = bytearray()
        self._covered = 0  # bytes at the front already reported inside a rejected candidate
        # candidates behind the front, by their place in the stream, not in the buffer (which
        # loses bytes at the front): headers found up to ``_seen``; those whose length field
        # is not in yet; the others by the place their last byte comes (a heap)
        self._start = 0  # the stream's byte at the front of the buffer
        self._seen = 0
        self._unsized: list[int] = []
        self._due: list[tuple[int, int]] = []

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Item]:
        self._buf += data
        out: list[Item] = []
        self._scan(out)
        return out

    def flush(self) -> list[Item]:
        """The frame timeout passed: give up on the candidate at the front, keep scanning."""
        out: list[Item] = []
        while self._buf:
            if self._covered == 0:
                out.append(Reject("truncated", bytes(self._buf[: self._candidate_size()])))
                self._covered = self._candidate_size()
            self._skip(1, out)
            self._scan(out)
        self._covered = 0
        self._unsized.clear()
        self._due.clear()
        return out

    # ---- internals ------------------------------------------------------------------------

    def _candidate_size(self) -> int:
        total = self._total(self._buf)
        return min(len(self._buf), total if total and total > 0 else len(self._buf))

    def _skip(self, n: int, out: list[Item], reason: str = "garbage") -> None:
        """Drop ``n`` bytes, reporting those no rejected candidate has reported yet."""
        reported = n - min(n, self._covered)
        if reported:
            out.append(Reject(reason, bytes(self._buf[n - reported : n])))
        self._covered = max(0, self._covered - n)
        self._drop(n)

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self._start += n

    def _total(self, buf: bytes | bytearray, at: int = 0) -> int | None:
        """Frame size for a candidate at ``at``; None if the length field is not in yet,
        -1 if it is absurd."""
        spec = self.spec
        if spec.fixed_length is not None:
            return spec.fixed_length
        assert spec.length is not None
        field = spec.length
        end = at + field.offset + field.width
        if len(buf) < end:
            return None
        value = int.from_bytes(buf[at + field.offset : end], field.order)
        total = field.counts_from + value + (0 if field.includes_checksum else self._csize)
        if total < self._min_total or total > spec.max_length:
            return -1
        return total

    def _valid(self, frame: bytes | bytearray) -> bool:
        size = self._csize
        if size == 0:
            return True
        body = frame[self.spec.checksum.start : len(frame) - size]
        got = int.from_bytes(frame[len(frame) - size :], self.spec.checksum.order)
        return self._check(bytes(body)) == got

    def _scan(self, out: list[Item]) -> None:
        header = self._header
        while self._buf:
            i = self._buf.find(header)
            if i < 0:
                self._skip(len(self._buf) - _partial_header(self._buf, header), out)
                return
            if i > 0:
                self._skip(i, out)
                continue
            total = self._total(self._buf)
            if total == -1:
                out.append(Reject("bad_length", bytes(self._buf[: len(header) + 2])))
                self._covered = 1
                self._skip(1, out)
                continue
            if total is None or len(self._buf) < total:
                if not self._overtaken(out):
                    return
                continue
            frame = bytes(self._buf[:total])
            if self._valid(frame):
                out.append(Frame(frame))
                self._drop(total)
                self._covered = 0
            else:
                out.append(Reject("bad_checksum", frame))
                self._covered = total
                self._skip(1, out)

    def _overtaken(self, out: list[Item]) -> bool:
        """An incomplete candidate at the front yields to a complete valid frame behind it
        (the first, if several). Only candidates the latest bytes completed are checked: the
        others were already, or still lack bytes."""
        start, end = self._start, self._start + len(self._buf)
        found = max(self._seen, start + 1)
        while (j := self._buf.find(self._header, found - start)) >= 0:
            self._unsized.append(start + j)
            found = start + j + 1
        self._seen = max(found, end - len(self._header) + 1)  # a header cut by the buffer end
        unsized, self._unsized = self._unsized, []
        for at in unsized:
            total = self._total(self._buf, at - start) if at > start else -1
            if total is None:
                self._unsized.append(at)
            elif total > 0:
                heapq.heappush(self._due, (at + total, at))
        valid: list[tuple[int, int]] = []
        while self._due and self._due[0][0] <= end:
            last, at = heapq.heappop(self._due)
            if at > start and self._valid(self._buf[at - start : last - start]):
                valid.append((last, at))
        if not valid:
            return False
        first = min(valid, key=lambda candidate: candidate[1])
        for candidate in valid:
            if candidate is not first:  # its turn comes when the first one has been taken
                heapq.heappush(self._due, candidate)
        self._skip(first[1] - start, out, "truncated")
        return True


def _partial_header(buf: bytearray, header: bytes) -> int:
    """Length of the longest suffix of ``buf`` that could start a header."""
    for n in range(min(len(header) - 1, len(buf)), 0, -1):
        if buf.endswith(header[:n]):
            return n
    return 0


def encode_frame(spec: BinaryFraming, body: bytes) -> bytes:
    """A valid frame around ``body`` (command + payload): the simulator's side of the framing."""
    check, size = CHECKSUMS[spec.checksum.kind]
    header = spec.header_bytes
    if spec.fixed_length is not None:
        room = spec.fixed_length - spec.command_offset - size
        frame = header + bytes(spec.command_offset - len(header)) + body[:room].ljust(room, b"\0")
    else:
        assert spec.length is not None
        lf = spec.length
        prefix = lf.offset + lf.width
        content = bytes(max(0, spec.command_offset - prefix)) + body
        total = prefix + len(content) + size
        value = total - lf.counts_from - (0 if lf.includes_checksum else size)
        frame = header + bytes(lf.offset - len(header)) + value.to_bytes(lf.width, lf.order)
        frame += content
    return frame + check(frame[spec.checksum.start :]).to_bytes(size, spec.checksum.order)
