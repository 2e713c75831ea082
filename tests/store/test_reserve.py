"""A disk filled to the last byte by another program, on a real (small) file system."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.events import Event, EventType
from gateway.store import StorageFull, Store, StoreError, read_stats
from gateway.store.reserve import MB, Reserve
from tests.store.conftest import MEAL, SEEN, SOS, StoreFactory
from tests.support.disk import DISK_MB, fill


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


def test_with_nothing_pending_alarms_and_records_are_written_from_the_reserve(
    small_disk: Path, make_store: StoreFactory
) -> None:
    """The usual case on a site that is online: everything delivered, no telemetry left to
    make way, and a floor above what the filled disk has left."""
    store = make_store(small_disk / "g.db", min_free_disk_mb=4, reserve_mb=2)
    assert store.health()["disk_reserve"] == "held"
    filler = fill(small_disk)

    alarm = store.record(Event(SOS, {"device": "A1"}))
    meal = store.record(Event(MEAL, {"elder": "E1"}))
    assert alarm.seq < meal.seq
    assert store.health()["disk_reserve"] == "released"
    with pytest.raises(StorageFull):
        store.record(Event(SEEN, {"n": "while full"}))
    assert store.counters.get("refused_p0", 0) == store.counters.get("refused_p1", 0) == 0

    filler.unlink()
    store.housekeep()
    assert store.health()["disk_reserve"] == "held"
    store.stop()
    reopened = make_store(small_disk / "g.db", min_free_disk_mb=4, reserve_mb=2)
    assert reopened.usage[SOS.lane].count == 1 and reopened.usage[MEAL.lane].count == 1


def test_a_reserve_the_disk_cannot_spare_waits_and_takes_nothing_from_telemetry(
    small_disk: Path, make_store: StoreFactory
) -> None:
    store = make_store(small_disk / "g.db", min_free_disk_mb=1, reserve_mb=DISK_MB)
    assert store.health()["disk_reserve"] == "waiting"
    assert not (small_disk / "g.db.reserve").exists()
    store.record(Event(SEEN, {"n": 1}))


@pytest.mark.parametrize("left_mb", [0, 1])
def test_a_reserve_file_holding_less_than_the_reserve_is_completed_not_reported_held(
    small_disk: Path, make_store: StoreFactory, left_mb: int
) -> None:
    """Cut short by a power cut while it was allocated, or left from a smaller `reserve_mb`."""
    reserve = small_disk / "g.db.reserve"
    fd = os.open(reserve, os.O_WRONLY | os.O_CREAT, 0o600)
    if left_mb:
        os.posix_fallocate(fd, 0, left_mb * MB)
    os.close(fd)

    store = make_store(small_disk / "g.db", min_free_disk_mb=1, reserve_mb=2)
    assert store.health()["disk_reserve"] == "held"
    assert reserve.stat().st_blocks * 512 >= 2 * MB
    for n in range(50):
        store.record(Event(SEEN, {"n": n}))
    fill(small_disk)
    telemetry_until_refused(store)
    store.record(Event(SOS, {"device": "A1"}))  # from the reserve, not refused
    assert store.health()["disk_reserve"] == "released"


def test_a_reserve_file_of_full_length_with_holes_is_completed_not_reported_held(
    small_disk: Path, make_store: StoreFactory
) -> None:
    """Its length says nothing of the blocks it holds: a sparse file of the reserve's size
    (extended, never allocated) would leave the next SOS no room on a full disk."""
    reserve = small_disk / "g.db.reserve"
    fd = os.open(reserve, os.O_WRONLY | os.O_CREAT, 0o600)
    os.ftruncate(fd, 2 * MB)
    os.close(fd)

    store = make_store(small_disk / "g.db", min_free_disk_mb=1, reserve_mb=2)
    assert store.health()["disk_reserve"] == "held"
    assert reserve.stat().st_blocks * 512 >= 2 * MB


def test_a_checkpoint_on_a_full_disk_leaves_the_alarms_their_half_of_the_reserve(
    small_disk: Path, make_store: StoreFactory
) -> None:
    """Records spent their half; the checkpoint that follows needs room to grow the database.
    Had it the alarms' half, the program filling the disk would take what it left, and with
    a reader keeping the WAL from starting over (`gateway outbox stats`), the SOS after it
    would find no room."""
    store = make_store(small_disk / "g.db", min_free_disk_mb=4, reserve_mb=2)
    fill(small_disk)
    with pytest.raises(StorageFull):
        for n in range(100_000):
            store.record(Event(MEAL, {"elder": f"E{n}", "pad": "x" * 400}))
    reader = sqlite3.connect(small_disk / "g.db")
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
        store._last_checkpoint = 0.0  # due now
        with contextlib.suppress(sqlite3.OperationalError):  # it waits for room
            store.checkpoint()
        fill(small_disk)  # the other program goes on writing
        for n in range(20):
            store.record(Event(SOS, {"device": f"A{n}"}))
    finally:
        reader.close()
    assert store.usage[SOS.lane].count == 20
    assert store.counters.get("refused_p0", 0) == 0


def test_a_stop_on_a_full_disk_leaves_the_alarms_half_of_the_reserve_to_the_next_start(
    small_disk: Path, make_store: StoreFactory
) -> None:
    """Records spent their half, then the gateway was stopped (an update, a restart): marking
    the stop clean must not take the alarms' half, which the next start, on a disk still
    full, needs to open the database and write the next SOS."""
    path = small_disk / "g.db"
    store = make_store(path, min_free_disk_mb=4, reserve_mb=2)
    fill(small_disk)
    with pytest.raises(StorageFull):
        for n in range(100_000):
            store.record(Event(MEAL, {"elder": f"E{n}", "pad": "x" * 400}))
    store.stop()
    assert (small_disk / "g.db.reserve").exists()

    store = make_store(path, min_free_disk_mb=4, reserve_mb=2)
    store.record(Event(SOS, {"device": "A1"}))
    assert store.usage[SOS.lane].count == 1


@pytest.mark.parametrize("spent_by", [[MEAL], [MEAL, SOS]], ids=["records", "records-then-alarms"])
def test_the_reserve_the_run_before_gave_up_still_admits_alarms_below_the_floor(
    small_disk: Path, make_store: StoreFactory, spent_by: list[EventType]
) -> None:
    """Records spent their half (or alarms then the rest), the gateway was restarted (a power
    cut), and the disk, below the floor, has room to open the database but not to complete the
    reserve: the reserve was taken for "waiting", as if there were none, and the next SOS
    refused, the station told NAK again and again, though the run before had written it."""
    path = small_disk / "g.db"
    store = make_store(path, min_free_disk_mb=4, reserve_mb=2)
    filler = fill(small_disk)
    for kind in spent_by:
        with pytest.raises(StorageFull):
            for n in range(100_000):
                store.record(Event(kind, {"n": n, "pad": "x" * 400}))
    alarms = store.usage[SOS.lane].count
    store.stop()
    os.truncate(filler, filler.stat().st_size - MB // 4)  # room to open, far below the floor

    store = make_store(path, min_free_disk_mb=4, reserve_mb=2)
    store.record(Event(SOS, {"device": "A1"}))
    assert store.usage[SOS.lane].count == alarms + 1
    with pytest.raises(StorageFull):
        store.record(Event(SEEN, {"n": "still below the floor"}))


def test_a_reserve_released_while_housekeeping_takes_it_back_stays_released(
    tmp_path: Path,
) -> None:
    """The disk fills while housekeeping finds the reserve held: health must say
    `released`, and telemetry stay refused, not `waiting` with alarms refused below the floor
    though the reserve gave them room."""
    reserve = Reserve(tmp_path / "g.db.reserve", MB)
    assert reserve.take(free_bytes=100 * MB, floor_bytes=0)
    looked, go = threading.Event(), threading.Event()
    allocated = reserve._allocated

    def look_then_wait() -> int:  # housekeeping has seen the file held, and is preempted
        held = allocated()
        if threading.current_thread().name == "housekeeping":
            looked.set()
            go.wait(10)
        return held

    reserve._allocated = look_then_wait  # type: ignore[method-assign]
    housekeeping = threading.Thread(
        target=reserve.take, args=(100 * MB, 0), name="housekeeping", daemon=True
    )
    housekeeping.start()
    assert looked.wait(10)
    writer = threading.Thread(target=reserve.release, name="writer", daemon=True)
    writer.start()
    writer.join(1.0)  # the disk-full write gives the reserve up (or waits for the take)
    go.set()
    housekeeping.join(10)
    writer.join(10)
    assert (tmp_path / "g.db.reserve").stat().st_blocks == 0  # given back to the disk
    assert reserve.state == "released"


@pytest.mark.parametrize("reserve_mb", [0, 1])
def test_a_reserve_lowered_in_the_config_gives_the_difference_back_to_the_disk(
    tmp_path: Path, make_store: StoreFactory, reserve_mb: int
) -> None:
    """Health must not say `off` (or a reserve of 1 MiB) while the file still holds 4 MiB."""
    make_store(tmp_path / "g.db", reserve_mb=4).stop()
    reserve = tmp_path / "g.db.reserve"
    assert reserve.stat().st_blocks * 512 >= 4 * MB
    store = make_store(tmp_path / "g.db", reserve_mb=reserve_mb)
    assert store.health()["disk_reserve"] == ("held" if reserve_mb else "off")
    held = reserve.stat().st_blocks * 512 if reserve.exists() else 0
    assert held == reserve_mb * MB


@pytest.mark.parametrize("other_mb", [0, 8])
def test_a_link_planted_in_place_of_the_reserve_leaves_the_file_it_names_as_it_was(
    tmp_path: Path, make_store: StoreFactory, other_mb: int
) -> None:
    """Whoever may write the data directory must not have the gateway (perhaps run as root)
    fill another file with zeros, or cut it short, through the reserve's name."""
    other = tmp_path / "elsewhere" / "passwd"
    other.parent.mkdir()
    content = b"root:x:0:0:root:/root:/bin/bash\n" + b"x" * (other_mb * MB)
    other.write_bytes(content)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "g.db.reserve").symlink_to(other)

    store = make_store(data / "g.db", reserve_mb=4)
    assert store.health()["disk_reserve"] == "waiting"
    assert other.read_bytes() == content
    store.record(Event(SOS, {"device": "A1"}))


