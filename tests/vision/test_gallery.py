from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.keys import create_key
from gateway.vision import gallery as gallery_module
from gateway.vision.embed import l2_normalise
from gateway.vision.errors import GalleryError
from gateway.vision.gallery import Gallery, Snapshot, erase
from tests.support.disk import fill

MODEL = "mobilefacenet-foamliu-128d@b7120c09"


def _vectors(n: int, seed: int) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).standard_normal((n, 128)).astype(np.float32))


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "faces.db", tmp_path / "faces.key"


@pytest.fixture
def gallery(paths: tuple[Path, Path]) -> Gallery:
    g = Gallery.open(*paths, MODEL, create=True)
    vectors = _vectors(6, 1)
    g.add("elder-a", vectors[:2])
    g.add("elder-b", vectors[2:4])
    g.add("elder-c", vectors[4:])
    return g


def test_key_is_created_private_and_kept_out_of_the_database(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    db, key = paths
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    secret = key.read_bytes()
    assert len(secret) == 32
    assert secret not in db.read_bytes()


def test_a_gallery_enrolled_by_hand_with_an_open_umask_is_private(tmp_path: Path) -> None:
    """`gateway enroll` run by hand (umask 022) before the gateway ever ran creates the data
    directory itself: neither it nor any file in it is open to other users at any moment."""
    data = tmp_path / "var"
    old = os.umask(0o022)
    try:
        gallery = Gallery.open(data / "faces.db", data / "faces.key", MODEL, create=True)
        with sqlite3.connect(data / "faces.db") as held:  # keeps -wal and -shm in place
            held.execute("SELECT count(*) FROM templates").fetchone()
            gallery.add("elder-a", _vectors(1, 2))
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert set(modes) == {"faces.db", "faces.db-wal", "faces.db-shm", "faces.key"}
    assert set(modes.values()) == {0o600}, modes


def test_a_gallery_deleted_while_in_use_is_not_recreated_open(tmp_path: Path) -> None:
    """A site resets its gallery by deleting faces.db while the counter runs: the counter's
    refresh must not let SQLite create an empty file with the umask's mode, into which the
    next enrolment would write elder ids for every user to read."""
    db, key = tmp_path / "faces.db", tmp_path / "faces.key"
    gallery = Gallery.open(db, key, MODEL, create=True)
    for path in tmp_path.glob("faces.db*"):
        path.unlink()
    old = os.umask(0o022)
    try:
        with pytest.raises(GalleryError, match="gone"):
            gallery.refresh_if_changed()
        assert not db.exists()
        again = Gallery.open(db, key, MODEL, create=True)  # the next enrolment
        again.add("elder-a", _vectors(1, 3))
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_a_gallery_whose_key_is_missing_says_how_to_mend_it(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    """The face stage does not start; its message is what an installer reads in health, so it
    names the remedies, as the event store's does, and the start with the key back works."""
    db, key = paths
    moved = key.with_name("faces.key.moved")
    key.rename(moved)
    with pytest.raises(GalleryError) as err:
        Gallery.open(db, key, MODEL, create=True)
    assert "put it back" in str(err.value) and "enrol everyone anew" in str(err.value)
    moved.rename(key)
    assert Gallery.open(db, key, MODEL, create=True).snapshot.templates == 6


def test_templates_are_encrypted_at_rest(gallery: Gallery, paths: tuple[Path, Path]) -> None:
    template = gallery.snapshot.matrix[0]
    raw = b"".join(p.read_bytes() for p in paths[0].parent.glob("faces.db*"))
    assert template.tobytes() not in raw
    assert template[:8].tobytes() not in raw


def test_with_one_elder_the_runner_up_counts_as_zero(paths: tuple[Path, Path]) -> None:
    lonely = Gallery.open(*paths, MODEL, create=True)
    vector = _vectors(1, 8)[0]
    lonely.add("elder-only", [vector])
    result = lonely.search(vector)
    assert result.elders == ("elder-only",) and result.best_other == 0.0
    assert result.margin == pytest.approx(1.0, abs=1e-5)
    empty = Gallery.open(paths[0].with_name("empty.db"), paths[1], MODEL, create=True)
    assert empty.search(vector).top is None


def test_search_gives_top_k_and_the_best_other_identity(gallery: Gallery) -> None:
    probe = gallery.snapshot.matrix[3]  # elder-b's second template
    result = gallery.search(probe, k=3)
    assert result.top == "elder-b"
    assert result.top_score == pytest.approx(1.0, abs=1e-5)
    assert len(result.elders) == 3 and set(result.elders) == {"elder-a", "elder-b", "elder-c"}
    assert result.best_other == result.scores[1] < result.top_score
    assert result.margin == pytest.approx(result.top_score - result.best_other)
    other = gallery.search(probe, k=1, exclude="elder-b")
    assert other.top != "elder-b" and other.top_score == pytest.approx(result.best_other)


def test_memory_holds_one_contiguous_float32_matrix_grouped_by_elder(gallery: Gallery) -> None:
    snap = gallery.snapshot
    assert snap.matrix.dtype == np.float32 and snap.matrix.flags.c_contiguous
    assert snap.matrix.shape == (6, 128)
    assert snap.elders == ("elder-a", "elder-b", "elder-c")
    assert snap.starts.tolist() == [0, 2, 4]


def test_per_elder_best_score_equals_brute_force() -> None:
    rows = [(f"e{i % 7}", v) for i, v in enumerate(_vectors(40, 2))]
    snap = Snapshot.build(rows, 128)
    probes = _vectors(5, 3)
    expected = np.array(
        [
            [max(float(p @ v) for e, v in rows if e == elder) for elder in snap.elders]
            for p in probes
        ]
    )
    assert np.allclose(snap.identity_scores(probes), expected, atol=1e-6)
    assert [snap.count(e) for e in ("e0", "e6", "e7", "")] == [6, 5, 0, 0]


def test_a_wrong_key_is_counted_and_nothing_is_identified(
    gallery: Gallery, paths: tuple[Path, Path], tmp_path: Path
) -> None:
    db, _ = paths
    other_key = tmp_path / "other.key"
    Gallery.open(tmp_path / "other.db", other_key, MODEL, create=True)
    wrong = Gallery.open(db, other_key, MODEL)
    assert wrong.report.key_mismatch
    assert wrong.report.undecryptable == 6 and wrong.report.templates == 0
    assert wrong.search(_vectors(1, 9)[0]).top is None
    with pytest.raises(GalleryError, match="refusing to write"):
        wrong.add("elder-d", _vectors(1, 4))
    assert erase(db, "elder-a") == 2  # erasure never depends on the key


def test_a_relabelled_row_fails_to_decrypt_and_the_rest_loads(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    db, key = paths
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT template_id FROM templates WHERE elder_id = 'elder-a'"
        ).fetchone()
        conn.execute("UPDATE templates SET elder_id = 'elder-c' WHERE template_id = ?", row)
    reopened = Gallery.open(db, key, MODEL)
    assert reopened.report.undecryptable == 1
    assert reopened.report.templates == 5
    assert reopened.snapshot.elders == ("elder-a", "elder-b", "elder-c")
    assert reopened.snapshot.starts.tolist() == [0, 1, 3]


@pytest.mark.parametrize(
    "damage",
    [
        "nonce = x'00'",  # the wrong length: AES-GCM refuses it before checking anything
        "nonce = 'abcdefghijkl'",  # text, not bytes
        # text that is not UTF-8: Python's sqlite3 could not even hand the row over
        "elder_id = CAST(x'ff41' AS TEXT)",
        "learned_from = CAST(x'ff' AS TEXT)",
    ],
)
def test_a_damaged_row_is_skipped_and_the_rest_loads(
    gallery: Gallery, paths: tuple[Path, Path], damage: str
) -> None:
    db, key = paths
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"UPDATE templates SET {damage} WHERE template_id = "
            "(SELECT template_id FROM templates WHERE elder_id = 'elder-b' LIMIT 1)"
        )
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
    assert gallery.refresh_if_changed()  # a running counter picks the change up
    reopened = Gallery.open(db, key, MODEL)  # and so does the next start
    for loaded in (gallery, reopened):
        assert loaded.report.undecryptable == 1 and loaded.report.templates == 5
        assert loaded.snapshot.elders == ("elder-a", "elder-b", "elder-c")


def test_a_damaged_row_of_the_confusable_register_is_skipped(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    db, key = paths
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO confusable VALUES (CAST(x'ff41' AS TEXT), 'elder-a', 0.5, ?, 0)", (MODEL,)
        )
        conn.execute("INSERT INTO confusable VALUES ('elder-b', 'elder-c', 0.4, ?, 0)", (MODEL,))
    reopened = Gallery.open(db, key, MODEL)
    assert reopened.report.templates == 6
    assert [(c.elder_a, c.elder_b) for c in reopened.confusables()] == [("elder-b", "elder-c")]
    assert reopened.look_alikes("elder-b") == ("elder-c",)


def test_a_damaged_key_check_refuses_writes_and_the_templates_still_load(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    db, key = paths
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = 'not hex' WHERE key = 'key_check'")
    reopened = Gallery.open(db, key, MODEL)
    assert reopened.report.key_mismatch and reopened.report.templates == 6
    with pytest.raises(GalleryError, match="refusing to write"):
        reopened.add("elder-d", _vectors(1, 4))


def test_a_key_check_gone_from_a_gallery_with_templates_is_not_written_anew(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    """With the check deleted, any key would pass one written now: another key must not be
    able to write beside templates it cannot read (and so cannot compare against)."""
    db, key = paths
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'key_check'")
    key.write_bytes(os.urandom(32))
    reopened = Gallery.open(db, key, MODEL)
    assert reopened.report.key_mismatch and reopened.report.undecryptable == 6
    with pytest.raises(GalleryError, match="refusing to write"):
        reopened.add("elder-d", _vectors(1, 4))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT 1 FROM meta WHERE key = 'key_check'").fetchone() is None


def test_root_enrolling_into_the_service_users_data_directory_is_refused(tmp_path: Path) -> None:
    """`sudo gateway enroll` made faces.db and faces.key root's, 0600, in the service's data
    directory: the counter, running as its own user, could no longer read its gallery."""
    if os.geteuid() != 0:
        pytest.skip("only root can run as root")
    data = tmp_path / "var"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    with pytest.raises(GalleryError, match=r"belongs to nobody \(uid 65534\), not root"):
        Gallery.open(data / "faces.db", data / "faces.key", MODEL, create=True)
    assert list(data.iterdir()) == []


def test_a_gallery_file_emptied_beside_an_older_key_is_an_error_not_a_new_gallery(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    """Opened as it is, it would become an empty gallery: everyone `unknown`, nothing said."""
    db, key = paths
    for leftover in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    db.write_bytes(b"")
    made = key.stat().st_mtime - 3 * 86400
    os.utime(key, (made, made))
    with pytest.raises(GalleryError, match=r"is empty, but its key was made 3\.0 days ago"):
        Gallery.open(db, key, MODEL, create=True)
    db.unlink()  # moved aside on purpose: a new gallery is made with the same key
    assert Gallery.open(db, key, MODEL, create=True).report.templates == 0


def damage_gallery_file(db: Path, key: Path, model_id: str) -> None:
    """A gallery of 300 elders whose file then takes a bad write (SD card wear) in the
    pages that hold templates, past the schema."""
    Gallery.open(db, key, model_id, create=True).add_many(
        [(f"elder-{i}", _vectors(1, i)) for i in range(300)]
    )
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
    conn.close()
    data = bytearray(db.read_bytes())
    data[4096 * 3 : 4096 * 6] = b"\xab" * (4096 * 3)
    db.write_bytes(bytes(data))


def test_a_damaged_gallery_file_is_a_gallery_error(paths: tuple[Path, Path]) -> None:
    damage_gallery_file(*paths, MODEL)
    with pytest.raises(GalleryError, match=r"damaged or unusable.*malformed"):
        Gallery.open(*paths, MODEL)


def test_templates_of_another_model_are_skipped(gallery: Gallery, paths: tuple[Path, Path]) -> None:
    other = Gallery.open(*paths, "another-recognizer@00000000")
    assert other.report.other_model == 6 and other.report.templates == 0


def test_a_key_readable_by_others_is_refused(paths: tuple[Path, Path], gallery: Gallery) -> None:
    paths[1].chmod(0o644)
    with pytest.raises(GalleryError, match="chmod 600"):
        Gallery.open(*paths, MODEL)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_key_planted_by_another_user_is_refused(
    paths: tuple[Path, Path], gallery: Gallery
) -> None:
    """Someone who wrote the key has a copy: templates written under it are theirs to read."""
    os.chown(paths[1], 65534, 65534)
    with pytest.raises(GalleryError, match="belongs to another user"):
        Gallery.open(*paths, MODEL)


def test_a_gallery_directory_others_may_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(GalleryError, match=r"may be written by other users \(mode 0777\)"):
        Gallery.open(shared / "faces.db", shared / "faces.key", MODEL, create=True)


def test_a_missing_key_is_an_error_not_a_new_key(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    paths[1].unlink()
    with pytest.raises(GalleryError, match="key"):
        Gallery.open(*paths, MODEL, create=True)
    assert not paths[1].exists()


def test_another_process_enrolling_is_picked_up(gallery: Gallery, paths: tuple[Path, Path]) -> None:
    writer = Gallery.open(*paths, MODEL)
    assert not gallery.refresh_if_changed()
    writer.add("elder-d", _vectors(1, 5))
    assert gallery.refresh_if_changed()
    assert "elder-d" in gallery.snapshot.elders


def test_remove_erases_templates_and_register_entries(gallery: Gallery) -> None:
    gallery.set_confusable("elder-a", [("elder-b", 0.5)])
    assert [(c.elder_a, c.elder_b) for c in gallery.confusables()] == [("elder-a", "elder-b")]
    assert erase(gallery.db_path, "elder-b") == 2
    assert gallery.refresh_if_changed()
    assert "elder-b" not in gallery.snapshot.elders
    assert gallery.confusables() == []
    assert gallery.look_alikes("elder-a") == ()


def test_an_erasure_while_another_process_has_the_gallery_open_leaves_no_trace_in_it(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    """Nothing of her in the file or its WAL once the erasure returns, even while a counter or
    an enrolment holds the gallery open (the file was only rewritten when the last one
    closed)."""
    db, _ = paths
    with contextlib.closing(sqlite3.connect(db)) as other:
        other.execute("SELECT COUNT(*) FROM templates").fetchone()
        (kept,) = other.execute(
            "SELECT ciphertext FROM templates WHERE elder_id = 'elder-b' LIMIT 1"
        ).fetchone()
        assert erase(db, "elder-b") == 2
        for path in db.parent.glob("faces.db*"):
            content = path.read_bytes()
            assert b"elder-b" not in content and kept not in content, path.name


def test_an_erasure_that_cannot_empty_the_wal_past_a_long_read_says_so(
    gallery: Gallery, paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A program in the middle of a read (an sqlite3 shell, a backup) keeps the checkpoint
    from emptying the WAL, and the file keeps her rows meanwhile: logged, not passed over."""
    db, _ = paths
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM templates").fetchone()
        with caplog.at_level(logging.WARNING, logger="gateway.vision.gallery"):
            assert erase(db, "elder-b", wait_s=0.2) == 2
        assert b"elder-b" in db.read_bytes()  # still in the file, as the warning says
        reader.execute("COMMIT")
    assert "its WAL could not be emptied" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.vision.gallery"):
        assert erase(db, "elder-a", wait_s=0.2) == 2
    assert caplog.text == ""
    assert b"elder-b" not in db.read_bytes()


def test_erasure_needs_neither_the_key_nor_an_open_gallery(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    gallery.set_confusable("elder-a", [("elder-b", 0.5)])
    db, key = paths
    key.unlink()  # lost key: the templates are unreadable, but still personal data to erase
    assert erase(db, "elder-b") == 2
    assert erase(db, "elder-b") == 0
    assert erase(db.with_name("none.db"), "elder-b") == 0
    assert not db.with_name("none.db").exists()
    db.with_name("junk.db").write_bytes(b"not a database")
    with pytest.raises(GalleryError, match="not a face gallery"):
        erase(db.with_name("junk.db"), "elder-b")
    # the running gallery sees it at its next refresh
    assert gallery.refresh_if_changed()
    assert gallery.snapshot.elders == ("elder-a", "elder-c")
    assert gallery.look_alikes("elder-a") == ()
    with sqlite3.connect(db) as conn:
        assert (
            conn.execute("SELECT COUNT(*) FROM templates WHERE elder_id = 'elder-b'").fetchone()[0]
            == 0
        )


def _listed(gallery: Gallery) -> list[str | None]:
    gallery.refresh_if_changed()
    listed = gallery.erasures()
    assert listed is not None
    return sorted((elder for _, elder in listed), key=str)


def test_an_erasure_lists_her_sealed_for_the_counter_until_it_takes_her_in(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    """A counter that dies before its next reload must still learn at its next start that
    she went; the file that tells it keeps nothing of her a reader could use."""
    db, key = paths
    day = 86_400.0
    assert erase(db, "elder-b", key_path=key, now=lambda: 100 * day) == 2
    assert erase(db, "elder-c", key_path=key, now=lambda: 125 * day) == 2
    for path in db.parent.glob("faces.db*"):
        assert b"elder-b" not in path.read_bytes(), path.name
    # not read against an older load, where an elder just erased would look enrolled
    assert gallery.erasures() is None
    assert _listed(gallery) == ["elder-b", "elder-c"]
    listed = gallery.erasures()
    assert listed is not None
    gallery.taken_in(token for token, elder in listed if elder == "elder-b")
    assert not gallery.refresh_if_changed()  # taking in is no change of the gallery
    assert _listed(gallery) == ["elder-c"]
    # one nobody took in (no counter runs) is kept 30 days
    assert erase(db, "elder-a", key_path=key, now=lambda: 156 * day) == 2
    assert _listed(gallery) == ["elder-a"]
    # nobody to tell of an elder with no rows here
    assert erase(db, "elder-z", key_path=key, now=lambda: 156 * day) == 0
    assert _listed(gallery) == ["elder-a"]


def test_an_erasure_without_the_key_lists_nobody_and_an_old_gallery_takes_the_list(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    db, key = paths
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DROP TABLE erasures")  # as a gateway before the list made it
    assert erase(db, "elder-b") == 2  # no key: no counter can know her
    assert _listed(gallery) == []
    assert erase(db, "elder-c", key_path=key) == 2
    assert _listed(gallery) == ["elder-c"]
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE erasures SET sealed = zeroblob(40)")  # damaged
    assert _listed(gallery) == [None]


def test_a_gallery_that_is_a_link_is_refused_and_the_file_it_names_left_as_it_was(
    tmp_path: Path,
) -> None:
    other = tmp_path / "elsewhere" / "app.db"
    other.parent.mkdir()
    other.write_bytes(b"")  # an empty file would become a new gallery, beside its own -wal
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    create_key(data / "faces.key")
    (data / "faces.db").symlink_to(other)
    with pytest.raises(GalleryError, match="is a symbolic link"):
        Gallery.open(data / "faces.db", data / "faces.key", MODEL, create=True)
    with pytest.raises(GalleryError, match="is a symbolic link"):
        erase(data / "faces.db", "elder-a")
    assert other.read_bytes() == b""
    assert sorted(p.name for p in other.parent.iterdir()) == ["app.db"]


def test_look_alikes_are_known_in_memory_both_ways_most_similar_first(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    gallery.set_confusable("elder-b", [("elder-a", 0.49), ("elder-c", 0.52)])
    assert gallery.look_alikes("elder-b") == ("elder-c", "elder-a")
    assert gallery.look_alikes("elder-a") == ("elder-b",)
    assert gallery.look_alikes("elder-x") == ()
    # written by another process (enrolment): picked up with the next refresh
    other = Gallery.open(*paths, MODEL)
    other.set_confusable("elder-a", [("elder-c", 0.5)])
    assert gallery.refresh_if_changed()
    assert gallery.look_alikes("elder-a") == ("elder-c",)
    assert gallery.look_alikes("elder-c") == ("elder-b", "elder-a")


def test_writes_update_memory_as_a_reload_would(gallery: Gallery, paths: tuple[Path, Path]) -> None:
    gallery.add_many([("elder-0", _vectors(2, 6)), ("elder-d", _vectors(1, 7))])
    fresh = Gallery.open(*paths, MODEL)
    assert (
        gallery.snapshot.elders
        == fresh.snapshot.elders
        == ("elder-0", "elder-a", "elder-b", "elder-c", "elder-d")
    )
    assert gallery.snapshot.starts.tolist() == fresh.snapshot.starts.tolist()
    assert sorted(v.tobytes() for _, v in gallery.snapshot.rows()) == sorted(
        v.tobytes() for _, v in fresh.snapshot.rows()
    )
    assert gallery.report.templates == fresh.report.templates == 9


def test_a_search_says_when_the_best_match_was_a_learned_face(gallery: Gallery) -> None:
    enrolled = gallery.snapshot.templates_of("elder-b")[0].copy()
    assert gallery.search(enrolled).learned_from is None
    taught = _vectors(1, 11)[0]
    gallery.add("elder-b", [taught], learned_from="d-7")
    for snap in (gallery.snapshot, Gallery.open(gallery.db_path, gallery.key_path, MODEL).snapshot):
        assert snap.search(taught).top == "elder-b"
        assert snap.search(taught).learned_from == "d-7"
        assert snap.search(enrolled).learned_from is None
        assert snap.learned_from.count("d-7") == 1 and len(snap.learned_from) == snap.templates
    assert gallery.report.learned == 1 and gallery.reload().learned == 1


def test_a_gallery_from_before_learned_templates_opens_with_its_templates_as_enrolled(
    paths: tuple[Path, Path],
) -> None:
    db, key = paths
    Gallery.open(db, key, MODEL, create=True).add("elder-a", _vectors(2, 8))
    with sqlite3.connect(db) as conn:  # as the file was written before the column existed
        conn.execute("ALTER TABLE templates DROP COLUMN learned_from")
    old = Gallery.open(db, key, MODEL)
    assert old.snapshot.count("elder-a") == 2 and old.learned() == []
    old.add("elder-a", _vectors(1, 9), learned_from="d-1")
    assert old.learned("elder-a") == ["d-1"]
    assert old.remove_learned("elder-a") == 1
    assert Gallery.open(db, key, MODEL).snapshot.count("elder-a") == 2


def test_two_writers_creating_the_gallery_at_once_share_one_key(tmp_path: Path) -> None:
    """At first boot the face stage and a platform enrolment may both create it."""
    for trial in range(50):
        paths = (tmp_path / f"{trial}.db", tmp_path / f"{trial}.key")
        start = threading.Barrier(2)
        opened: list[Gallery | Exception] = []

        def create(
            paths: tuple[Path, Path] = paths,
            start: threading.Barrier = start,
            opened: list[Gallery | Exception] = opened,
        ) -> None:
            start.wait()
            try:
                opened.append(Gallery.open(*paths, MODEL, create=True))
            except Exception as exc:
                opened.append(exc)

        threads = [threading.Thread(target=create) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(isinstance(g, Gallery) and not g.report.key_mismatch for g in opened), opened
        assert len(paths[1].read_bytes()) == 32
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".{trial}")) == []


def test_learning_at_the_limit_retires_a_face_of_this_model_only(
    gallery: Gallery, paths: tuple[Path, Path]
) -> None:
    """After a recognizer change, old-model rows are unusable: retiring one of them instead
    of this model's oldest learned face would let the elder grow past the limit."""
    old = Gallery.open(*paths, "another-recognizer@00000000")
    old.add("elder-a", _vectors(1, 7), learned_from="d-old")
    gallery.refresh_if_changed()
    gallery.add("elder-a", _vectors(1, 8), learned_from="d-1")
    written = gallery.add("elder-a", _vectors(1, 9), learned_from="d-2", retire_oldest_learned=True)
    assert written.retired == ["d-1"]
    assert gallery.learned("elder-a") == ["d-2"] and old.learned("elder-a") == ["d-old"]


def test_the_face_learned_last_stays_though_the_clock_was_set_back_in_between(
    gallery: Gallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Pi without RTC may come up with an older time (fake-hwclock after a power cut): at
    the limit it is still the oldest learned face that goes, not the one just learned."""
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
    gallery.add("elder-a", _vectors(1, 8), learned_from="d-1")
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)  # set back by months
    gallery.add("elder-a", _vectors(1, 9), learned_from="d-2")
    written = gallery.add(
        "elder-a", _vectors(1, 10), learned_from="d-3", retire_oldest_learned=True
    )
    assert written.retired == ["d-1"]
    assert gallery.learned("elder-a") == ["d-2", "d-3"]


def test_an_elders_anchor_is_an_enrolled_template_and_survives_a_reload(
    paths: tuple[Path, Path],
) -> None:
    gallery = Gallery.open(*paths, MODEL, create=True)
    v = _vectors(4, 2)
    assert gallery.snapshot.anchor("E1") is None
    gallery.add("E1", v[:1], learned_from="d-1")  # learned views never anchor
    gallery.add("E2", v[1:2])
    assert gallery.snapshot.anchor("E1") is None
    enrolled = gallery.add("E1", v[2:]).ids
    anchor = gallery.snapshot.anchor("E1")
    assert anchor in enrolled and gallery.holds("E1", anchor) and not gallery.holds("E2", anchor)
    assert Gallery.open(*paths, MODEL).snapshot.anchor("E1") in enrolled


def test_a_full_disk_is_named_as_such_and_the_gallery_is_left_as_it_was(small_disk: Path) -> None:
    """Opening needs room for the -shm file: "not a face gallery (disk I/O error)" would have
    staff move a sound gallery aside and enrol every elder again."""
    db, key = small_disk / "faces.db", small_disk / "faces.key"
    Gallery.open(db, key, MODEL, create=True).add("elder-a", _vectors(2, 1))
    filler = fill(small_disk)

    for attempt in (
        lambda: Gallery.open(db, key, MODEL),  # the face stage starting, `gateway gallery stats`
        lambda: erase(db, "elder-a"),  # `gateway gallery remove`, request/face.remove
    ):
        with pytest.raises(GalleryError) as err:
            attempt()
        message = str(err.value)
        assert str(db) in message and "the disk is full" in message
        assert "not damaged" in message and "not a face gallery" not in message

    filler.unlink()
    assert Gallery.open(db, key, MODEL).snapshot.elders == ("elder-a",)


def _written_by_this_thread() -> int:
    for line in Path("/proc/thread-self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no write_bytes in /proc/thread-self/io")


def test_a_counter_looking_for_enrolments_at_rest_writes_nothing_to_the_card(
    gallery: Gallery, paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gallery_module, "RACY_S", 0.2, raising=False)  # fine-grained times
    gallery.add("elder-a", _vectors(1, 1))
    time.sleep(0.3)
    gallery.refresh_if_changed()  # the first look opens the file
    before = _written_by_this_thread()
    assert not any(gallery.refresh_if_changed() for _ in range(5))
    os.sync()
    assert _written_by_this_thread() == before
    Gallery.open(*paths, MODEL).add("elder-b", _vectors(1, 2))
    assert gallery.refresh_if_changed() and "elder-b" in gallery.snapshot.elders


@pytest.mark.parametrize(
    "damage",
    [
        "DELETE FROM meta WHERE key = 'generation'",
        "UPDATE meta SET value = 'x' WHERE key = 'generation'",
    ],
)
def test_a_gallery_whose_change_count_is_gone_or_damaged_still_shows_changes(
    paths: tuple[Path, Path], damage: str
) -> None:
    """A power cut while the gallery was first created left its key check without its change
    count: every write then left the count missing, and a running counter never reloaded (an
    erased elder matched on until a restart). A damaged count stopped erasures outright."""
    db, key = paths
    Gallery.open(db, key, "m", create=True)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(damage)
    counter = Gallery.open(db, key, "m")
    writer = Gallery.open(db, key, "m")
    writer.add("E1", list(_vectors(1, 1)))
    assert counter.refresh_if_changed() and counter.snapshot.elders == ("E1",)
    assert erase(db, "E1") == 1
    assert counter.refresh_if_changed() and counter.snapshot.elders == ()
