"""What a serial port does with its bytes: framer -> decoder -> dedup -> store.

``PortHandler`` holds what every port shares (link status events, silence, the frame
timeout); ``FramedHandler`` serves the protocols without sessions (binary base stations,
JSON-lines gateways, Contact ID receivers). ESPA has a session and lives in espa.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

from gateway.devices.decoders.binary import BinaryDecoder
from gateway.devices.decoders.contact_id import decode_line
from gateway.devices.decoders.jsonlines import JsonLinesDecoder
from gateway.devices.dedup import MAX_KEYS, Dedup
from gateway.devices.definitions import DefinitionFile
from gateway.devices.events import link_status
from gateway.devices.framers.binary import BinaryFramer
from gateway.devices.framers.lines import LineFramer
from gateway.devices.model import Decoded, DeviceEvent, Frame, Kind, Reject, decode_error
from gateway.devices.recorder import Recorder

log = logging.getLogger(__name__)


class Framer(Protocol):
    @property
    def pending(self) -> int: ...

    def feed(self, data: bytes) -> Sequence[object]: ...

    def flush(self) -> Sequence[object]: ...


Writer = Callable[[bytes], bool]
FRAME_TIMEOUT_S = 1.0  # a port's partial frame is dropped this long after its last byte


class PortHandler:
    """Link state and silence for one port; subclasses handle the bytes."""

    def __init__(
        self,
        recorder: Recorder,
        framer: Framer,
        *,
        frame_timeout_s: float,
        silence_s: float | None,
        char_s: float = 0.0,
        now: Callable[[], float] = time.monotonic,
        replies: Sequence[str] = (),
    ) -> None:
        """``char_s``: the seconds a character takes on the line; ``now``: the link's clock,
        that of ``at`` in on_data; ``replies``: the kinds of reply the protocol sends."""
        self.recorder = recorder
        self.framer = framer
        self.frame_timeout_s = frame_timeout_s
        self.silence_s = silence_s
        self.char_s = char_s
        self._now = now
        self._acked: tuple[bytes, float] | None = None  # the last frame ACKed, and until when
        self.last_rx: float | None = None
        self.silent = False
        self.write: Writer = lambda _data: False
        # What the sender was told, in health: a station that resends for ever while the
        # gateway NAKs is told apart from one that never hears the ACKs.
        self.replies = dict.fromkeys(replies, 0)

    def on_up(self, gap_s: float | None) -> None:
        """Supervision starts afresh: the outage was the link's, reported as down and up, and
        a station is not silent before it had its full silence time to speak."""
        self.last_rx = None
        self.silent = False
        self._status("up", gap_s, "opened" if gap_s is None else "reopened")

    def on_down(self, reason: str) -> None:
        self._feed_items(self.framer.flush(), None)
        self._status("down", None, reason)

    def on_data(self, data: bytes, at: float) -> None:
        if self.silent and self.last_rx is not None:
            self.silent = False
            self._status("active", at - self.last_rx, "traffic resumed")
        self.last_rx = at
        self._feed_items(self.framer.feed(data), at)

    def on_idle(self, at: float) -> None:
        if self.last_rx is None:
            self.last_rx = at
            return
        idle = at - self.last_rx
        if self.framer.pending and self._partial_age(at) >= self.frame_timeout_s:
            self._feed_items(self.framer.flush(), at)
        if self.silence_s is not None and not self.silent and idle >= self.silence_s:
            self.silent = True
            self._status("silent", idle, f"no bytes for {idle:.0f} s")

    def idle_due(self, at: float) -> float:
        """Seconds until ``on_idle`` may have something to do (a partial frame to drop, a
        silence to report); inf if nothing: the link sleeps that long on a quiet line."""
        if self.last_rx is None:
            return 0.0
        due = math.inf
        if self.framer.pending:
            due = self.frame_timeout_s - self._partial_age(at)
        if self.silence_s is not None and not self.silent:
            due = min(due, self.silence_s - (at - self.last_rx))
        return due

    def _status(self, state: str, gap_s: float | None, reason: str) -> None:
        r = self.recorder
        r.submit(
            link_status(
                state,
                port=r.port,
                station=r.station,
                definition=r.definition,
                gap_s=gap_s,
                reason=reason,
            )
        )

    def _partial_age(self, at: float) -> float:
        """How old a partial frame is for the frame timeout: since its last byte, so a
        sender that pauses within a frame is not cut off."""
        assert self.last_rx is not None
        return at - self.last_rx

    def _feed_items(self, items: Sequence[object], at: float | None) -> None:
        """Each frame on its own: a fault of ours on one is counted and refused, and the
        frames after it (an SOS in the same read) are still handled."""
        for item in items:
            try:
                self._item(item, at)
            except Exception as exc:
                data = item.data if isinstance(item, Frame | Reject) else b""
                self.recorder.stats.reject(self.recorder.port, decode_error(data, exc))
                self._refuse()

    def _acking(self, frame: bytes) -> None:
        """Called just before the ACK of a stored frame is written. The ACK cannot reach the
        sender sooner; the time once the write returns can be later than the ACK by however
        long this thread then waited to run, and a window starting that late could take the
        same frame sent anew, on hearing the ACK, for a resend."""
        self._acked = (frame, self._now() + len(frame) * self.char_s)

    def _resent(self, frame: bytes, at: float | None) -> bool:
        """The frame just ACKed, come whole before the sender could have sent any frame after
        hearing that ACK (a frame takes its length in characters on the line), was sent before
        the ACK reached it: its resend after its ACK timeout, when our commit took longer (a
        slow SD card). The same frame sent once our ACK was heard arrives later and is
        recorded. ``at`` is when the read that completed the frame returned, never before its
        bytes came, so a slow reader can only have a resend recorded twice, never a new frame
        taken for a resend. A resend after an ACK lost on the line cannot be told from the
        same event sent anew (no sequence number): it is recorded twice."""
        acked = self._acked
        return acked is not None and at is not None and frame == acked[0] and at < acked[1]

    def _reply(self, kind: str, data: bytes) -> None:
        """Counted whether or not the write went through: a failed one is in the link's
        errors, and the sender may have had it all the same (a hangup while it drained)."""
        self.replies[kind] = self.replies.get(kind, 0) + 1
        if not self.write(data):
            log.warning("port %s: could not send %s", self.recorder.port, kind)

    def counters(self) -> dict[str, int]:
        """The protocol's own counters for the port's health."""
        return {}

    def _item(self, item: object, at: float | None) -> None:
        raise NotImplementedError

    def _refuse(self) -> None:
        """Tell the sender a frame was not taken, where the protocol can (a NAK: it retries)."""


class FramedHandler(PortHandler):
    def __init__(
        self,
        recorder: Recorder,
        framer: Framer,
        decode: Callable[[bytes], Decoded],
        dedup: Dedup,
        *,
        frame_timeout_s: float,
        silence_s: float | None,
        ack: bytes | None = None,
        nak: bytes | None = None,
        char_s: float = 0.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            recorder,
            framer,
            frame_timeout_s=frame_timeout_s,
            silence_s=silence_s,
            char_s=char_s,
            now=now,
            replies=[kind for kind, reply in (("ACK", ack), ("NAK", nak)) if reply],
        )
        self.decode = decode
        self.dedup = dedup
        self.ack = ack
        self.nak = nak
        self.station: str | None = None

    def on_down(self, reason: str) -> None:
        """What comes after the reopen may be another BLE gateway, plugged in meanwhile: its
        adverts are the port's until it announces itself, never the one's before."""
        super().on_down(reason)
        self.station = None

    def _item(self, item: object, at: float | None) -> None:
        if isinstance(item, Reject):
            self.recorder.stats.reject(self.recorder.port, item)
        elif isinstance(item, Frame):
            self.recorder.stats.frames += 1
            self._frame(item.data, at)

    def _refuse(self) -> None:
        if self.ack is not None and self.nak:
            self._reply("NAK", self.nak)

    def _frame(self, frame: bytes, at: float | None) -> None:
        stats = self.recorder.stats
        if self.ack is not None and self._resent(frame, at):
            stats.duplicates += 1
            self._reply("ACK", self.ack)
            return
        decoded = self.decode(frame)
        for reject in decoded.rejects:
            stats.reject(self.recorder.port, reject)
        if decoded.station is not None:
            self.station = decoded.station
        fresh = [ev for ev in decoded.events if not self._repeat(ev)]
        if not decoded.events and not decoded.rejects:
            stats.ignored += 1
        if self.ack is None:  # radio: no retry to ask for, but the band's own repeats
            for ev in fresh:
                forget = partial(self.dedup.forget, self._key(ev))
                self.recorder.submit(self.recorder.event(ev, self.station), at, forget)
            return
        if decoded.rejects and not decoded.events:
            self._refuse()
            return
        stored = False
        try:
            stored = self.recorder.record([self.recorder.event(ev, self.station) for ev in fresh])
        finally:
            if not stored:  # the sender retries after our NAK: that must not be a repeat
                for ev in fresh:
                    self.dedup.forget(self._key(ev))
        if stored:
            self._acking(frame)
            if self.ack:
                self._reply("ACK", self.ack)
        elif self.nak:
            self._reply("NAK", self.nak)

    def _repeat(self, ev: DeviceEvent) -> bool:
        if ev.seq is None:
            return False
        if self.dedup.is_repeat(self._key(ev)):
            self.recorder.stats.duplicates += 1
            return True
        return False

    def _key(self, ev: DeviceEvent) -> tuple[object, ...]:
        """What makes two events the same transmission (see dedup.py). The dedup may be shared
        by the ports of one definition: a band's SOS heard by two stations is one alarm, but
        each station's sighting is kept (where the band is heard, and how well)."""
        key: tuple[object, ...] = (ev.device, ev.kind, ev.code, ev.seq)
        return (*key, self.recorder.port) if ev.kind is Kind.SEEN else key