# a gateway that records a meal and dies without stopping: no clean flag, its -wal and -shm left
KILLED = """
import os, sys
from pathlib import Path
from gateway.clock import ClockSync, SystemClock
from gateway.config import StoreSection
from gateway.events import Event, EventType, Lane
from gateway.store import Store
section = StoreSection.model_validate({"min_free_disk_mb": 1, "reserve_mb": int(sys.argv[2])})
store = Store(section, Path(sys.argv[1]), SystemClock(), ClockSync("never", 60))
store.start()
store.record(Event(EventType("meal.settled", Lane.P1), {"elder": "E1"}))
# a WAL that ends inside a block of the disk has room there for the next start's first commit:
# filled up to the block's end, so that the start needs room
wal = Path(sys.argv[1] + "-wal")
frame = int.from_bytes(wal.read_bytes()[8:12], "big") + 24
while -wal.stat().st_size % 4096 >= frame:
    store.record(Event(EventType("wristband.seen", Lane.P2), {"n": 0}))
os._exit(9)
"""


def meal_recorded_then(stop: str, path: Path, make_store: StoreFactory, reserve_mb: int) -> None:
    if stop == "stopped":
        store = make_store(path, min_free_disk_mb=1, reserve_mb=reserve_mb)
        store.record(Event(MEAL, {"elder": "E1"}))
        store.stop()
    else:
        root = Path(__file__).resolve().parents[2]
        args = [sys.executable, "-c", KILLED, str(path), str(reserve_mb)]
        assert subprocess.run(args, cwd=root, check=False).returncode == 9
        assert path.with_name(path.name + "-wal").exists()


