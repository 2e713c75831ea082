"""A disk filled to the last byte by another program, on a real (small) file system."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.events import Event
from gateway.store import StorageFull, Store
from tests.store.conftest import MEAL, SEEN, SOS, StoreFactory

DISK_MB = 8


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Another program takes every free byte."""
    filler = disk / "runaway.log"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def telemetry_until_refused(store: Store) -> int:
    for n in range(100_000):
        try:
            store.record(Event(SEEN, {"n": n, "pad": "x" * 400}))
        except StorageFull:
            return n
    raise AssertionError("a full disk took 100,000 events")


def test_on_a_disk_another_program_filled_alarms_and_records_are_still_written(
    small_disk: Path, make_store: StoreFactory
) -> None:
    store = make_store(small_disk / "g.db", min_free_disk_mb=1, reserve_mb=2)
    assert store.health()["disk_reserve"] == "held"
    for n in range(50):
        store.record(Event(SEEN, {"n": n}))
    filler = fill(small_disk)
    telemetry_until_refused(store)

    alarm = store.record(Event(SOS, {"device": "A1"}))
    meal = store.record(Event(MEAL, {"elder": "E1"}))
    assert alarm.seq < meal.seq
    assert store.health()["disk_reserve"] == "released"
    with pytest.raises(StorageFull, match="telemetry refused"):
        store.record(Event(SEEN, {"n": "while full"}))
    assert store.counters["refused_p2"] >= 1

    filler.unlink()  # someone deals with the runaway program
    store.housekeep()
    assert store.health()["disk_reserve"] == "held"
    store.record(Event(SEEN, {"n": "room again"}))
    store.stop()
    reopened = make_store(small_disk / "g.db", min_free_disk_mb=1, reserve_mb=2)
    assert reopened.previous_stop_clean
    assert reopened.usage[SOS.lane].count == 1 and reopened.usage[MEAL.lane].count == 1


def test_a_reserve_the_disk_cannot_spare_waits_and_takes_nothing_from_telemetry(
    small_disk: Path, make_store: StoreFactory
) -> None:
    store = make_store(small_disk / "g.db", min_free_disk_mb=1, reserve_mb=DISK_MB)
    assert store.health()["disk_reserve"] == "waiting"
    assert not (small_disk / "g.db.reserve").exists()
    store.record(Event(SEEN, {"n": 1}))
