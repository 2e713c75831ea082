"""The saved cooldown: read back whatever state the file is in, never a reason to stop."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import private
from gateway.vision import cooldown


def running_times(path: Path) -> dict[str, int]:
    """Elder -> running time last seen, as the file holds it."""
    entries: dict[str, int] = json.loads(path.read_text())
    return entries


def test_saved_and_read_back_with_ages(tmp_path: Path) -> None:
    path = tmp_path / cooldown.FILE
    cooldown.save(path, {"E1": 95_000, "E2": 10_000})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cooldown.load(path, 100_000, 60_000) == [("E1", 5.0)]  # E2: 90 s ago, over
    assert [p.name for p in tmp_path.iterdir()] == [cooldown.FILE]  # no temporary left


def test_a_time_ahead_of_the_running_time_counts_as_just_now(tmp_path: Path) -> None:
    """After a crash the store's running time resumes from its last commit, which may be
    earlier than the last save: she was seen at the very end, not never."""
    path = tmp_path / cooldown.FILE
    cooldown.save(path, {"E1": 103_000})
    assert cooldown.load(path, 100_000, 60_000) == [("E1", 0.0)]


def test_a_damaged_file_is_read_as_empty_and_erasure_still_works(tmp_path: Path) -> None:
    path = tmp_path / cooldown.FILE
    for text in ("[" * 100_000, "{not json", '["E1"]', json.dumps({"E1": "soon", "E2": True})):
        path.write_text(text)
        assert cooldown.load(path, 100_000, 60_000) == []
        cooldown.forget(path, "E1")  # an erasure goes through whatever the file held
        assert running_times(path) == {}
    path.write_text(" " * (cooldown.MAX_BYTES + 1))
    assert cooldown.load(path, 100_000, 60_000) == []


def test_an_erased_elder_leaves_the_file_and_the_others_stay(tmp_path: Path) -> None:
    path = tmp_path / cooldown.FILE
    cooldown.forget(path, "E1")  # no file: nothing to do, nothing made
    assert not path.exists()
    cooldown.save(path, {"E1": 1_000, "E2": 2_000})
    cooldown.forget(path, "E1")
    assert running_times(path) == {"E2": 2_000}


def test_copies_a_crash_left_half_way_are_removed_at_start(tmp_path: Path) -> None:
    """They name elders, and nothing else would ever remove them; a copy another writer is
    making just now is left alone."""
    path = tmp_path / cooldown.FILE
    cooldown.save(path, {"E1": 95_000})
    stale, fresh = tmp_path / f".{cooldown.FILE}.812.1401", tmp_path / f".{cooldown.FILE}.90.7"
    for copy in (stale, fresh):
        copy.write_text('{"E2": 94000}')
    old = time.time() - private.LEFTOVER_AGE_S - 5
    os.utime(stale, (old, old))
    assert cooldown.load(path, 100_000, 60_000) == [("E1", 5.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cooldown.FILE, fresh.name])


def _left_by_a_crash(folder: Path, name: str, text: str) -> Path:
    """A copy written and never renamed, a minute and more ago."""
    copy = folder / f".{cooldown.FILE}.{name}"
    copy.write_text(text)
    old = time.time() - private.LEFTOVER_AGE_S - 5
    os.utime(copy, (old, old))
    return copy


def test_an_erasure_takes_the_copies_a_crash_left_too(tmp_path: Path) -> None:
    """A copy left by a power cut just before a restart was too young to go at that start;
    naming the elder, it stayed after her erasure until the gateway next started."""
    path = tmp_path / cooldown.FILE
    copy = _left_by_a_crash(tmp_path, "812.1401", '{"E1": 94000, "E2": 93000}')
    cooldown.forget(path, "E1")  # no file beside it
    assert not copy.exists()
    cooldown.save(path, {"E1": 1_000, "E2": 2_000})
    copy = _left_by_a_crash(tmp_path, "813.1402", '{"E1": 94000}')
    cooldown.forget(path, "E1")
    assert [p.name for p in tmp_path.iterdir()] == [cooldown.FILE]
    assert running_times(path) == {"E2": 2_000}


def test_an_erasure_takes_the_copies_an_earlier_version_left_too(tmp_path: Path) -> None:
    """Gateways of 2026-12-05 and early 12-06 wrote the file through
    ``face-cooldown.json.tmp``, then through a ``tempfile.mkstemp`` copy beside it; a crash
    between writing and renaming left either, naming elders, on a site since upgraded."""
    path = tmp_path / cooldown.FILE
    cooldown.save(path, {"E1": 1_000, "E2": 2_000})
    fixed = tmp_path / f"{cooldown.FILE}.tmp"
    fd, random = tempfile.mkstemp(prefix=cooldown.FILE, dir=tmp_path)
    os.close(fd)
    old = time.time() - private.LEFTOVER_AGE_S - 5
    for copy in (fixed, Path(random)):
        copy.write_text('{"E1": 94000, "E2": 93000}')
        os.utime(copy, (old, old))
    cooldown.forget(path, "E1")
    assert [p.name for p in tmp_path.iterdir()] == [cooldown.FILE]
    assert running_times(path) == {"E2": 2_000}


def test_a_copy_left_just_before_a_restart_goes_at_a_later_save(tmp_path: Path) -> None:
    """Too young to go at the start that followed the crash, it goes once it is old, at the
    running counter's next save, not at the next start weeks later."""
    path = tmp_path / cooldown.FILE
    copy = _left_by_a_crash(tmp_path, "812.1401", '{"E2": 94000}')
    cooldown.save(path, {"E1": 95_000})
    assert [p.name for p in tmp_path.iterdir()] == [cooldown.FILE]
    assert not copy.exists()


