"""The decisions a running counter made about elders erased since its last gallery reload,
taken out of the journal on a thread of their own, with the audit frames it kept of them, and
tried again until that succeeds.

The erasure itself read the journal before them (they were made while the counter still knew
her), so nobody else ever takes them out: a pass that fails (the journal locked by another
program past the busy timeout, an I/O error) would leave them for the whole retention period.
A failed pass is counted and tried again at a later reload tick, waiting twice as long after
each failure up to ``MAX_RETRY_S`` (each pass reads and opens every decision), never on the
counter's thread. Each elder is erased up to the running time of the reload that dropped her,
so a pass tried much later spares the decisions of an elder enrolled again meanwhile.

Those still to erase are written to ``FILE`` (ids and running times only, private like the
data directory) as they come, read back at the next start: a restart before their pass
succeeded does not forget them. The file is removed once they are all erased.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

from gateway.logs import RateLimitedLog
from gateway.private import remove_leftovers, replace_private
from gateway.store.db import StoreError
from gateway.store.erasure import Journal, erase_events
from gateway.vision.events import FACE_DECISION, erasing
from gateway.vision.retention import ExpiredFrames

log = logging.getLogger(__name__)

FILE = "face-erasures.json"
MAX_RETRY_S = 300.0
MAX_ELDERS = 4096  # far beyond a site's erasures between two successful passes


def retry_after_s(failures: int, first_s: float) -> float:
    """Seconds to wait after the ``failures``-th failure in a row."""
    return min(MAX_RETRY_S, first_s * 2.0 ** min(failures - 1, 30))


class LateErasures:
    """Used by the counter's pipeline thread only; each pass runs on a thread of its own."""

    def __init__(
        self,
        journal: Journal,
        frames: ExpiredFrames,
        path: Path,
        first_retry_s: float,
        now: Callable[[], float],
    ) -> None:
        self.journal = journal
        self.frames = frames
        self.path = path
        self.first_retry_s = first_retry_s
        self._now = now
        self.errors = 0
        self._pending: dict[str, int] = _read(path)  # elder -> running time (ms) of her reload
        remove_leftovers(path)
        self._failures = 0
        self._next_try = now()
        self._pass: threading.Thread | None = None
        self._passed: dict[str, int] = {}
        self._failed = False
        self._ratelimited = RateLimitedLog(log, 60.0)

    @property
    def pending(self) -> int:
        """Elders whose decisions are still to be taken out (those of a pass under way too)."""
        return len(self._pending)

    def add(self, elders: list[str], until_ms: int) -> bool:
        """True once they are in the file too: then the gallery's list of erasures may let
        them go, a restart before their pass has them all the same."""
        left = 0
        for elder in elders:
            if elder in self._pending or len(self._pending) < MAX_ELDERS:
                self._pending[elder] = until_ms
            else:
                left += 1
        if left:  # counted, not named: they have just withdrawn their consent
            self.errors += left
            log.error(
                "face stage: decisions of %d erased elders left in the journal (more than %d "
                "erasures waiting at once)",
                left,
                MAX_ELDERS,
            )
        self._next_try = self._now()  # a new erasure is not held back by an old failure
        return self._save()

    def tick(self) -> None:
        """At each reload tick: take in a finished pass, start the next one when due."""
        if self._pass is not None:
            if self._pass.is_alive():
                return
            self._finished()
        if self._pending and self._now() >= self._next_try:
            self._passed = dict(self._pending)
            self._failed = True  # until the pass has done them all
            self._pass = threading.Thread(target=self._run, name="face-erasure")
            self._pass.start()

    def stop(self) -> None:
        if self._pass is not None:
            self._pass.join()
            self._finished()

    def _run(self) -> None:
        """One pass over the journal per reload they were dropped at (usually one)."""
        by_reload: dict[int, set[str]] = {}
        for elder, until_ms in self._passed.items():
            by_reload.setdefault(until_ms, set()).add(elder)
        try:
            for until_ms, elders in sorted(by_reload.items()):
                rule = partial(erasing, elders=frozenset(elders))
                erase_events(self.journal, FACE_DECISION.name, rule, until_ms=until_ms)
                # the erasure deleted her frames before these decisions were made
                for elder in sorted(elders):
                    self.frames.erase_elder(elder, until_ms)
        except (StoreError, sqlite3.Error, OSError) as exc:
            self._ratelimited.warning(
                "erasure", "face stage: decisions of erased elders left, to retry: %s", exc
            )
        except Exception as exc:  # a fault of ours: never taken for a pass that succeeded
            self._ratelimited.error(
                "erasure-fault",
                "face stage: decisions of erased elders left, to retry: %s",
                type(exc).__name__,  # its text may quote a decision
            )
        else:
            self._failed = False

    def _finished(self) -> None:
        self._pass = None
        if self._failed:
            self.errors += 1
            self._failures += 1
            self._next_try = self._now() + retry_after_s(self._failures, self.first_retry_s)
        else:
            self._failures = 0
            for elder, until_ms in self._passed.items():
                if self._pending.get(elder) == until_ms:  # not dropped again meanwhile
                    del self._pending[elder]
        self._save()

    def _save(self) -> bool:
        """Written at each addition and after every pass: a failure may come from the card,
        and the file is then tried again after the next pass. A copy a crash left while
        writing it names elders who withdrew their consent: it goes at start and here."""
        try:
            if self._pending:
                replace_private(self.path, json.dumps(self._pending).encode())
            else:
                self.path.unlink(missing_ok=True)
        except OSError as exc:
            self._ratelimited.warning("file", "face stage: %s not written: %s", self.path, exc)
            return False
        finally:
            remove_leftovers(self.path)
        return True


def _read(path: Path) -> dict[str, int]:
    """What a failed pass left for this start; a damaged file is logged and gives nothing."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("face stage: %s not read: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(e): t
        for e, t in list(data.items())[:MAX_ELDERS]
        if isinstance(t, int) and not isinstance(t, bool)
    }
