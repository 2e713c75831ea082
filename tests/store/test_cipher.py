"""The events' data at rest: sealed in the file, opened by the store's own readers only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.events import Event, Lane
from gateway.keys import KeyFileError, create_key, read_key
from gateway.store import StoreError, schema
from gateway.store import cipher as cipher_module
from gateway.store.cipher import EventCipher
from gateway.store.db import open_database
from tests.store.conftest import SEEN, SOS, StoreFactory
from tests.support.journal import journal
from tests.support.wait import eventually

WHERE = "Room 301, bed 2"  # a location: sensitive personal information


def raw(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(f"{db.name}*") if p.is_file())


def test_the_data_of_events_is_not_in_the_file_in_plain_text(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store()
    store.record(Event(SEEN, {"band": "A1", "where": WHERE}))
    assert WHERE.encode() not in raw(store.path)  # database, -wal and -shm as they are now
    store.stop()
    assert WHERE.encode() not in raw(store.path)
    key = tmp_path / "g.db.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert [e.data for e in journal(store.path)] == [{"band": "A1", "where": WHERE}]
    again = make_store()  # the same key opens it after a restart
    (pending,) = again.reader().pending(Lane.P2, 0, 10)
    assert pending.data_json == '{"band":"A1","where":"Room 301, bed 2"}'


def test_events_written_before_encryption_are_read_and_sealed_at_the_next_start(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """An upgrade: a database of plain-text rows, no key check, no key."""
    store = make_store()
    old = store.record(Event(SOS, {"band": "A1", "where": WHERE}))
    store.stop()
    with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute("UPDATE events SET data = ?", (old.data_json,))
        conn.execute("DELETE FROM meta WHERE key IN ('data_key_check', 'data_all_sealed')")
    (tmp_path / "g.db.key").unlink()
    upgraded = make_store()
    assert [e.data_json for e in upgraded.reader().pending(Lane.P0, 0, 10)] == [old.data_json]

    def sealed() -> bool:  # and said so, so that later starts need not look for them
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            flag = conn.execute("SELECT 1 FROM meta WHERE key = 'data_all_sealed'").fetchone()
            rows = conn.execute("SELECT typeof(data) FROM events").fetchall()
        return rows == [("blob",)] and flag is not None

    eventually(sealed)  # in the background: the alarms are taken meanwhile
    assert [e.data for e in journal(store.path)] == [{"band": "A1", "where": WHERE}]


def test_long_events_written_before_encryption_leave_no_trace_once_sealed(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """An event longer than a page spills onto pages of its own; sealing it frees them, and
    the store's deletions overwrite only the pages a commit writes anyway (secure_delete FAST):
    freed, they kept the text."""
    store = make_store()
    old = [store.record(Event(SOS, {"where": WHERE, "note": f"{WHERE} " * 100})) for _ in range(5)]
    store.stop()
    with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
        conn.executemany(
            "UPDATE events SET data = ? WHERE seq = ?", [(e.data_json, e.seq) for e in old]
        )
        conn.execute("DELETE FROM meta WHERE key IN ('data_key_check', 'data_all_sealed')")
    (tmp_path / "g.db.key").unlink()
    upgraded = make_store()

    def sealed() -> bool:
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            return conn.execute("SELECT 1 FROM meta WHERE key = 'data_all_sealed'").fetchone()

    eventually(sealed)
    upgraded.stop()
    assert WHERE.encode() not in raw(store.path)
    assert [e.data for e in journal(store.path)] == [json.loads(e.data_json) for e in old]


def test_a_gateway_from_before_encryption_refuses_a_journal_sealed_since(
    make_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A downgrade: a gateway of schema 2 (the last without encryption at rest) read each
    row's data as JSON text, and on a journal sealed since published the ciphertext as every
    pending alarm's data and counted it delivered. Its start, with this database, must be
    refused the way it refuses any newer schema."""
    store = make_store()
    store.record(Event(SOS, {"band": "A1", "where": WHERE}))
    store.stop()
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        assert conn.execute("SELECT typeof(data) FROM events").fetchall() == [("blob",)]
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:2])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)  # its migrate() is this one
    with pytest.raises(StoreError, match=r"schema version \d+ is newer than this gateway supports"):
        open_database(store.path, key=tmp_path / "g.db.key", synchronous="full", check=False)


