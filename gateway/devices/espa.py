"""ESPA 4.4.4 session (ISO 1745 basic mode, half duplex) with the gateway as paging system.

The control station (master) identifies itself with ``<its address> ENQ`` and then selects us
with ``<our address> ENQ``; we answer ACK and take one block at a time, answering ACK only
once every call in it is committed to the store, NAK on a bad BCC, bad parity or a store
failure (the master retries), and EOT ends the exchange. A commit slower than the master's
response timeout has the master send the block again before our ACK reaches it: that resend
is ACKed and not recorded a second time (see ``PortHandler._resent``). ``<our address> ENQ``
without a preceding identification is a poll: we have nothing to send and answer EOT. An
identification the response timeout passed without a selection is forgotten.

On a shared line the master also addresses other stations: ``<another address> ENQ`` (not
the master's own) is a poll or selection of that station, and what follows until EOT or a new
ENQ (its ACK, a block for it, a damaged one, the master's resend of it) is not ours: we keep
silent and record nothing, or a page for station 3 would be taken for a nurse call and our
ACK would collide with station 3's. Such an ENQ followed at once by ours, nothing between,
is no poll of another station (which waits for its answer) but a control station that
identifies itself with another address than ``master_address``: we are selected all the
same, and the log says to set it.

A block that comes while we are not selected (a selection lost to noise, a gateway restarted
mid-session) is recorded and answered all the same: a nurse call must never be lost, and an
ACK withheld would only have the master select again and send it a second time, which the
platform would receive as a second call. One that came whole but damaged (BCC, parity, format)
is NAKed as in a session: left unanswered, the call would wait for the master's response
timeout before it is sent again. It is counted in ``unselected``: a count that grows says the
line's sessions and ours disagree (another station on the line, a wrong address). What is no
whole block (cut short, noise) is answered only in a session: outside one, nobody waits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.devices.decoders.espa import decode_block
from gateway.devices.definitions import EspaSpec
from gateway.devices.framers.espa import ACK, EOT, NAK, Control, EspaFramer
from gateway.devices.model import Frame, Reject
from gateway.devices.pipeline import PortHandler
from gateway.devices.recorder import Recorder
from gateway.logs import RateLimitedLog

log = logging.getLogger(__name__)
_flood = RateLimitedLog(log, 30.0)
# "<master> ENQ <ours> ENQ" comes back to back (a few character times); a poll of another
# station waits for its answer, the master's response timeout (3 s suggested), before the next
IDENTIFY_WITHIN_S = 0.1


class EspaSession(PortHandler):
    def __init__(
        self,
        spec: EspaSpec,
        recorder: Recorder,
        *,
        silence_s: float | None,
        frame_timeout_s: float | None = None,
        parity_checked: bool = True,
        char_s: float = 0.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        """A block not complete ``frame_timeout_s`` after its SOH is dropped (the port's
        setting, else the definition's response timeout); a master that does not go on within
        the response timeout has the session back to neutral. ``parity_checked``: the port is
        7-bit and its link marks bad parity (see EspaFramer). ``char_s``, ``now``: see
        PortHandler."""
        super().__init__(
            recorder,
            EspaFramer(parity_checked=parity_checked),
            frame_timeout_s=frame_timeout_s or spec.response_timeout_s,
            silence_s=silence_s if silence_s is not None else spec.silence_s,
            char_s=char_s,
            now=now,
            replies=("ACK", "NAK", "EOT"),
        )
        self.spec = spec
        self.state = "neutral"
        self.master: str | None = None
        self.block_since: float | None = None
        self.unselected = 0  # blocks that came outside a session
        self.for_others = 0  # blocks in another station's exchange on a shared line
        # the other address last addressed, and when, while nothing has come since
        self._addressed: tuple[str, float] | None = None

    def counters(self) -> dict[str, int]:
        return {"unselected": self.unselected, "for_others": self.for_others}

    def on_data(self, data: bytes, at: float) -> None:
        super().on_data(data, at)
        self.block_since = block_start(self.block_since, self.framer.pending, len(data), at)

    def _partial_age(self, at: float) -> float:
        """A block times out from its SOH, not from its last byte: a master that keeps
        the line busy (polls, select retries) must not keep open a block that noise began."""
        if self.block_since is None:
            return super()._partial_age(at)
        return at - self.block_since

    def on_idle(self, at: float) -> None:
        wait = self._state_wait()
        if wait is not None and self.last_rx is not None and at - self.last_rx >= wait:
            log.info("espa %s: no answer within %.1f s, back to neutral", self.recorder.port, wait)
            self._neutral()
        super().on_idle(at)

    def idle_due(self, at: float) -> float:
        due = super().idle_due(at)
        wait = self._state_wait()
        if wait is not None and self.last_rx is not None:
            due = min(due, wait - (at - self.last_rx))
        return due

    def _state_wait(self) -> float | None:
        """How long the line may be quiet before the session is back to neutral: the response
        timeout; another station's exchange the master's three resends of its block as well
        (a slow station's ACK must not let the master's resend pass for a call of ours)."""
        if self.state == "elsewhere":
            return self.spec.response_timeout_s * 4
        if self.state != "neutral" or self.master is not None:
            return self.spec.response_timeout_s
        return None

    def on_down(self, reason: str) -> None:
        """The outage ends the session: a block cut by it is owed no NAK (none could go out),
        and after it a poll is a poll, not the selection of a session the master gave up."""
        self._neutral()
        super().on_down(reason)

    def _neutral(self) -> None:
        self.state = "neutral"
        self.master = None

    def _item(self, item: object, at: float | None) -> None:
        addressed, self._addressed = self._addressed, None
        if isinstance(item, Control):
            self._control(item, addressed, self.last_rx if at is None else at)
        elif self.state == "elsewhere":  # another station's exchange: not ours to answer
            if isinstance(item, Frame):
                self.for_others += 1
        elif isinstance(item, Frame):
            self.recorder.stats.frames += 1
            self._block(item.data, at)
        elif isinstance(item, Reject):
            self.recorder.stats.reject(self.recorder.port, item)
            if item.reason in ("bad_bcc", "parity"):
                self._outside_session()
                self._reply("NAK", bytes([NAK]))
            elif item.reason != "garbage":
                self._refuse()

    def _refuse(self) -> None:
        if self.state == "selected":
            self._reply("NAK", bytes([NAK]))

    def _outside_session(self) -> None:
        """A whole block, counted when it came outside a session."""
        if self.state == "selected":
            return
        self.unselected += 1
        _flood.warning(
            f"{self.recorder.port}:unselected",
            "espa %s: a block outside a session (answered): is another station on the line?",
            self.recorder.port,
        )

    def _control(
        self, item: Control, addressed: tuple[str, float] | None, at: float | None
    ) -> None:
        """``addressed``: the other address an ENQ named just before this item, and when."""
        if item.kind == "eot":
            self._neutral()
        elif item.kind != "enq":
            return
        elif item.address == self.spec.master_address:
            self.state, self.master = "neutral", item.address
        elif item.address != self.spec.address:
            self.state, self.master = "elsewhere", None
            if item.address is not None and at is not None:
                self._addressed = (item.address, at)
        elif self.master is None and not self._identified(addressed, at):
            self.state = "neutral"  # a poll: we have nothing to send
            self._reply("EOT", bytes([EOT]))
        else:
            if self.master is None:
                assert addressed is not None
                self.master = addressed[0]
                _flood.warning(
                    f"{self.recorder.port}:master",
                    "espa %s: '%s ENQ' came right before our address, not master_address "
                    "'%s': taken for the control station identifying itself, and answered; "
                    'if it is, set master_address = "%s" in the definition',
                    self.recorder.port,
                    self.master,
                    self.spec.master_address,
                    self.master,
                )
            self.state = "selected"
            self._reply("ACK", bytes([ACK]))

    def _identified(self, addressed: tuple[str, float] | None, at: float | None) -> bool:
        """Our ENQ right after another address's, nothing between: that address was the
        control station's own (a poll of another station waits for its answer)."""
        if addressed is None or at is None:
            return False
        # the two characters of our address and ENQ, read one by one on a slow line
        return at - addressed[1] <= IDENTIFY_WITHIN_S + 2 * self.char_s

    def _block(self, raw: bytes, at: float | None) -> None:
        stats = self.recorder.stats
        self._outside_session()
        if self._resent(raw, at):
            stats.duplicates += 1
            self._reply("ACK", bytes([ACK]))
            return
        decoded = decode_block(raw, self.spec)
        for reject in decoded.rejects:
            stats.reject(self.recorder.port, reject)
        if decoded.rejects and not decoded.events and not decoded.ignored:
            self._reply("NAK", bytes([NAK]))
            return
        if not decoded.events:
            stats.ignored += 1
        events = [self.recorder.event(ev) for ev in decoded.events]
        # Counted before the reply goes out, so whoever sees the reply sees the count.
        if self.recorder.record(events):
            self._acking(raw)
            self._reply("ACK", bytes([ACK]))
        else:
            self._reply("NAK", bytes([NAK]))


def block_start(since: float | None, pending: int, fed: int, at: float) -> float | None:
    """When the partial block left after a read began. Its bytes are the end of the stream,
    so more of them than this read brought means it began in an earlier read."""
    if not pending:
        return None
    return since if since is not None and pending > fed else at