def framer_and_decoder(
    definition: DefinitionFile,
) -> tuple[Framer, Callable[[bytes], Decoded]]:
    """Framer and decoder for a definition without a session (binary, jsonlines, contact_id)."""
    if definition.binary is not None:
        return BinaryFramer(definition.binary.framing), BinaryDecoder(definition.binary).decode
    if definition.jsonlines is not None:
        spec = definition.jsonlines
        return LineFramer(spec.max_line), JsonLinesDecoder(spec).decode
    if definition.contact_id is not None:
        codes, encoding = definition.codes, definition.contact_id.encoding

        def decode(line: bytes) -> Decoded:
            return decode_line(line, codes, encoding)

        return LineFramer(64), decode
    raise ValueError(f"{definition.name}: not a framed serial protocol ({definition.protocol})")


def definition_dedup(
    definition: DefinitionFile, now: Callable[[], float] = time.monotonic, ports: int = 1
) -> Dedup:
    """The repeat filter with a framed definition's ``dedup_window_s``. The radio ports of one
    definition share one (see build_services): base stations whose coverage overlaps all hear
    a band's SOS, and it is one alarm. It holds as many keys as ``ports`` filters of their
    own would: a busy site must not push an SOS out of the window early."""
    spec = definition.binary or definition.jsonlines or definition.contact_id
    window = spec.dedup_window_s if spec is not None else 0.0
    return Dedup(window, now, max_keys=MAX_KEYS * ports)


def framed_handler(
    definition: DefinitionFile,
    recorder: Recorder,
    *,
    frame_timeout_s: float,
    silence_s: float | None,
    dedup: Dedup | None = None,
    char_s: float = 0.0,
    now: Callable[[], float] = time.monotonic,
) -> FramedHandler:
    """``dedup``: the filter shared with the definition's other ports (default: its own);
    ``char_s``, ``now``: see PortHandler."""
    framer, decode = framer_and_decoder(definition)
    ack = nak = None
    if definition.contact_id is not None:
        spec = definition.contact_id
        ack = bytes.fromhex(spec.ack) if spec.ack else None
        nak = bytes.fromhex(spec.nak) if spec.nak else None
    return FramedHandler(
        recorder,
        framer,
        decode,
        dedup if dedup is not None else definition_dedup(definition),
        frame_timeout_s=frame_timeout_s,
        silence_s=silence_s,
        ack=ack,
        nak=nak,
        char_s=char_s,
        now=now,
    )