def test_a_missing_or_wrong_key_stops_the_start_instead_of_stranding_the_events(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store()
    store.record(Event(SOS, {"band": "A1"}))
    store.stop()
    key = tmp_path / "g.db.key"
    right = key.read_bytes()
    key.unlink()
    with pytest.raises(StoreError, match=r"g\.db\.key, is missing: its events cannot be read"):
        make_store()
    assert not key.exists()  # no new key made in its place
    key.write_bytes(bytes(32))
    key.chmod(0o600)
    with pytest.raises(StoreError, match="is not the key this database was written with"):
        make_store()
    key.write_bytes(right)
    assert [e.type for e in journal(store.path)] == ["alarm.sos"]


def test_a_key_file_that_cannot_be_made_or_is_a_folder_is_said_plainly(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    """The key on storage the gateway cannot write (a mount missing, a folder not in the
    unit's ReadWritePaths=): one line naming the key, and the next start, once it is put
    right, makes it as on any first start."""
    (tmp_path / "usb").write_text("a file where the key's folder should be")
    with pytest.raises(StoreError, match=r"usb/keys/g\.key: cannot create the data key: Not a dir"):
        make_store(key_file=str(tmp_path / "usb" / "keys" / "g.key"))
    (tmp_path / "usb").unlink()
    store = make_store(key_file=str(tmp_path / "usb" / "keys" / "g.key"))
    assert store.record(Event(SOS, {"band": "A1"})).seq == 1
    store.stop()
    (tmp_path / "folder.key").mkdir()
    with pytest.raises(StoreError, match=r"folder\.key: the data key must be a file"):
        make_store(tmp_path / "other.db", key_file=str(tmp_path / "folder.key"))


def test_a_row_that_does_not_open_is_passed_over_and_the_alarm_behind_it_still_goes(
    make_store: StoreFactory,
) -> None:
    """A row's data copied onto another event (or damaged on the card) does not open: it is
    counted and skipped, never sent as someone else's, and never holds up the lane."""
    store = make_store()
    first = store.record(Event(SOS, {"band": "A1"}))
    second = store.record(Event(SOS, {"band": "B2"}))
    with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute(
            "UPDATE events SET data = (SELECT data FROM events WHERE seq = ?) WHERE seq = ?",
            (second.seq, first.seq),
        )
    reader = store.reader()
    assert [e.event_id for e in reader.pending(Lane.P0, 0, 10)] == [second.event_id]
    assert reader.undecryptable == 1
    reader.close()


def test_no_nonce_is_used_twice_when_the_counter_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cipher_module, "COUNTER_LIMIT", 3)
    cipher = EventCipher(bytes(32))
    nonces = [cipher.seal("e", "{}")[1:13] for _ in range(10)]
    assert len(set(nonces)) == 10
    assert len({n[:8] for n in nonces}) == 4  # a new random prefix after every 3


def test_a_key_only_root_may_read_is_said_plainly_to_the_service_user() -> None:
    """A key file made by root (0600) on a gateway running as its own user: "cannot start:
    unexpected PermissionError" and a traceback, not what to do."""
    if os.geteuid() != 0:
        pytest.skip("only root can make a key another user cannot read")
    folder = Path(tempfile.mkdtemp(prefix="root-key-"))
    try:
        folder.chmod(0o755)
        create_key(folder / "g.key")
        said = as_nobody(lambda: _reading(folder / "g.key"))
        assert said == (
            f"{folder / 'g.key'}: key file belongs to root and cannot be read by nobody: "
            "chown it to the user the gateway runs as"
        )
    finally:
        shutil.rmtree(folder)


def _reading(key: Path) -> str:
    try:
        read_key(key)
    except KeyFileError as exc:
        return str(exc)
    return "read"


def as_nobody(work: Callable[[], str]) -> str:
    """What ``work`` returns, run in a child process that has become the user nobody."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        status = 1
        try:
            os.close(reading)
            os.setgid(65534)
            os.setuid(65534)
            os.write(writing, work().encode())
            status = 0
        finally:
            os._exit(status)
    os.close(writing)
    with os.fdopen(reading, "rb") as fh:
        out = fh.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    return out
