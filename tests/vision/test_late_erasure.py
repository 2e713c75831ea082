"""The decisions a counter made about elders erased since its last reload leave the journal,
even when the first pass fails or the gateway restarts before a retry succeeded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import private
from gateway.clock import ClockSync
from gateway.config import StoreSection
from gateway.events import Event
from gateway.keys import create_key
from gateway.store import Store
from gateway.store.erasure import Journal
from gateway.vision.events import FACE_DECISION
from gateway.vision.late_erasure import FILE, MAX_RETRY_S, LateErasures, retry_after_s
from gateway.vision.retention import ExpiredFrames, header_for
from tests.support.clock import ManualClock


class Seconds:
    """The pass schedule's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Iterator[Store]:
    s = Store(StoreSection(), tmp_path / "gateway.db", clock, ClockSync("never", 60))
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _accepted(store: Store, elder: str) -> int:
    data = {"outcome": "accepted", "elder_id": elder, "candidates": [], "confusable_with": []}
    return store.record(Event(FACE_DECISION, data)).seq


def _marked(db: Path) -> set[int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {int(s) for (s,) in conn.execute("SELECT seq FROM outbox WHERE erased")}


def test_the_wait_between_tries_doubles_up_to_its_ceiling() -> None:
    assert [retry_after_s(n, 5.0) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert retry_after_s(7, 5.0) == MAX_RETRY_S == retry_after_s(10_000, 5.0)


def test_a_failed_pass_is_counted_and_tried_again_once_its_wait_is_over(
    store: Store, tmp_path: Path
) -> None:
    """The journal's key file is not readable at the first pass (another key in its place
    until it is restored): counted, kept in the file for a restart, not tried again before
    the wait, then taken out."""
    hers = _accepted(store, "E7")
    theirs = _accepted(store, "E8")
    key = tmp_path / "journal.key"
    create_key(key)
    now = Seconds()
    frames = ExpiredFrames(tmp_path / "audit", 7.0)
    late = LateErasures(Journal(store.path, key), frames, tmp_path / FILE, 5.0, now)
    late.add(["E7"], store.steady_ms())
    late.tick()
    late.stop()  # waits for the pass
    assert late.errors == 1 and late.pending == 1
    assert json.loads((tmp_path / FILE).read_text()) == {"E7": store.steady_ms()}
    shutil.copyfile(store.key_path, key)
    late.tick()
    late.stop()
    assert _marked(store.path) == set()  # not before its wait is over
    now.now += 5.0
    late.tick()
    late.stop()
    assert _marked(store.path) == {hers} and theirs not in _marked(store.path)
    assert late.errors == 1 and late.pending == 0
    assert not (tmp_path / FILE).exists()


def _frame(folder: Path, seq: int, kept_ms: int, elder: str) -> Path:
    """A kept decision frame as the erasure sees it: only its header is read."""
    folder.mkdir(exist_ok=True)
    path = folder / f"decision-{seq}.frame"
    path.write_bytes(header_for(kept_ms, [elder]) + b"sealed picture")
    return path


def test_a_restart_takes_out_what_a_failed_pass_left_and_spares_her_decisions_since(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    """The file left by the run before: her decisions up to the reload that dropped her go,
    with their audit frames; one made after she was enrolled again stays, its frame too, and
    so does another elder's."""
    audit = tmp_path / "audit"
    before = _accepted(store, "E7")
    before_frame = _frame(audit, before, store.steady_ms(), "E7")
    (tmp_path / FILE).write_text(json.dumps({"E7": store.steady_ms()}))
    clock.advance(1000)
    again = _accepted(store, "E7")
    again_frame = _frame(audit, again, store.steady_ms(), "E7")
    theirs = _accepted(store, "E8")
    theirs_frame = _frame(audit, theirs, store.steady_ms(), "E8")
    late = LateErasures(
        Journal(store.path, store.key_path),
        ExpiredFrames(audit, 7.0),
        tmp_path / FILE,
        5.0,
        Seconds(),
    )
    assert late.pending == 1
    late.tick()
    late.stop()
    assert _marked(store.path) == {before}
    assert again not in _marked(store.path) and theirs not in _marked(store.path)
    assert not before_frame.exists() and again_frame.exists() and theirs_frame.exists()
    assert late.errors == 0 and not (tmp_path / FILE).exists()


def test_a_pass_that_meets_a_fault_of_ours_is_not_taken_for_done(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A decision the rule cannot read (a candidate that is not an object) stops the pass:
    she stays to do, kept in the file and counted, and the log names the fault, not the
    decision."""
    _accepted(store, "E7")
    odd = {"outcome": "uncertain", "elder_id": None, "candidates": ["E7"], "confusable_with": []}
    store.record(Event(FACE_DECISION, odd))
    late = LateErasures(
        Journal(store.path, store.key_path),
        ExpiredFrames(tmp_path / "audit", 7.0),
        tmp_path / FILE,
        5.0,
        Seconds(),
    )
    late.add(["E7"], store.steady_ms())
    late.tick()
    late.stop()
    assert late.errors == 1 and late.pending == 1
    assert json.loads((tmp_path / FILE).read_text()) == {"E7": store.steady_ms()}
    assert "AttributeError" in caplog.text and "'str' object" not in caplog.text


def test_a_copy_a_crash_left_while_writing_the_file_goes_at_start_and_after_a_pass(
    store: Store, tmp_path: Path
) -> None:
    """A power cut between writing the list aside and renaming it left a copy naming elders
    who withdrew their consent, which nothing removed. One written just now may be another
    writer's, at work, and is left alone."""

    def left_by_a_crash(name: str) -> Path:
        copy = tmp_path / f".{FILE}.{name}"
        copy.write_text('{"E7": 1000}')
        old = time.time() - private.LEFTOVER_AGE_S - 5
        os.utime(copy, (old, old))
        return copy

    first = left_by_a_crash("812.1401")
    journal = Journal(store.path, store.key_path)
    frames = ExpiredFrames(tmp_path / "audit", 7.0)
    late = LateErasures(journal, frames, tmp_path / FILE, 5.0, Seconds())
    assert not first.exists()
    second = left_by_a_crash("813.1402")
    fresh = tmp_path / f".{FILE}.90.7"
    fresh.write_text('{"E7": 1000}')
    late.add(["E7"], store.steady_ms())
    late.tick()
    late.stop()
    assert late.pending == 0 and not second.exists() and fresh.exists()


def test_a_copy_left_by_a_writer_that_died_goes_at_the_restart_however_young(
    store: Store, tmp_path: Path
) -> None:
    """systemd restarts the gateway within seconds of the crash: the copy was too young to go
    at that start and after the pass, and the file may not be written again for weeks."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    copy = tmp_path / f".{FILE}.{int(ended.stdout)}.1401"
    copy.write_text('{"E7": 1000}')
    ten_s_ago = time.time() - 10  # seconds before the restart, not a minute
    os.utime(copy, (ten_s_ago, ten_s_ago))
    mine = tmp_path / f".{FILE}.{os.getpid()}.7"  # this process's own: may be at work
    mine.write_text('{"E7": 1000}')
    journal = Journal(store.path, store.key_path)
    LateErasures(journal, ExpiredFrames(tmp_path / "audit", 7.0), tmp_path / FILE, 5.0, Seconds())
    assert not copy.exists() and mine.exists()
