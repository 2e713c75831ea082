"""Services, their start/stop order, and systemd notification.

Every long-running part is a Service. The supervisor starts them in order and stops them in
reverse, so the store (first in) is the last out and sees every write that others flush on stop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

from gateway.logs import RateLimitedLog

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_MIN_S = 30.0  # a service that did not start is tried again after this, then twice as
RETRY_MAX_S = 900.0  # long each time up to this: a missing model costs a hash check or two


class StartupError(Exception):
    """A service cannot start because of its configuration or environment; the message says
    what to fix. The gateway exits non-zero instead of running half-configured."""


class Service(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def health(self) -> dict[str, Any]: ...

    def healthy(self) -> bool: ...


@dataclass
class _Failed:
    """A non-essential service that did not start, and when it is tried again."""

    service: Service
    error: str
    attempts: int
    retry_at: float


class Supervisor:
    """Starts services in order and stops them in reverse.

    A service that sets ``essential = False`` (the counter camera, a DC-09 receiver) may fail
    to start without taking the rest down: alarms must keep flowing when a model file is
    damaged or another program holds a receiver's port. Its failure is logged and shown in
    health, and it is tried again with a growing delay (``retry_failed``, at most its
    ``retry_max_s``): once the installer has fetched the models or freed the port, it comes
    back without a restart. Any other start failure stops what was started and raises.
    """

    def __init__(self, services: Sequence[Service], clock: Callable[[], float] = time.monotonic):
        self.services = list(services)
        self._clock = clock
        self._started: list[Service] = []
        self._failed: dict[str, _Failed] = {}
        self._lock = threading.Lock()  # health is read from the sync's thread

    def start_all(self) -> None:
        for service in self.services:
            log.info("starting %s", service.name)
            try:
                service.start()
            except StartupError as exc:
                if getattr(service, "essential", True):
                    self.stop_all()
                    raise
                log.error("%s not started, the rest runs on: %s", service.name, exc)
                with self._lock:
                    self._failed[service.name] = _Failed(
                        service, str(exc), 1, self._clock() + RETRY_MIN_S
                    )
                continue
            except BaseException:
                self.stop_all()
                raise
            with self._lock:
                self._started.append(service)

    def retry_failed(self) -> list[str]:
        """Start again the services whose delay is over; the names of those that started. A
        failure with the same error as before is not logged again."""
        started = []
        for name, failed in list(self._failed.items()):
            if self._clock() < failed.retry_at:
                continue
            try:
                failed.service.start()
            except Exception as exc:  # whatever it is, the running gateway must not go down
                if str(exc) != failed.error:
                    log.error("%s still not started: %s", name, exc)
                longest = getattr(failed.service, "retry_max_s", RETRY_MAX_S)
                delay = min(longest, RETRY_MIN_S * 2**failed.attempts)
                with self._lock:
                    self._failed[name] = replace(
                        failed,
                        error=str(exc),
                        attempts=failed.attempts + 1,
                        retry_at=self._clock() + delay,
                    )
                continue
            log.info("%s started after %d failed attempts", name, failed.attempts)
            with self._lock:
                del self._failed[name]
                self._started.append(failed.service)
            started.append(name)
        return started

    def stop_all(self) -> None:
        """Services that may be held up by a device (a serial server's connect, up to 5 s) are
        told first, all at once: stopped one after another, their waits would add up past the
        service manager's stop timeout. Each is still stopped, and joined, in reverse order."""
        with self._lock:
            started = list(self._started)
        for service in reversed(started):
            begin_stop = getattr(service, "begin_stop", None)
            if begin_stop is not None:
                begin_stop()
        while self._started:
            with self._lock:
                service = self._started.pop()
            log.info("stopping %s", service.name)
            try:
                service.stop()
            except Exception:
                log.exception("error while stopping %s", service.name)

    def healthy(self) -> bool:
        return not self.unhealthy()

    def unhealthy(self) -> list[str]:
        with self._lock:
            started = list(self._started)
        return [s.name for s in started if not s.healthy()]

    def health(self) -> dict[str, Any]:
        with self._lock:
            failed = {
                name: {"state": "not started", "error": f.error, "attempts": f.attempts}
                for name, f in self._failed.items()
            }
            started = list(self._started)
        return {**failed, **{s.name: s.health() for s in started}}


def _noop() -> None:
    return None


_notify_log = RateLimitedLog(log, 3600.0)


def sd_notify(message: str) -> bool:
    """Speak the sd_notify protocol without libsystemd (a datagram to $NOTIFY_SOCKET). A
    socket that cannot be reached is logged once an hour, not at every watchdog tick."""
    named = os.environ.get("NOTIFY_SOCKET")
    if not named:
        return False
    address = "\0" + named[1:] if named.startswith("@") else named
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        _notify_log.warning(named, "sd_notify failed: %s", exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half of WATCHDOG_USEC, as systemd recommends, when the unit asks for a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.5)
    except ValueError:
        return None


_named: dict[int, str] = {}


def name_native_threads() -> None:
    """Give each thread's kernel name (``top -H``, ``ps -L``, /proc/PID/task/TID/comm) its
    Python name, cut to the kernel's 15 bytes: otherwise every thread is called ``gateway``
    and a thread that burns CPU or wakes too often cannot be told from the others. Cheap
    enough for the main loop's tick: only threads not named before are written. The main
    thread keeps its name: it is the process's own (``gateway``), which ``ss -p``, ``fuser``,
    ``pgrep`` and ``top`` show for the whole process."""
    main = threading.main_thread()
    alive = {
        t.native_id: t.name
        for t in threading.enumerate()
        if t.native_id is not None and t is not main
    }
    for tid in [tid for tid in _named if tid not in alive]:
        del _named[tid]
    for tid, name in alive.items():
        if _named.get(tid) == name:
            continue
        _named[tid] = name
        try:
            with open(f"/proc/self/task/{tid}/comm", "wb") as comm:
                comm.write(name.encode("utf-8", "replace")[:15])
        except OSError:  # not Linux, or the thread ended meanwhile
            pass


class Worker:
    """A named, non-daemon thread with an explicit stop.

    Non-daemon so a thread that writes SQLite is never cut off mid-write at interpreter exit.
    ``stop()`` sets the stop event, calls ``wake`` (to unblock a queue or event the loop waits
    on) and joins.
    """

    def __init__(
        self, name: str, loop: Callable[[threading.Event], None], wake: Callable[[], None] = _noop
    ) -> None:
        self.name = name
        self._loop = loop
        self._wake = wake
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(target=self._loop, args=(self.stopping,), name=self.name)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class _Abandonable(Generic[T]):
    """A blocking open (a name lookup, a TCP connect, a TLS handshake) on a daemon thread of
    its own. Nothing can wake such a call, and a stop must not wait for it past the service
    manager's stop timeout: ``abandon`` lets the caller go at once, and the call's own thread
    hands what it opens after that to ``discard`` (None if the call failed), to be closed."""

    def __init__(
        self, name: str, call: Callable[[], T], discard: Callable[[T | None], None]
    ) -> None:
        self._name = name
        self._call = call
        self._discard = discard
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._finished = False
        self._abandoned = False
        self._result: T | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name=self._name, daemon=True).start()

    def _run(self) -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = self._call()
        except BaseException as exc:  # handed to the caller, who decides
            error = exc
        with self._lock:
            self._finished = True
            self._result, self._error = result, error
            abandoned = self._abandoned
        if abandoned:
            try:
                self._discard(result)
            except Exception:
                log.exception("%s: closing what opened after the stop failed", self._name)
        self._done.set()

    def abandon(self) -> None:
        with self._lock:
            if not self._finished:
                self._abandoned = True
        self._done.set()

    def wait(self) -> tuple[bool, T | None]:
        """(True, what the call returned) once it returned; (False, None) if abandoned first.
        Raises what the call raised."""
        self._done.wait()
        with self._lock:
            if self._abandoned:
                return False, None
            if self._error is not None:
                raise self._error
            return True, self._result


