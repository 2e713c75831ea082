"""Hand device events to the store and keep the per-port counters the health message shows.

Two ways in: ``submit`` for sources that have no acknowledgement (radio base stations), which
must not stall the port while SQLite commits; ``record`` for sources that do (ESPA, DC-09,
Contact ID receivers), which may only be acknowledged once the event is on disk.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.devices.config import Dc09Receiver, PortConfig
from gateway.devices.events import to_event
from gateway.devices.model import DeviceEvent, Reject
from gateway.events import Event, Lane, StoredEvent
from gateway.logs import RateLimitedLog
from gateway.store import Receipt, Store, StoreClosed

log = logging.getLogger(__name__)
_flood = RateLimitedLog(log, 30.0)


@dataclass
class PortStats:
    frames: int = 0
    events: int = 0
    duplicates: int = 0
    ignored: int = 0
    store_errors: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    alarm_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    # The counters written from more than one thread: a count is read, added to and written
    # back, and another thread's update in between would be lost. ``rejected``: a DC-09
    # receiver refuses on several threads at once (each connection's, the UDP one);
    # ``events``, ``store_errors``, ``alarm_ms``: the store's thread (queued events) and the
    # port's (events committed before an ACK) both count.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def stored(self, n: int, alarm_ms: float | None = None) -> None:
        """``n`` events committed; ``alarm_ms``: an alarm's time from its bytes to its commit."""
        with self._lock:
            self.events += n
            if alarm_ms is not None:
                self.alarm_ms.append(alarm_ms)

    def store_error(self) -> None:
        with self._lock:
            self.store_errors += 1

    def reject(self, port: str, item: Reject) -> None:
        """Counted, and logged by reason and size only: a refused frame's bytes can hold a
        nurse call's display text, which may name a resident (a ``spy://`` capture shows them
        to an installer who needs them)."""
        with self._lock:
            self.rejected[item.reason] = self.rejected.get(item.reason, 0) + 1
        _flood.warning(
            f"{port}:{item.reason}",
            "port %s: rejected %s%s%s",
            port,
            item.reason,
            f" ({item.detail})" if item.detail else "",
            f", {len(item.data)} bytes" if item.data else "",
        )

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            events, store_errors = self.events, self.store_errors
            rejected, ms = dict(self.rejected), list(self.alarm_ms)
        out: dict[str, Any] = {
            "frames": self.frames,
            "events": events,
            "duplicates": self.duplicates,
            "ignored": self.ignored,
            "store_errors": store_errors,
            "rejected": rejected,
        }
        if ms:
            ms.sort()
            out["alarm_record_ms"] = {
                "p50": round(statistics.median(ms), 2),
                "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
            }
        return out


class Recorder:
    def __init__(
        self,
        store: Store,
        *,
        port: str,
        station: str,
        definition: str,
        record_timeout_s: float,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.port = port
        self.station = station
        self.definition = definition
        self.record_timeout_s = record_timeout_s
        self.stats = PortStats()
        self._now = now

    @classmethod
    def for_source(
        cls, store: Store, cfg: PortConfig | Dc09Receiver, definition: str, record_timeout_s: float
    ) -> Recorder:
        """The recorder of one configured port or receiver."""
        return cls(
            store,
            port=cfg.name,
            station=cfg.station_id,
            definition=definition,
            record_timeout_s=record_timeout_s,
        )

    def event(self, ev: DeviceEvent, station: str | None = None) -> Event:
        return to_event(
            ev, port=self.port, station=station or self.station, definition=self.definition
        )

    def submit(
        self,
        event: Event,
        received_at: float | None = None,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        """Queue for the next group commit without waiting; failures are counted, and
        ``on_failure`` is called (on the store's thread) for an event that was not stored."""
        try:
            fut = self.store.submit(event)
        except StoreClosed as exc:
            self._failed(event, exc, on_failure)
            return
        fut.add_done_callback(lambda f: self._done(f, event, received_at, on_failure))

    def record(self, events: Iterable[Event]) -> bool:
        """Commit every event; True only if all are on disk (the source may then be ACKed).

        Any failure is "not stored", not only the expected ones (full, closed, not committed
        in time and so taken back): the writer hands on a raw SQLite error (an I/O error) as it
        is, and the source must then get its NAK and retry rather than lose the event with
        our thread.
        """
        try:
            receipts = self.store.submit_all(list(events))
            self.store.wait(receipts, self.record_timeout_s)
        except Exception as exc:
            self._failed(None, exc)
            return False
        self.stats.stored(len(receipts))
        return True

    def _done(
        self,
        fut: Receipt[StoredEvent],
        event: Event,
        received_at: float | None,
        on_failure: Callable[[], object] | None,
    ) -> None:
        exc = fut.exception()
        if exc is not None:
            self._failed(event, exc, on_failure)
            return
        alarm_ms = None
        if received_at is not None and event.type.lane is Lane.P0:
            alarm_ms = (self._now() - received_at) * 1000
        self.stats.stored(1, alarm_ms)

    def _failed(
        self,
        event: Event | None,
        exc: BaseException,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        self.stats.store_error()
        if on_failure is not None:
            on_failure()
        _flood.warning(
            f"{self.port}:store",
            "port %s: could not store %s: %s",
            self.port,
            event.type.name if event else "event",
            exc,
        )