@pytest.mark.parametrize("stop", ["stopped", "killed"])
def test_a_gateway_restarted_on_a_disk_another_program_filled_starts_from_the_reserve(
    small_disk: Path, make_store: StoreFactory, stop: str
) -> None:
    path = small_disk / "g.db"
    meal_recorded_then(stop, path, make_store, reserve_mb=2)
    assert (small_disk / "g.db.reserve").exists()
    fill(small_disk)

    store = make_store(path, min_free_disk_mb=1, reserve_mb=2)
    assert store.health()["disk_reserve"] == "released"
    # what gateway.started tells the platform: a crash or power cut only if there was one
    assert store.previous_stop_clean is (stop == "stopped")
    store.record(Event(SOS, {"device": "A1"}))
    assert store.usage[MEAL.lane].count == 1 and store.usage[SOS.lane].count == 1


@pytest.mark.parametrize("stop", ["stopped", "killed"])
def test_a_full_disk_without_a_reserve_is_named_at_start_not_taken_for_damage(
    small_disk: Path, make_store: StoreFactory, stop: str
) -> None:
    path = small_disk / "g.db"
    meal_recorded_then(stop, path, make_store, reserve_mb=0)
    filler = fill(small_disk)

    with pytest.raises(StoreError) as err:
        make_store(path, min_free_disk_mb=1, reserve_mb=0)
    message = str(err.value)
    assert f"the disk of {small_disk} is full" in message and "nothing in it is lost" in message
    assert "damaged" not in message and "move the file aside" not in message

    filler.unlink()
    store = make_store(path, min_free_disk_mb=1, reserve_mb=0)
    assert store.usage[MEAL.lane].count == 1