def test_a_copy_left_before_the_clock_was_set_back_is_removed_too(tmp_path: Path) -> None:
    """A crash half way, then the clock set back (a power cut: the Pi without RTC restarts at
    its last saved time; or NTP stepping back a clock that ran ahead): the copy, elder ids in
    it, looked newer than now and stayed, out of reach of an erasure, until the clock caught
    up with it."""
    path = tmp_path / cooldown.FILE
    cooldown.save(path, {"E1": 95_000})
    stale = tmp_path / f".{cooldown.FILE}.812.1401"
    stale.write_text('{"E2": 94000}')
    ahead = time.time() + 86_400
    os.utime(stale, (ahead, ahead))
    assert cooldown.load(path, 100_000, 60_000) == [("E1", 5.0)]
    assert [p.name for p in tmp_path.iterdir()] == [cooldown.FILE]


def test_an_erasure_leaves_a_file_the_card_cannot_read_as_it_is_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewritten without her, it would be rewritten without everyone else too: each of them
    could then be settled again after a restart. Her id is still in it: the erasure fails."""
    path = tmp_path / cooldown.FILE
    cooldown.save(path, {"E1": 1_000, "E2": 2_000})
    real_read = Path.read_text

    def failing_read(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == path:
            raise OSError(errno.EIO, "Input/output error")
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", failing_read)
    with pytest.raises(OSError, match="Input/output error"):
        cooldown.forget(path, "E1")
    assert cooldown.load(path, 2_000, 60_000) == []  # unreadable: logged, the counter goes on
    monkeypatch.undo()
    assert running_times(path) == {"E1": 1_000, "E2": 2_000}


def test_a_save_made_while_an_erasure_rewrites_the_file_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erasure (the downlink's thread) has read the file to write it again without E1 when
    the counter (its own thread) saves E3, just accepted: E3 stays in the file, E1 does not."""
    path = tmp_path / cooldown.FILE
    cooldown.save(path, {"E1": 1_000, "E2": 2_000})
    real_read = cooldown._read
    counter = threading.Thread(target=cooldown.save, args=(path, {"E2": 2_000, "E3": 3_000}))

    def read_as_the_counter_saves(read: Path) -> dict[str, object] | None:
        data = real_read(read)
        counter.start()
        counter.join(timeout=0.5)  # its save, between the erasure's read and its write
        return data

    monkeypatch.setattr(cooldown, "_read", read_as_the_counter_saves)
    cooldown.forget(path, "E1")
    counter.join()
    assert running_times(path) == {"E2": 2_000, "E3": 3_000}


def test_time_switched_off_counts_for_those_seen_before_this_session(tmp_path: Path) -> None:
    """Running time stands still while the gateway is off: an elder seen at 17:30 was still
    in cooldown (12 h) at the next day's lunch after a night switched off. The time off that
    synchronised clocks prove is added, but only to what was seen before this session: a
    face stage started again within it adds nothing."""
    path = tmp_path / cooldown.FILE
    cooldown.save(path, {"E1": 95_000, "E2": 99_000})
    twelve_hours, night = 12 * 3_600_000, 15 * 3_600_000
    assert cooldown.load(path, 100_000, twelve_hours) == [("E1", 5.0), ("E2", 1.0)]
    assert cooldown.load(path, 100_000, twelve_hours, off_ms=night, off_before_ms=98_000) == [
        ("E2", 1.0)
    ]
    assert cooldown.load(path, 100_000, twelve_hours, off_ms=night, off_before_ms=90_000) == [
        ("E1", 5.0),
        ("E2", 1.0),
    ]
