"""The saved cooldown: read back whatever state the file is in, never a reason to stop."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from gateway.vision import cooldown


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
        assert json.loads(path.read_text()) == {}
    path.write_text(" " * (cooldown.MAX_BYTES + 1))
    assert cooldown.load(path, 100_000, 60_000) == []


def test_an_erased_elder_leaves_the_file_and_the_others_stay(tmp_path: Path) -> None:
    path = tmp_path / cooldown.FILE
    cooldown.forget(path, "E1")  # no file: nothing to do, nothing made
    assert not path.exists()
    cooldown.save(path, {"E1": 1_000, "E2": 2_000})
    cooldown.forget(path, "E1")
    assert json.loads(path.read_text()) == {"E2": 2_000}