class Opener:
    """The one blocking open under way for a link, on a thread of its own (``_Abandonable``)
    that the link's stop lets go."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._lock = threading.Lock()
        self._current: _Abandonable[Any] | None = None

    def open(
        self, name: str, call: Callable[[], T], discard: Callable[[T | None], None]
    ) -> tuple[bool, T | None]:
        """(True, what ``call`` returned), or (False, None) when the link was stopped before
        or meanwhile; then ``discard`` gets what the call opens late. Raises what it raised."""
        opening = _Abandonable(name, call, discard)
        with self._lock:
            if self._stopping.is_set():
                return False, None
            self._current = opening
        opening.start()
        try:
            return opening.wait()
        finally:
            with self._lock:
                self._current = None

    def abandon(self) -> None:
        """Once the stopping event is set: the open under way, if any, is let go."""
        with self._lock:
            opening = self._current
        if opening is not None:
            opening.abandon()


class Periodic(Worker):
    """Runs ``task`` every ``interval_s`` until stopped.

    A failing task is logged and retried next tick: one bad tick must not end the loop.
    """

    def __init__(self, name: str, interval_s: float, task: Callable[[], object]) -> None:
        super().__init__(name, self._run)
        self.interval_s = interval_s
        self._task = task
        self.failures = 0

    def _run(self, stopping: threading.Event) -> None:
        """A task failing every tick (a disk that went read-only) logs its traceback once,
        then a line at the 2nd, 4th, 8th... failure in a row: the journal stays readable."""
        in_a_row = 0
        while not stopping.wait(self.interval_s):
            try:
                self._task()
            except Exception as exc:
                self.failures += 1
                in_a_row += 1
                if in_a_row == 1:
                    log.exception("%s: periodic task failed", self.name)
                elif in_a_row & (in_a_row - 1) == 0:
                    log.error("%s: failed %d times in a row: %s", self.name, in_a_row, exc)
                continue
            if in_a_row:
                log.info("%s: works again after %d failures", self.name, in_a_row)
            in_a_row = 0