def test_records_written_from_the_reserve_leave_room_for_alarms(
    small_disk: Path, make_store: StoreFactory
) -> None:
    """A counter serving meals for hours on a disk another program filled: its records take
    their share of the reserve and are then refused, and an SOS after them is still written."""
    store = make_store(small_disk / "g.db", min_free_disk_mb=4, reserve_mb=2)
    fill(small_disk)
    meals = 0
    with pytest.raises(StorageFull):
        for meals in range(100_000):
            store.record(Event(MEAL, {"elder": f"E{meals}", "pad": "x" * 400}))
    assert meals > 10
    for n in range(100):  # the counter's next meals, or its retries
        with pytest.raises(StorageFull):
            store.record(Event(MEAL, {"elder": f"F{n}"}))
    for n in range(20):
        store.record(Event(SOS, {"device": f"A{n}"}))
    assert store.counters.get("refused_p0", 0) == 0
    assert store.usage[SOS.lane].count == 20


def test_telemetry_refused_on_a_full_disk_takes_no_pending_telemetry_with_it(
    small_disk: Path, make_store: StoreFactory
) -> None:
    """An outage's telemetry waits for the link while another program fills the disk: the
    sightings refused meanwhile are counted, and leave the pending ones to be sent."""
    store = make_store(small_disk / "g.db", min_free_disk_mb=1, reserve_mb=2)
    for n in range(300):
        store.record(Event(SEEN, {"n": n, "pad": "x" * 300}))
    fill(small_disk)
    telemetry_until_refused(store)
    assert store.health()["disk_reserve"] == "released"
    pending = store.usage[SEEN.lane].count
    refused = store.counters["refused_p2"]

    for n in range(100):
        with pytest.raises(StorageFull):
            store.record(Event(SEEN, {"late": n, "pad": "x" * 300}))
    assert store.usage[SEEN.lane].count == pending
    assert store.counters.get("evicted_disk_p2", 0) == 0
    assert store.counters["refused_p2"] == refused + 100
    store.stop()
    reopened = make_store(small_disk / "g.db", min_free_disk_mb=1, reserve_mb=2)
    assert reopened.usage[SEEN.lane].count == pending


def alarms_refused_by_a_full_disk(make_store: StoreFactory, disk: Path) -> tuple[Store, int, Path]:
    """A store without a reserve on ``disk``, recording alarms until the disk, filled by
    another program, has refused over 100; how many it refused, and the filler."""
    store = make_store(disk / "g.db", min_free_disk_mb=0, reserve_mb=0)
    filler = fill(disk)
    refused = 0
    for n in range(200):
        try:
            store.record(Event(SOS, {"device": f"A{n}", "pad": "x" * 400}))
        except StorageFull:
            refused += 1
    assert refused > 100
    return store, refused, filler


