"""Uncertain decisions that staff may still confirm, held in memory only.

Canteen staff settle an ``uncertain`` elder by hand; when they also say who it was
(``request/face.confirm``), she goes into the cooldown, and the face the counter saw becomes
one of that elder's templates so that the next visit is recognised. For that each uncertain
decision is held for ``confirm_within_s`` and then forgotten: its candidates, and its face (an
embedding, never the frame) when it looked live on most frames; it is never written to disk,
and a restart forgets it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

HOLD_AT_MOST = 256  # a busy sitting has far fewer uncertain elders within the window


@dataclass(frozen=True)
class Pending:
    candidates: tuple[tuple[str, float], ...]
    at: float
    # None: the face did not look live on most frames, or two people were in the track;
    # she can be settled, not learned
    probe: np.ndarray | None = field(repr=False)
    # per candidate, one of their enrolled templates when the face was seen (Snapshot.anchor):
    # an elder erased and enrolled again since is not the enrolment staff were shown
    anchors: Mapping[str, str | None] = field(default_factory=dict)
    # the decision's time (the frames' clock) and track, for the cooldown once confirmed
    decided_t: float = 0.0
    track: int = 0
    # the elder staff said they settled by hand (the first one named): one decision, one meal
    settled: str | None = None


class Settled(NamedTuple):
    """A confirmed decision: the elder was settled by hand; ``t`` (the frames' clock) and
    ``track`` are the decision's, ``probe`` the face it saw (None: not live enough)."""

    elder: str
    t: float
    track: int
    probe: np.ndarray | None


class Confirmations:
    """Shared by the pipeline thread (``hold``) and the downlink thread (``get``, ``done``)."""

    def __init__(self, keep_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_s = keep_s
        self._clock = clock
        self._held: OrderedDict[str, Pending] = OrderedDict()
        self._settled: list[Settled] = []
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether uncertain decisions are held, and so confirmable."""
        return self.keep_s > 0

    def hold(
        self,
        event_id: str,
        probe: np.ndarray | None,
        candidates: tuple[tuple[str, float], ...],
        anchors: Mapping[str, str | None] | None = None,
        *,
        decided_t: float = 0.0,
        track: int = 0,
    ) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._expire()
            self._held[event_id] = Pending(
                candidates, self._clock(), probe, dict(anchors or {}), decided_t, track
            )
            while len(self._held) > HOLD_AT_MOST:
                self._held.popitem(last=False)

    def get(self, event_id: str) -> Pending | None:
        with self._lock:
            self._expire()
            return self._held.get(event_id)

    def done(self, event_id: str, elder: str | None = None) -> None:
        """A decision is confirmed once; its face is let go at once. With ``elder`` (staff
        said who it was), the counter learns it was settled: see ``settle``."""
        if elder is not None:
            self.settle(event_id, elder)
        with self._lock:
            self._held.pop(event_id, None)

    def settle(self, event_id: str, elder: str) -> str | None:
        """Staff say they settled the elder of a held decision by hand: into the cooldown
        (see ``take_settled``) whether or not her face can be learned, and the decision stays
        held until it is confirmed (``done``). Returns the elder the decision is settled for
        (None: not held). One decision is one meal: once settled for an elder, naming another
        (staff trying a second candidate after the first was refused) puts nobody else in the
        cooldown, where she would be kept from her own meal; naming her again changes nothing."""
        with self._lock:
            pending = self._held.get(event_id)
            if pending is None:
                return None
            if pending.settled is None:
                self._held[event_id] = replace(pending, settled=elder)
                self._settled.append(
                    Settled(elder, pending.decided_t, pending.track, pending.probe)
                )
                return elder
            return pending.settled

    def forget_erased(self, enrolled: Container[str]) -> int:
        """The gallery was reloaded: a held face none of whose candidates is enrolled any more
        (all erased) could never be learned, and is let go now rather than after
        ``keep_s``. Returns how many went."""
        with self._lock:
            gone = [
                event_id
                for event_id, pending in self._held.items()
                if not any(elder in enrolled for elder, _ in pending.candidates)
            ]
            for event_id in gone:
                del self._held[event_id]
        return len(gone)

    def take_settled(self) -> list[Settled]:
        """The confirmations since the last call, for the pipeline thread's decider."""
        with self._lock:
            settled, self._settled = self._settled, []
        return settled

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._held)

    def _expire(self) -> None:
        now = self._clock()
        while self._held:
            first = next(iter(self._held.values()))
            if now - first.at < self.keep_s:
                break
            self._held.popitem(last=False)
