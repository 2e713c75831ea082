from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from gateway.cli import main
from gateway.events import Event, Lane
from gateway.store import Delivered, StoreError, db, read_stats
from gateway.store.db import hold_exclusively, open_database
from gateway.store.schema import MIGRATIONS, SCHEMA_VERSION
from gateway.store.writer import EXPIRE_SQL, PURGE_SQL
from tests.store.conftest import SOS, StoreFactory
from tests.support.journal import journal


def test_a_file_that_is_not_a_database_is_refused_not_replaced(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    path = tmp_path / "g.db"
    path.write_bytes(b"this was a database before the SD card failed" * 100)
    with pytest.raises(StoreError) as err:
        make_store(path)
    message = str(err.value)
    assert str(path) in message and "move the file aside" in message and ".recover" in message
    assert path.read_bytes().startswith(b"this was a database")


def test_a_database_that_is_a_link_is_refused_and_the_file_it_names_left_as_it_was(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """SQLite would write the journal into the file the link names, with its mode, there."""
    other = tmp_path / "elsewhere" / "app.db"
    other.parent.mkdir()
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    before = other.read_bytes()
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "g.db").symlink_to(other)
    with pytest.raises(StoreError, match="is a symbolic link"):
        make_store(data / "g.db")
    assert other.read_bytes() == before
    assert sorted(p.name for p in other.parent.iterdir()) == ["app.db"]


def test_a_damaged_database_is_caught_after_an_unclean_stop(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    path = tmp_path / "g.db"
    store = make_store(path)
    for i in range(300):
        store.record(Event(SOS, {"i": i, "pad": "x" * 200}))
    store.stop()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 0 WHERE key = 'clean_stop'")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as fh:  # scribble over a few pages in the middle
        fh.seek(page_size * 3)
        fh.write(os.urandom(page_size * 4))
    with pytest.raises(StoreError) as err:
        make_store(path)
    assert "damaged" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    ("journal_mode", "hold"),
    [("DELETE", "BEGIN"), ("WAL", "BEGIN EXCLUSIVE")],
    ids=["reader-after-a-crash", "shell-mid-edit"],
)
def test_a_database_another_program_holds_at_start_is_not_called_damaged(
    make_store: StoreFactory, tmp_path: Path, journal_mode: str, hold: str
) -> None:
    """A crash while the pages were rebuilt leaves the database in rollback-journal mode,
    where a reader (an sqlite3 shell, a backup) keeps the switch back to WAL waiting; an
    sqlite3 shell in the middle of an edit holds the write lock of the WAL database. The start
    fails, and says what holds the file (SQLite's bare "database is locked" names no
    troubleshooting row): moving it aside, as for damage, would strand its events."""
    path = tmp_path / "g.db"
    store = make_store(path)
    store.record(Event(SOS, {"i": 1}))
    store.stop()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA journal_mode = {journal_mode}")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute(hold)
        holder.execute("SELECT COUNT(*) FROM events").fetchone()
        with pytest.raises(StoreError) as err:
            make_store(path)
        assert "held by another program" in str(err.value) and "is damaged" not in str(err.value)
    finally:
        holder.close()
    assert make_store(path).health()["pending"]["p0"] == 1


def test_a_database_emptied_beside_its_key_is_refused_not_started_anew(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """A bad restore left a file of 0 bytes: started anew, seq and session would begin at 1
    again, and the platform would take new events for ones it already has."""
    path = tmp_path / "g.db"
    store = make_store(path)
    store.record(Event(SOS, {"band": "A1"}))
    store.stop()
    path.write_bytes(b"")
    key = tmp_path / "g.db.key"
    with pytest.raises(StoreError) as err:
        make_store(path)
    message = str(err.value)
    assert f"database {path} is empty, but its key {key} is there" in message
    assert "Restore it from a backup" in message and f"move {key} aside, and g.db" in message
    assert path.read_bytes() == b""
    for moved in (path, key):  # what the message says to do to start empty
        moved.rename(moved.with_name(moved.name + ".emptied"))
    assert make_store(path).session == 1


@pytest.mark.parametrize("wal_left", [False, True])
def test_a_database_lost_from_beside_its_key_is_refused_not_started_anew(
    make_store: StoreFactory, tmp_path: Path, wal_left: bool
) -> None:
    """fsck moved it to lost+found, or a restore missed it (its -wal perhaps left, holding the
    last events): started anew, the alarms it held were gone without a word, seq began at 1
    again and the platform's record said the last stop was clean."""
    path, key = tmp_path / "g.db", tmp_path / "g.db.key"
    store = make_store(path)
    store.record(Event(SOS, {"band": "A1"}))
    store.stop()
    path.rename(tmp_path / "lost+found")
    if wal_left:
        (tmp_path / "g.db-wal").write_bytes(b"pages")
    with pytest.raises(StoreError) as err:
        make_store(path)
    message = str(err.value)
    assert f"database {path} is missing, but its key {key} is there" in message
    assert "lost+found" in message and "Restore it from a backup" in message
    assert not path.exists()
    key.rename(tmp_path / "g.db.key.lost")  # what the message says to do to start empty
    (tmp_path / "g.db-wal").unlink(missing_ok=True)
    assert make_store(path).session == 1


def test_an_emptied_database_is_refused_though_the_clock_was_set_back_since_its_key(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """A power cut brought the Pi back a day early (no RTC): its key now looks made in the
    future, which must not pass for a key made this very moment with its new database."""
    path = tmp_path / "g.db"
    make_store(path).stop()
    path.write_bytes(b"")
    ahead = time.time() + 86_400
    os.utime(tmp_path / "g.db.key", (ahead, ahead))
    with pytest.raises(StoreError, match="is empty, but its key"):
        make_store(path)


def test_a_database_an_older_version_left_readable_by_all_is_made_private(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """Versions from before files were created private wrote gateway.db 0644: event types,
    ids and times, and the platform's request records, are not for every local user."""
    path = tmp_path / "g.db"
    make_store(path).stop()
    os.chmod(path, 0o644)
    store = make_store(path)
    store.record(Event(SOS, {"band": "A1"}))
    for part in (path, tmp_path / "g.db-wal", tmp_path / "g.db-shm"):
        assert stat.S_IMODE(part.stat().st_mode) == 0o600, part


def test_a_new_install_and_a_database_moved_aside_start(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    first = make_store(tmp_path / "g.db")
    assert first.session == 1
    first.stop()
    key = tmp_path / "g.db.key"
    made = key.stat().st_mtime - 3 * 86400
    os.utime(key, (made, made))
    for part in ("g.db", "g.db.key"):  # as the message on damage says
        (tmp_path / part).rename(tmp_path / f"damaged-{part}")
    assert make_store(tmp_path / "g.db").session == 1


def test_a_database_from_a_newer_gateway_is_refused(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    path = tmp_path / "g.db"
    make_store(path).stop()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer than this gateway supports"):
        make_store(path)


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A data directory the gateway may not write, and why: its mode, or for root (who may
    write anywhere) a read-only file system, as the service's unit makes every directory
    outside ReadWritePaths."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    if os.geteuid() != 0:
        locked.chmod(0o500)
        yield locked, "Permission denied"
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=0700", "tmpfs", str(locked)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only file system here: {mounted.stderr.decode().strip()}")
    try:
        yield locked, "Read-only file system"
    finally:
        subprocess.run(["umount", "-l", str(locked)], check=True)


def test_unwritable_data_directory_is_a_clear_error(
    make_store: StoreFactory, unwritable_dir: tuple[Path, str]
) -> None:
    locked, reason = unwritable_dir
    with pytest.raises(StoreError, match=re.escape(f"{locked} is not writable ({reason})")):
        make_store(locked / "g.db")
    assert not any(locked.iterdir())


def test_data_directory_that_cannot_be_created_is_a_clear_error(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create data directory"):
        make_store(blocker / "var" / "g.db")


def test_gateway_run_exits_non_zero_on_a_damaged_database(tmp_path: Path) -> None:
    data = tmp_path / "var"
    data.mkdir()
    (data / "gateway.db").write_bytes(b"garbage" * 1000)
    config = tmp_path / "g.toml"
    config.write_text(f'[gateway]\ndata_dir = "{data}"\n[clock]\nsync_source = "never"\n')
    assert main(["run", "--config", str(config)]) == 1
    assert (data / "gateway.db").read_bytes() == b"garbage" * 1000


def test_a_second_gateway_on_the_same_database_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """E.g. `scripts/run /etc/eldercare-gateway/gateway.toml` while the service runs: the two
    would hand out the same sequence numbers and split the serial lines between them."""
    data = tmp_path / "var"
    config = tmp_path / "g.toml"
    config.write_text(f'[gateway]\ndata_dir = "{data}"\n[clock]\nsync_source = "never"\n')
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from gateway.store import hold_exclusively; "
            f"hold_exclusively(Path({str(data / 'gateway.db')!r})); print('held', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert main(["run", "--config", str(config)]) == 1
        assert "cannot start: another gateway is running on" in capfd.readouterr().err
        assert not (data / "gateway.db").exists()  # nothing touched
    finally:
        holder.kill()
        holder.communicate()  # waits, and closes its pipes


def test_outbox_stats_without_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "g.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "none"}"\n')
    assert main(["outbox", "stats", "--config", str(config)]) == 1
    assert "no database" in capsys.readouterr().err


def test_outbox_stats_on_a_data_directory_it_may_not_read(tmp_path: Path) -> None:
    """`gateway outbox stats` from the installer's own account on a site whose data directory
    is the service's (0700): a message saying whose command it is, not a traceback."""
    data = tmp_path / "var"
    data.mkdir(mode=0o000)
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)  # root reads anything: be another user for the call
    try:
        with pytest.raises(StoreError) as caught:
            read_stats(data / "gateway.db")
    finally:
        if as_root:
            os.seteuid(0)
    assert "cannot read" in str(caught.value) and "Permission denied" in str(caught.value)
    assert "run this as the user the gateway runs as" in str(caught.value)


def test_the_database_is_the_gateways_alone_whatever_the_umask(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """It holds elder ids, decisions and nurse-call texts; `gateway run` may be started by
    hand with a umask of 022."""
    old = os.umask(0o022)
    try:
        store = make_store(tmp_path / "var" / "gateway.db")
        store.record(Event(SOS, {"band": "A1"}))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm"):
        assert stat.S_IMODE((tmp_path / "var" / name).stat().st_mode) == 0o600, name


def test_data_directories_are_created_private_down_from_the_first_missing_one(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    old = os.umask(0)
    try:
        make_store(tmp_path / "opt" / "gw" / "var" / "gateway.db")
    finally:
        os.umask(old)
    for made in ("opt", "opt/gw", "opt/gw/var"):
        assert stat.S_IMODE((tmp_path / made).stat().st_mode) == 0o700, made


def test_a_data_directory_others_may_write_to_is_refused(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """Whoever may write there could swap the database, or plant links, under the gateway."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StoreError, match=r"may be written by other users \(mode 0777\)"):
        make_store(shared / "gateway.db")
    shared.chmod(0o775)  # umask 002: group write, where the group is the owner's own
    os.chown(shared, -1, pwd.getpwuid(os.geteuid()).pw_gid)
    owners_own = not grp.getgrgid(pwd.getpwuid(os.geteuid()).pw_gid).gr_mem
    if owners_own:
        make_store(shared / "gateway.db").record(Event(SOS, {"band": "A1"}))
    else:
        with pytest.raises(StoreError, match=r"may be written by other users \(mode 0775\)"):
            make_store(shared / "gateway.db")


def test_links_planted_in_the_data_directory_are_not_written_through(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """A gateway run by root must not write over a file a link points at."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    var = tmp_path / "var"
    var.mkdir(mode=0o700)
    (var / "gateway.db.lock").symlink_to(victim)
    with pytest.raises(StoreError, match="cannot open"):
        hold_exclusively(var / "gateway.db")
    (var / "gateway.db.lock").unlink()
    (var / "gateway.db").symlink_to(tmp_path / "not-yet-there")
    with pytest.raises(StoreError, match="is a symbolic link"):
        make_store(var / "gateway.db")
    assert victim.read_text() == "keep me" and not (tmp_path / "not-yet-there").exists()


def test_housekeeping_reads_only_what_it_removes_after_an_upgrade(tmp_path: Path) -> None:
    """An alarm waits for housekeeping in the writer; with a backlog of an outage (hundreds of
    thousands of pending sightings) a scan of the journal held it up for 70-150 ms. A database
    of the first schema gets the index at its next start."""
    db = tmp_path / "gateway.db"
    with sqlite3.connect(db) as conn:
        MIGRATIONS[0](sqlite_utils.Database(conn))
        conn.execute("PRAGMA user_version = 1")
    conn = open_database(db, key=tmp_path / "gateway.db.key", synchronous="full", check=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        for sql, args, bound in (
            (EXPIRE_SQL, (2, 512), "(lane=?)"),
            (PURGE_SQL, (0, 512), "(lane=? AND delivered_steady_ms<?)"),
        ):
            plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
            assert any(p.endswith(bound) for p in plan), plan
            assert not any(p.startswith("SCAN") for p in plan), plan
    finally:
        conn.close()


def test_a_database_of_the_first_release_keeps_its_events_numbering_and_counts(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """As the gateway of 2026-11-23 left it, stopped during a broker outage: schema 1, 4 KiB
    pages, data in plain text, no key. The pending events go out as they were written (same
    event_id and data), the delivered one stays in the journal, and sessions, numbering and
    the delivered count carry on."""
    path = tmp_path / "g.db"
    rows = [  # seq, event_id, type, lane, data, delivered_steady_ms
        (2, "01a24e88-bd14-7319-8d9e-b4d44efcf078", "face.decision", 1, '{"elder_id":"E1"}', 744),
        (45, "01a24e89-7837-7262-9ad4-ff80394d779e", "alarm.sos", 0, '{"device":"B4"}', None),
        (47, "01a24e89-8001-7262-9ad4-ff80394d77a0", "wristband.seen", 2, '{"band":"A1"}', None),
    ]
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA page_size = 4096")
        MIGRATIONS[0](sqlite_utils.Database(conn))
        conn.execute("PRAGMA user_version = 1")
        for seq, event_id, kind, lane, data, delivered in rows:
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, 1, ?, 1, 1796613913876, 1, ?, ?, ?)",
                (seq, event_id, kind, lane, seq * 1000, data, delivered),
            )
            if delivered is None:
                conn.execute("INSERT INTO outbox VALUES (?, ?, ?, ?)", (seq, lane, 99, seq * 1000))
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("session", 1), ("clean_stop", 1), ("next_seq", 50), ("steady_ms", 53749)],
        )
        conn.execute("INSERT INTO counters VALUES ('delivered', 17)")

    store = make_store(path)
    reader = store.reader()
    try:
        for lane, (seq, event_id, _, _, data, _) in ((Lane.P0, rows[1]), (Lane.P2, rows[2])):
            pending = reader.pending(lane, 0, 10)
            assert [(e.seq, e.event_id, e.data_json) for e in pending] == [(seq, event_id, data)]
    finally:
        reader.close()
    assert store.record(Event(SOS, {"device": "B5"})).seq == 50
    store.stop()
    stats = read_stats(path)
    assert (stats.session, stats.next_seq, stats.delivered) == (2, 51, 17)
    assert [(e.seq, e.data) for e in journal(path)][:3] == [
        (seq, json.loads(data)) for seq, _, _, _, data, _ in rows
    ]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_database_made_with_4_kib_pages_is_rebuilt_with_small_ones_keeping_its_events(
    make_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each commit writes the pages it touches whole: a database from before small pages (made
    with SQLite's 4 KiB) is rebuilt with them at a start, its pending events and its numbering
    kept; one with more in use than a start should wait for is left for a later start."""
    path = tmp_path / "g.db"
    with monkeypatch.context() as old:
        old.setattr(db, "PAGE_SIZE", 4096)  # as the gateway made it before
        store = make_store(path)
        pending = [store.record(Event(SOS, {"i": i, "pad": "x" * 300})) for i in range(50)]
        store.stop()
    with monkeypatch.context() as large:
        large.setattr(db, "REPAGE_MAX_BYTES", 4096)
        make_store(path).stop()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    store = make_store(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == db.PAGE_SIZE
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reader = store.reader()
    try:
        assert reader.pending(Lane.P0, 0, 100) == pending
    finally:
        reader.close()
    assert store.record(Event(SOS, {"i": 50})).seq == pending[-1].seq + 1
    assert store.usage[Lane.P0].count == 51


def test_pending_events_write_only_the_indexes_they_are_read_by_also_after_an_upgrade(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """Each index a new event has an entry in is one more page each commit writes to the SD
    card. A database of schema 3 (as the gateway wrote it before) loses the two that only
    housekeeping read, and keeps its events, their delivery times and their numbering."""
    path = tmp_path / "g.db"
    with sqlite3.connect(path) as conn:
        for migration in MIGRATIONS[:3]:
            migration(sqlite_utils.Database(conn))
        conn.execute("PRAGMA user_version = 3")
    store = make_store(path)
    delivered = store.record(Event(SOS, {"i": 0}))
    store.mark_delivered([Delivered(delivered.seq, Lane.P0)]).result(10)
    pending = store.record(Event(SOS, {"i": 1}))
    store.stop()
    with sqlite3.connect(path) as conn:  # as the gateway of schema 3 left it
        conn.execute("DROP INDEX idx_events_delivered")
        conn.execute(
            "CREATE INDEX idx_events_lane_delivered_steady_ms ON events (lane, delivered_steady_ms)"
        )
        conn.execute("CREATE INDEX idx_outbox_lane_steady_ms ON outbox (lane, steady_ms)")
        conn.execute("ALTER TABLE outbox DROP COLUMN erased")
        conn.execute("PRAGMA user_version = 3")

    store = make_store(path)
    assert store.record(Event(SOS, {"i": 2})).seq == pending.seq + 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        entries = dict(
            conn.execute(
                "SELECT name, SUM(ncell) FROM dbstat WHERE name IN (SELECT name FROM "
                "sqlite_schema WHERE type = 'index' AND tbl_name IN ('events', 'outbox')) "
                "AND pagetype = 'leaf' GROUP BY name"
            )
        )
        assert entries == {
            "idx_events_event_id": 3,
            "idx_events_delivered": 1,  # the delivered event's, for retention
            "idx_outbox_lane_seq": 2,
        }
        plan = " ".join(
            r[3]
            for r in conn.execute(
                "EXPLAIN QUERY PLAN DELETE FROM events WHERE seq IN (?)", (pending.seq,)
            )
        )
        assert "SCAN" not in plan, plan
    assert store.usage[Lane.P0].count == 2


_KILLED_MIDWAY = """
import os, sys
from pathlib import Path
from gateway.store import db, schema
version = int(sys.argv[2])
migration = schema.MIGRATIONS[version]
def then_power_cut(database):
    migration(database)
    os._exit(9)
later = schema.MIGRATIONS[version + 1 :]
schema.MIGRATIONS = (*schema.MIGRATIONS[:version], then_power_cut, *later)
path = Path(sys.argv[1])
db.open_database(path, key=path.with_name("g.db.key"), synchronous="full", check=False)
"""


@pytest.mark.parametrize("version", range(SCHEMA_VERSION))
def test_a_start_killed_in_a_migration_leaves_it_to_be_done_again(
    tmp_path: Path, version: int
) -> None:
    """A power cut once a migration has run but before the database records its version: the
    next start runs it again, and must find the database as it was before it, not half done
    (a column or an index already there, which it took for a damaged database)."""
    path = tmp_path / "g.db"
    if version:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            for migration in MIGRATIONS[:version]:
                migration(sqlite_utils.Database(conn))
            conn.execute(
                "INSERT INTO events (seq, event_id, type, schema, lane, session, ts_ms, "
                "clock_synced, steady_ms, data) VALUES (1, 'e1', 'alarm.sos', 1, 0, 1, 0, 0, 0, "
                "'{}')"
            )
            conn.execute("INSERT INTO outbox (seq, lane, bytes, steady_ms) VALUES (1, 0, 2, 0)")
            conn.execute(f"PRAGMA user_version = {version}")
            conn.commit()
    root = Path(__file__).resolve().parents[2]
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MIDWAY, str(path), str(version)],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        check=False,
    )
    assert killed.returncode == 9, killed.stderr
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == version

    conn = open_database(path, key=tmp_path / "g.db.key", synchronous="full", check=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == min(version, 1)
    finally:
        conn.close()


def test_root_is_refused_a_data_directory_that_belongs_to_the_service_user(
    tmp_path: Path,
) -> None:
    """An installer trying the site's config in the foreground as root: the lock, database
    and keys it made there were root's, 0600, and the service (its own user) could no longer
    start, restarted every few seconds with no alarm going through."""
    if os.geteuid() != 0:
        pytest.skip("only root can run the gateway as root")
    data = tmp_path / "var"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    with pytest.raises(StoreError) as err:
        hold_exclusively(data / "gateway.db")
    assert "belongs to nobody (uid 65534), not root: run this as that user" in str(err.value)
    assert list(data.iterdir()) == []
