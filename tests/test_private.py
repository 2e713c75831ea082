"""Private files replaced whole: what a power cut or a full disk leaves behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.private import ExposedDirectory, private_dir, replace_private
from tests.support.disk import fill


def test_the_new_content_and_then_its_name_reach_the_disk_before_the_call_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a power cut the file must hold what was last written: the data is synced before
    the rename, the directory (the new name) after it."""
    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "face-cooldown.json"
    path.write_bytes(b"old")
    replace_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert synced == [("file", path.stat().st_ino), ("dir", tmp_path.stat().st_ino)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_full_disk_leaves_the_old_file_and_nothing_beside_it(small_disk: Path) -> None:
    path = small_disk / "face-cooldown.json"
    path.write_bytes(b"old")
    filler = fill(small_disk)
    with pytest.raises(OSError):
        replace_private(path, b"x" * 65536)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in small_disk.iterdir()) == sorted([path.name, filler.name])


@pytest.mark.parametrize(
    ("uid", "advice"), [(65534, "sudo -u nobody"), (54321, "sudo -u '#54321'")]
)
def test_root_is_told_how_to_run_as_the_user_a_data_directory_belongs_to(
    tmp_path: Path, uid: int, advice: str
) -> None:
    """A uid without a name (a container's volume): sudo takes the bare number only as
    '#uid', so "sudo -u 54321" would have failed with "unknown user"."""
    if os.geteuid() != 0:
        pytest.skip("only root can run as root")
    data = tmp_path / "var"
    data.mkdir(mode=0o700)
    os.chown(data, uid, uid)
    with pytest.raises(ExposedDirectory) as err:
        private_dir(data)
    assert f"not root: run this as that user ({advice} ...)" in str(err.value)