def test_an_alarm_the_full_disk_refuses_without_a_reserve_is_counted_refused(
    small_disk: Path, make_store: StoreFactory
) -> None:
    """Its commit fails as a whole, the count with it: the refusal is counted all the same, in
    health at once and in the database with the next commit that has room."""
    store, refused, filler = alarms_refused_by_a_full_disk(make_store, small_disk)
    assert store.health()["counters"]["refused_p0"] == refused

    filler.unlink()
    store.record(Event(SOS, {"device": "room again"}))
    store.stop()
    (p0, _, _) = read_stats(small_disk / "g.db").lanes
    assert p0.refused == refused


def test_records_may_spend_only_the_first_half_of_the_reserve(tmp_path: Path) -> None:
    """The second half stays on the disk for alarms; once records have spent theirs, only
    alarms are written."""
    path = tmp_path / "g.db.reserve"
    reserve = Reserve(path, 4 * MB)
    assert reserve.take(free_bytes=64 * MB, floor_bytes=0)
    assert reserve.release(alarms=False)
    assert path.stat().st_blocks * 512 == 2 * MB
    assert not reserve.release(alarms=False)
    assert reserve.alarms_only
    assert reserve.release()
    assert path.stat().st_blocks == 0  # all given back, the empty file left as its mark
    assert not reserve.release()
    assert Reserve(path, 4 * MB).state == "released"  # after a restart, too


def test_a_reserve_partly_held_is_completed_when_the_disk_can_spare_what_it_lacks(
    tmp_path: Path,
) -> None:
    """The alarms' half left by the run before is still released (records spent theirs),
    needs room for the other half only, and may take the disk down to the floor, not below
    it. A file cut short some other way (a power cut while it was made) is only waiting."""
    path = tmp_path / "g.db.reserve"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, MB)
    os.close(fd)
    reserve = Reserve(path, 2 * MB)
    assert (reserve.state, reserve.alarms_only) == ("released", False)  # as the run before left it
    assert not reserve.take(free_bytes=8 * MB + MB - 1, floor_bytes=8 * MB)
    assert reserve.take(free_bytes=8 * MB + MB, floor_bytes=8 * MB)
    assert reserve.state == "held"
    assert path.stat().st_blocks * 512 >= 2 * MB
    os.truncate(path, MB // 3)
    assert Reserve(path, 2 * MB).state == "waiting"


def test_a_write_that_finds_the_disk_full_gives_up_one_half_at_a_time(tmp_path: Path) -> None:
    """An alarm that fits in the records' half leaves the alarms' half on the disk, and a
    record never takes the alarms' half, however often it fails."""
    path = tmp_path / "g.db.reserve"
    reserve = Reserve(path, 4 * MB)
    assert reserve.take(free_bytes=64 * MB, floor_bytes=0)
    failures = [sqlite3.OperationalError("database or disk is full")]

    def alarm() -> str:
        if failures:
            raise failures.pop()
        return "written"

    assert reserve.with_room(alarm) == "written"
    assert path.stat().st_blocks * 512 == 2 * MB

    def record() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(sqlite3.OperationalError):
        reserve.with_room(record, alarms=False)
    assert path.stat().st_blocks * 512 == 2 * MB


def test_a_refusal_saved_by_the_clean_stop_is_not_saved_again_after_a_restart(
    small_disk: Path, make_store: StoreFactory
) -> None:
    """The clean stop writes the refusals the full disk kept from the database; the same
    store started again must not write them a second time with its first commit."""
    store, refused, filler = alarms_refused_by_a_full_disk(make_store, small_disk)
    filler.unlink()
    store.stop()
    store.start()
    store.record(Event(SOS, {"device": "after the restart"}))
    assert store.health()["counters"]["refused_p0"] == refused
    store.stop()
    (p0, _, _) = read_stats(small_disk / "g.db").lanes
    assert p0.refused == refused


def test_a_reserve_under_a_mebibyte_is_logged_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """reserve_mb = 0.5 was logged as "0 MiB" held, as if there were none."""
    reserve = Reserve(tmp_path / "g.db.reserve", MB // 2)
    with caplog.at_level("INFO", logger="gateway.store.reserve"):
        assert reserve.take(free_bytes=1024 * MB, floor_bytes=MB)
    assert "disk reserve held: 512.0 KiB in" in caplog.text
