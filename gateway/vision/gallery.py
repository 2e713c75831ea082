"""Enrolled face templates: encrypted at rest in their own SQLite file, searched in memory.

Layout: ``faces.db`` holds only opaque elder ids and AES-GCM ciphertexts of the templates; the
key lives in a separate 0600 file; names and other identity data stay in the roster, elsewhere.
Each ciphertext is bound (as associated data) to its template id, elder id and model id, so a
row relabelled to another elder fails to decrypt instead of identifying the wrong person. A
template learned from a staff confirmation records the decision it came from (``learned_from``),
so a wrong confirmation can be undone without touching the enrolled photos.

In memory the templates form one contiguous float32 matrix with rows grouped by elder, so a
search is one matrix-vector product and a ``maximum.reduceat`` over the groups.
"""

from __future__ import annotations

import bisect
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.keys import KeyFileError, create_key, derive, emptied_beside_key, read_key
from gateway.private import ExposedDirectory, private_dir, refuse_link, touch_private
from gateway.store.db import emptied_wal, immediate
from gateway.store.reserve import disk_full
from gateway.store.writer import disk_free_bytes
from gateway.vision.errors import GalleryError

if TYPE_CHECKING:
    from gateway.vision.config import VisionSection

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS templates (
    template_id TEXT PRIMARY KEY,
    elder_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    learned_from TEXT
);
CREATE INDEX IF NOT EXISTS templates_elder ON templates (elder_id);
CREATE TABLE IF NOT EXISTS confusable (
    elder_a TEXT NOT NULL,
    elder_b TEXT NOT NULL,
    score REAL NOT NULL,
    model_id TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (elder_a, elder_b)
);
"""
ERASURES = (
    "CREATE TABLE IF NOT EXISTS erasures "
    "(token TEXT PRIMARY KEY, erased_ms INTEGER NOT NULL, sealed BLOB NOT NULL)"
)
KEY_CHECK = b"eldercare-gateway face gallery"
EMPTY_WHILE_CREATED_S = 60.0  # the key is made first: a new gallery's file is empty meanwhile
T = TypeVar("T")
PURPOSE = "gallery-templates-v1"
ERASURE_PURPOSE = "gallery-erasures-v1"
NONCE_BYTES = 12
# An erasure no counter took in (the gateway not started again, an entry sealed with another
# key) goes with the first erasure after this long.
ERASURE_KEPT_MS = 30 * 86_400_000
# How long an erasure waits for readers of the gallery to let go before it empties the WAL: a
# counter's reload or an enrolment's checks read for well under a second.
CHECKPOINT_WAIT_S = 10.0


@dataclass(frozen=True)
class SearchResult:
    """Best identities for one probe, best first. ``best_other`` is the runner-up's score:
    the margin ``top_score - best_other`` says how clearly the winner stands out."""

    elders: tuple[str, ...]
    scores: tuple[float, ...]
    # the top elder's best template was learned from this staff-confirmed decision
    learned_from: str | None = None

    @property
    def top(self) -> str | None:
        return self.elders[0] if self.elders else None

    @property
    def top_score(self) -> float:
        return self.scores[0] if self.scores else -1.0

    @property
    def best_other(self) -> float:
        """0.0 when nobody else is enrolled: what the faces of different people score."""
        return self.scores[1] if len(self.scores) > 1 else 0.0

    @property
    def margin(self) -> float:
        return self.top_score - self.best_other


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the gallery; searches use one while a reload builds the next.
    ``learned_from`` holds, per row, the decision a learned template came from (None for a
    template enrolled from a photo); ``ids``, per row, the template's id (empty for a view
    built from bare vectors, as in evaluation)."""

    matrix: np.ndarray
    elders: tuple[str, ...]
    starts: np.ndarray
    learned_from: tuple[str | None, ...]
    learned_count: int
    ids: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        rows: Sequence[tuple[str, np.ndarray]],
        dim: int,
        learned_from: Sequence[str | None] = (),
        ids: Sequence[str] = (),
    ) -> Snapshot:
        origins = list(learned_from) or [None] * len(rows)
        if len(origins) != len(rows):
            raise ValueError(f"{len(origins)} origins for {len(rows)} templates")
        if ids and len(ids) != len(rows):
            raise ValueError(f"{len(ids)} ids for {len(rows)} templates")
        order = sorted(range(len(rows)), key=lambda i: rows[i][0])
        matrix = np.empty((len(rows), dim), dtype=np.float32)
        elders: list[str] = []
        starts: list[int] = []
        for row, i in enumerate(order):
            elder, vector = rows[i]
            matrix[row] = vector
            if not elders or elders[-1] != elder:
                elders.append(elder)
                starts.append(row)
        matrix.flags.writeable = False
        learned = tuple(origins[i] for i in order)
        return cls(
            matrix,
            tuple(elders),
            np.asarray(starts, dtype=np.intp),
            learned,
            sum(o is not None for o in learned),
            tuple(ids[i] for i in order) if ids else (),
        )

    @property
    def templates(self) -> int:
        return int(self.matrix.shape[0])

    def _span(self, elder: str) -> tuple[int, int]:
        """The elder's rows of the matrix, as [start, end) (empty when not enrolled)."""
        i = bisect.bisect_left(self.elders, elder)
        if i == len(self.elders) or self.elders[i] != elder:
            return 0, 0
        end = int(self.starts[i + 1]) if i + 1 < len(self.elders) else self.templates
        return int(self.starts[i]), end

    def templates_of(self, elder: str) -> np.ndarray:
        start, end = self._span(elder)
        return self.matrix[start:end]

    def enrolled_of(self, elder: str) -> np.ndarray:
        """The elder's templates enrolled from photos, without those learned from staff
        confirmations: what says who she is. A wrong confirmation must not let another
        person's photos, or faces, be taken for hers."""
        start, end = self._span(elder)
        rows = [row for row in range(start, end) if self.learned_from[row] is None]
        return self.matrix[rows]

    def count(self, elder: str) -> int:
        start, end = self._span(elder)
        return end - start

    def anchor(self, elder: str) -> str | None:
        """One of the elder's enrolled (not learned) templates: it lasts until the elder is
        erased, so finding it again later says the enrolment is the same one, not a new one
        made after an erasure. None when not enrolled or the view has no ids."""
        start, end = self._span(elder)
        if not self.ids:
            return None
        for row in range(start, end):
            if self.learned_from[row] is None:
                return self.ids[row]
        return None

    def rows(self) -> list[tuple[str, np.ndarray]]:
        """(elder, template) per row, to build the next snapshot from this one."""
        counts = np.diff(np.append(self.starts, self.templates))
        owners = np.repeat(np.arange(len(self.elders)), counts)
        return [(self.elders[o], self.matrix[i]) for i, o in enumerate(owners)]

    def identity_scores(self, probes: np.ndarray) -> np.ndarray:
        """(P, E) best template score per enrolled elder for each probe row."""
        scores = probes @ self.matrix.T
        return np.maximum.reduceat(scores, self.starts, axis=1)

    def search(self, probe: np.ndarray, k: int = 3, exclude: str | None = None) -> SearchResult:
        if not self.elders:
            return SearchResult((), ())
        scores = self.matrix @ probe
        per_elder = np.maximum.reduceat(scores, self.starts)
        if exclude is not None and exclude in self.elders:
            per_elder[self.elders.index(exclude)] = -np.inf
        k = min(k, len(self.elders))
        top = np.argpartition(-per_elder, k - 1)[:k]
        top = top[np.argsort(-per_elder[top], kind="stable")]
        top = top[np.isfinite(per_elder[top])]
        elders = tuple(self.elders[i] for i in top)
        learned = None
        if elders and self.learned_count:
            start, end = self._span(elders[0])
            learned = self.learned_from[start + int(np.argmax(scores[start:end]))]
        return SearchResult(elders, tuple(float(per_elder[i]) for i in top), learned)


class Written(NamedTuple):
    """What a write did: the new templates' ids, and the decisions whose learned templates
    gave way to them."""

    ids: list[str]
    retired: list[str]


@dataclass
class LoadReport:
    templates: int = 0
    elders: int = 0
    undecryptable: int = 0
    other_model: int = 0
    key_mismatch: bool = False
    learned: int = 0  # templates learned from staff confirmations


@dataclass(frozen=True)
class Confusable:
    elder_a: str
    elder_b: str
    score: float


@dataclass
class Gallery:
    """The gallery file, its key and the in-memory snapshot for one recognizer model."""

    db_path: Path
    key_path: Path
    model_id: str
    dim: int = 128
    report: LoadReport = field(default_factory=LoadReport)

    def __post_init__(self) -> None:
        try:
            key = read_key(self.key_path)
        except KeyFileError as exc:
            raise GalleryError(str(exc)) from None
        self._aead = AESGCM(derive(key, PURPOSE))
        self._erasures_aead = AESGCM(derive(key, ERASURE_PURPOSE))
        self._lock = threading.Lock()
        self._snapshot = Snapshot.build([], self.dim)
        self._look_alikes: dict[str, tuple[str, ...]] = {}
        self.damaged: tuple[str, ...] = ()  # elders with a row that fails to decrypt
        self._generation = -1
        # the gallery's files as last seen, and the generation they held (None: open to know)
        self._unchanged: tuple[tuple[tuple[int, int, int, int] | None, ...], int] | None = None
        self._held = threading.local()  # this thread's connection inside ``writing``
        try:  # anyone who may write there could swap in a gallery and key of their own
            private_dir(self.db_path.parent)
        except ExposedDirectory as exc:
            raise GalleryError(f"face gallery directory {exc.strerror}") from None
        if not self.db_path.exists():
            touch_private(self.db_path)  # ciphertexts and elder ids
        else:
            self._refuse_emptied()
        with self._connect() as conn:
            conn.executescript(SCHEMA)
            conn.execute(ERASURES)
            _migrate(conn)
            self._check_key(conn)

    def _refuse_emptied(self) -> None:
        """An emptied gallery would be opened as a new one: every elder ``unknown``."""
        key_age = emptied_beside_key(
            self.db_path, self.key_path, created_within_s=EMPTY_WHILE_CREATED_S
        )
        if key_age is not None:
            raise GalleryError(
                f"{self.db_path} is empty, but its key was made {key_age / 86400:.1f} days ago: "
                "the enrolled elders are gone from it. Restore it from a backup, or move it "
                "and the key aside to enrol everyone anew"
            )

    @classmethod
    def configured(cls, cfg: VisionSection, data_dir: Path, *, create: bool = False) -> Gallery:
        """The gallery the configuration names, for the manifest's recognizer."""
        from gateway.vision.models import load_manifest

        return cls.open(
            cfg.gallery.db_path(data_dir),
            cfg.gallery.key_path(data_dir),
            load_manifest(cfg.manifest).recognizer.model_id,
            create=create,
        )

    @classmethod
    def open(cls, db_path: Path, key_path: Path, model_id: str, create: bool = False) -> Gallery:
        """Open (and with ``create``, initialise: new key, empty file) and load the gallery."""
        if create and not key_path.exists():
            if db_path.exists() and not key_path.exists():  # not just created by another
                raise GalleryError(
                    f"{db_path} exists but its key {key_path} does not: put it back (from the "
                    "backup it was kept with), or move the gallery aside to enrol everyone anew"
                )
            try:  # or another process did, a moment ago: the same key to use
                create_key(key_path)
            except KeyFileError as exc:
                raise GalleryError(str(exc)) from None
        elif not db_path.exists() and not create:
            raise GalleryError(f"{db_path}: no face gallery (enrol someone first)")
        gallery = cls(db_path, key_path, model_id)
        gallery.reload()
        return gallery

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        held: sqlite3.Connection | None = getattr(self._held, "conn", None)
        return nullcontext(held) if held is not None else _connect(self.db_path)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the gallery's write lock (SQLite's, so against other processes too) from a check
        to the writes that rely on it. Inside, the snapshot is brought up to date and nobody else
        writes until the block ends: an erasure cannot land between "this elder is enrolled" and
        a learned face, nor another enrolment between the look-alike check and the add."""
        self._writable()
        with _connect(self.db_path) as conn:
            conn.execute("BEGIN IMMEDIATE")
            self._held.conn = conn
            try:
                if _generation(conn) != self._generation:
                    self.reload()
                yield
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._generation = -1  # the snapshot may show what was rolled back: reload
                raise
            finally:
                self._held.conn = None

    def _commit(
        self,
        work: Callable[[sqlite3.Connection], T],
        update: Callable[[Snapshot], Snapshot] | None,
    ) -> T:
        """Run ``work`` in one transaction, then apply the same change to the snapshot in
        memory (no re-decryption: bulk enrolment of thousands stays linear). Only when
        another process wrote in between, or without ``update``, is everything reloaded."""
        self._writable()
        held: sqlite3.Connection | None = getattr(self._held, "conn", None)
        if held is not None:  # inside ``writing``: committed when the block ends
            before, result = _advance(held, work)
        else:
            with self._connect() as conn:
                before, result = _write(conn, work)
        if before != self._generation or update is None:
            self.reload()
            return result
        with self._lock:
            self._snapshot = update(self._snapshot)
            self._generation = before + 1
            self.report.templates = self._snapshot.templates
            self.report.elders = len(self._snapshot.elders)
            self.report.learned = self._snapshot.learned_count
        return result

    def _check_key(self, conn: sqlite3.Connection) -> None:
        """A new gallery gets its check written (unless another process, creating it at the
        same moment, wrote one first: then theirs is verified like any other)."""
        select = "SELECT value FROM meta WHERE key = 'key_check'"
        row = conn.execute(select).fetchone()
        if row is None and conn.execute("SELECT 1 FROM templates LIMIT 1").fetchone():
            # templates without a check: any key would pass one written now
            self.report.key_mismatch = True
            log.error(
                "face gallery %s: its key check is missing, so the key in %s cannot be "
                "verified; writes are refused",
                self.db_path,
                self.key_path,
            )
            return
        if row is None:
            nonce = os.urandom(NONCE_BYTES)
            value = (nonce + self._aead.encrypt(nonce, KEY_CHECK, None)).hex()
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('key_check', ?)", (value,))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
            row = conn.execute(select).fetchone()
        try:
            blob = bytes.fromhex(row[0])
            self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
        except InvalidTag:
            problem = f"the key in {self.key_path} is not the one it was written with"
        except (ValueError, TypeError):
            problem = f"its key check is damaged, so the key in {self.key_path} cannot be verified"
        else:
            return
        self.report.key_mismatch = True  # writes are refused: they could use the wrong key
        log.error("face gallery %s: %s", self.db_path, problem)

    # ---- reading ---------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def generation(self) -> int:
        with self._connect() as conn:
            return _generation(conn)

    def _aad(self, template_id: str, elder_id: str, model_id: str) -> bytes:
        return f"{template_id}|{elder_id}|{model_id}".encode()

    def reload(self) -> LoadReport:
        """Decrypt every row into a new snapshot; rows that fail are counted and skipped."""
        report = LoadReport(key_mismatch=self.report.key_mismatch)
        rows: list[tuple[str, np.ndarray]] = []
        origins: list[str | None] = []
        ids: list[str] = []
        damaged: set[str] = set()
        with self._connect() as conn:
            generation = _generation(conn)
            cursor = conn.execute(
                # as blobs: a damaged row may hold text that is not even UTF-8
                "SELECT CAST(template_id AS BLOB), CAST(elder_id AS BLOB), "
                "CAST(model_id AS BLOB), CAST(nonce AS BLOB), CAST(ciphertext AS BLOB), "
                "CAST(learned_from AS BLOB) FROM templates"
            )
            for raw_template, raw_elder, raw_model, nonce, ciphertext, raw_origin in cursor:
                template_id, elder_id = _text(raw_template), _text(raw_elder)
                model_id, origin = _text(raw_model), _text(raw_origin)
                if (
                    template_id is None
                    or elder_id is None
                    or model_id is None
                    or (raw_origin is not None and origin is None)
                ):
                    report.undecryptable += 1
                    damaged.add(bytes(raw_elder or b"").decode("utf-8", "replace"))
                    continue
                if model_id != self.model_id:
                    report.other_model += 1
                    continue
                try:
                    plain = self._aead.decrypt(
                        nonce, ciphertext, self._aad(template_id, elder_id, model_id)
                    )
                    vector = np.frombuffer(plain, dtype=np.float32)
                except (InvalidTag, ValueError, TypeError):
                    # wrong tag, a nonce of the wrong length or type: a damaged row, not a
                    # reason to lose every other elder
                    report.undecryptable += 1
                    damaged.add(elder_id)
                    continue
                if vector.shape != (self.dim,):
                    report.undecryptable += 1
                    damaged.add(elder_id)
                    continue
                rows.append((elder_id, vector))
                origins.append(origin)
                ids.append(template_id)
            look_alikes = self._read_look_alikes(conn)
        snapshot = Snapshot.build(rows, self.dim, origins, ids)
        report.templates = snapshot.templates
        report.elders = len(snapshot.elders)
        report.learned = snapshot.learned_count
        with self._lock:
            self._snapshot = snapshot
            self._look_alikes = look_alikes
            self._generation = generation
            self.report = report
            self.damaged = tuple(sorted(damaged))
        if report.undecryptable or report.other_model:
            log.warning(
                "face gallery: %d templates loaded; %d failed to decrypt, %d from another model",
                report.templates,
                report.undecryptable,
                report.other_model,
            )
        return report

    def refresh_if_changed(self) -> bool:
        """Reload when another process (enrolment) has written since the last load.

        The counter asks every few seconds all day. Opening the file creates SQLite's side
        files and deletes them at the close, writes to the card each time for nothing: a file
        and log unchanged since the last look (``_file_stamp``) are not opened again."""
        stamp = _file_stamp(self.db_path)
        if stamp is not None and (stamp.files, self._generation) == self._unchanged:
            return False
        changed = self.generation() != self._generation
        if changed:
            self.reload()
        # a write in the same tick as this look may leave no other trace in the stamp: a
        # stamp that recent is checked again, by opening the file, at the next look
        quiet = stamp is not None and not stamp.recent()
        self._unchanged = (stamp.files, self._generation) if quiet and stamp is not None else None
        return changed

    def search(self, probe: np.ndarray, k: int = 3, exclude: str | None = None) -> SearchResult:
        return self._snapshot.search(probe, k, exclude)

    def look_alikes(self, elder_id: str) -> tuple[str, ...]:
        """The elders in the confusable register with this one, most similar first: the
        counter may ask them for a second factor."""
        return self._look_alikes.get(elder_id, ())

    def _read_look_alikes(self, conn: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
        pairs: dict[str, list[str]] = {}
        for a, b, _ in self._confusable_rows(conn):
            pairs.setdefault(a, []).append(b)
            pairs.setdefault(b, []).append(a)
        return {elder: tuple(others) for elder, others in pairs.items()}

    def _confusable_rows(self, conn: sqlite3.Connection) -> list[tuple[str, str, float]]:
        """The register, most similar first; a damaged row (an id that is not UTF-8) is
        skipped, not the reason the gallery cannot load."""
        rows = conn.execute(
            "SELECT CAST(elder_a AS BLOB), CAST(elder_b AS BLOB), score FROM confusable "
            "WHERE model_id = ? ORDER BY score DESC",
            (self.model_id,),
        )
        out = []
        for raw_a, raw_b, score in rows:
            a, b = _text(raw_a), _text(raw_b)
            if a is not None and b is not None:
                out.append((a, b, float(score)))
        return out

    def _refresh_look_alikes(self) -> None:
        with self._connect() as conn:
            look_alikes = self._read_look_alikes(conn)
        with self._lock:
            self._look_alikes = look_alikes

    def confusables(self) -> list[Confusable]:
        with self._connect() as conn:
            return [Confusable(a, b, s) for a, b, s in self._confusable_rows(conn)]

    # ---- writing ---------------------------------------------------------------------------

    def _writable(self) -> None:
        if self.report.key_mismatch:
            raise GalleryError(
                f"{self.db_path}: refusing to write with a key that does not match the gallery"
            )

    def add(
        self,
        elder_id: str,
        vectors: Iterable[np.ndarray],
        learned_from: str | None = None,
        *,
        retire_oldest_learned: bool = False,
    ) -> Written:
        """``retire_oldest_learned``: in the same transaction, the elder's oldest learned
        template goes, so a newer view of an ageing face takes its place."""
        return self.add_many([(elder_id, list(vectors))], learned_from, retire_oldest_learned)

    def add_many(
        self,
        items: Iterable[tuple[str, Sequence[np.ndarray]]],
        learned_from: str | None = None,
        retire_oldest_learned: bool = False,
    ) -> Written:
        """Encrypt and store templates of many elders in one transaction (bulk imports).
        ``learned_from``: the decision a staff confirmation taught these from."""
        now = int(time.time() * 1000)
        rows: list[tuple[str, np.ndarray]] = []
        written = Written([], [])

        def work(conn: sqlite3.Connection) -> None:
            # later than every template already there, whatever the wall clock says: a Pi
            # without RTC may be set back, and the oldest learned face retired must not be
            # the one just learned
            (latest,) = conn.execute("SELECT MAX(created_ms) FROM templates").fetchone()
            stamp = now if latest is None else max(now, latest + 1)
            for elder_id, vectors in items:
                if retire_oldest_learned:
                    retired = conn.execute(
                        "DELETE FROM templates WHERE template_id = (SELECT template_id "
                        "FROM templates WHERE elder_id = ? AND model_id = ? "
                        "AND learned_from IS NOT NULL ORDER BY created_ms, rowid LIMIT 1) "
                        "RETURNING learned_from",
                        (elder_id, self.model_id),
                    )
                    written.retired.extend(str(r[0]) for r in retired)
                for vector in vectors:
                    template_id = str(uuid.uuid4())
                    nonce = os.urandom(NONCE_BYTES)
                    plain = np.ascontiguousarray(vector, dtype=np.float32)
                    ciphertext = self._aead.encrypt(
                        nonce, plain.tobytes(), self._aad(template_id, elder_id, self.model_id)
                    )
                    conn.execute(
                        "INSERT INTO templates (template_id, elder_id, model_id, created_ms, "
                        "nonce, ciphertext, learned_from) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            template_id,
                            elder_id,
                            self.model_id,
                            stamp,
                            nonce,
                            ciphertext,
                            learned_from,
                        ),
                    )
                    rows.append((elder_id, plain))
                    written.ids.append(template_id)

        def update(snap: Snapshot) -> Snapshot:
            origins = [*snap.learned_from, *[learned_from] * len(rows)]
            return Snapshot.build(
                [*snap.rows(), *rows], self.dim, origins, [*snap.ids, *written.ids]
            )

        # a retired row is not known to the snapshot by id: reload instead
        self._commit(work, None if retire_oldest_learned else update)
        return written

    def remove_learned(self, elder_id: str, learned_from: str | None = None) -> int:
        """Delete the elder's learned templates (only those from one decision, if given);
        enrolled photos stay. Returns how many went."""

        def work(conn: sqlite3.Connection) -> int:
            sql = "DELETE FROM templates WHERE elder_id = ? AND learned_from IS NOT NULL"
            params = [elder_id]
            if learned_from is not None:
                sql += " AND learned_from = ?"
                params.append(learned_from)
            return int(conn.execute(sql, params).rowcount)

        return self._commit(work, None)

    def holds(self, elder_id: str, template_id: str) -> bool:
        """Whether this template of the elder is still in the file (not just the snapshot)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT 1 FROM templates WHERE template_id = ? AND elder_id = ?",
                (template_id, elder_id),
            ).fetchone()
        return row is not None

    def learned(self, elder_id: str | None = None) -> list[str]:
        """The decisions templates were learned from (of one elder, or all), oldest first."""
        sql = "SELECT learned_from FROM templates WHERE learned_from IS NOT NULL AND model_id = ?"
        params = [self.model_id]
        if elder_id is not None:
            sql += " AND elder_id = ?"
            params.append(elder_id)
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY created_ms, rowid", params).fetchall()
        return [str(r[0]) for r in rows]

    def erasures(self) -> list[tuple[str, str | None]] | None:
        """The elders erased (``erase``) that the counter has not taken in yet, at its next
        reload or, if the gateway died before that reload, at its next start: (token, elder),
        the elder None if the entry does not open (sealed with another key). None if the file
        changed since the last load: an elder erased meanwhile would look still enrolled."""
        with self._connect() as conn:
            conn.execute("BEGIN")  # the list and the generation as of one moment
            try:
                if _generation(conn) != self._generation:
                    return None
                rows = conn.execute("SELECT token, CAST(sealed AS BLOB) FROM erasures").fetchall()
            finally:
                conn.execute("COMMIT")
        out: list[tuple[str, str | None]] = []
        for token, sealed in rows:
            try:
                elder: str | None = self._erasures_aead.decrypt(
                    sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], str(token).encode()
                ).decode()
            except (InvalidTag, ValueError, TypeError):
                elder = None
            out.append((str(token), elder))
        return out

    def taken_in(self, tokens: Iterable[str]) -> None:
        """The counter has these in hand. Not a change of the gallery: nobody reloads."""
        entries = [(t,) for t in tokens]
        if not entries:
            return
        with self._connect() as conn, immediate(conn):
            conn.executemany("DELETE FROM erasures WHERE token = ?", entries)

    def set_confusable(self, elder_id: str, pairs: Iterable[tuple[str, float]]) -> None:
        """Replace the register's entries for ``elder_id`` (pairs are stored in id order)."""
        now = int(time.time() * 1000)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM confusable WHERE (elder_a = ? OR elder_b = ?) AND model_id = ?",
                (elder_id, elder_id, self.model_id),
            )
            for other, score in pairs:
                a, b = sorted((elder_id, other))
                conn.execute(
                    "INSERT OR REPLACE INTO confusable VALUES (?, ?, ?, ?, ?)",
                    (a, b, float(score), self.model_id, now),
                )

        self._commit(work, lambda snap: snap)
        self._refresh_look_alikes()


def has_rows(db_path: Path, elder_id: str) -> bool | None:
    """Whether the gallery file holds rows of the elder, read without the key (ids are kept
    in the clear: erase finds them so too); None when the file cannot be read."""
    if not db_path.exists():
        return False
    try:
        with _connect(db_path) as conn:
            row = conn.execute(
                "SELECT 1 FROM templates WHERE elder_id = ? LIMIT 1", (elder_id,)
            ).fetchone()
    except (GalleryError, sqlite3.Error):
        return None
    return row is not None


def erase(
    db_path: Path,
    elder_id: str,
    *,
    key_path: Path | None = None,
    wait_s: float = CHECKPOINT_WAIT_S,
    now: Callable[[], float] = time.time,
) -> int:
    """Erase an elder's templates and register entries without opening the gallery: needs
    neither the key nor the models, so consent withdrawn is honoured even when the face stage
    cannot run. A running gallery sees the change at its next refresh; with the key
    (``key_path``) the gallery also lists her, sealed, for the counter. Returns how many
    templates were erased (0 without a gallery file).

    The rows are overwritten (``secure_delete``) in the WAL; the checkpoint copies that into
    the file and empties the WAL at once. Without it, while any other process had the gallery
    open (a counter's refresh, an enrolment) the file kept her rows until the last one closed.
    A reader still in the middle of a read after ``wait_s`` keeps the WAL from being emptied:
    that is logged, not passed over."""
    if not db_path.exists():
        return 0
    with _connect(db_path) as conn:
        try:
            work = partial(
                _erase,
                elder_id=elder_id,
                now_ms=int(now() * 1000),
                listed=_sealed_entry(key_path, elder_id),
            )
            _, removed = _write(conn, work)
        except sqlite3.Error as exc:
            raise _unusable(db_path, exc, "nothing erased") from None
        if not emptied_wal(conn, wait_s):
            log.warning(
                "face gallery %s: the erased rows are overwritten, but its WAL could not be "
                "emptied: another program has been reading the gallery for over %.0f s (an "
                "sqlite3 shell, a backup). The file keeps the erased rows until the WAL is "
                "checkpointed, at the latest when the last program that has it open closes it",
                db_path,
                wait_s,
            )
    return removed


def _erase(
    conn: sqlite3.Connection, elder_id: str, now_ms: int, listed: tuple[str, bytes] | None
) -> int:
    """Her rows go, and she is listed for the counter in the same transaction: the decisions
    a running counter makes about her until its next reload are not in the journal the
    erasure read, and a counter that dies before that reload must still learn she went."""
    removed = conn.execute("DELETE FROM templates WHERE elder_id = ?", (elder_id,)).rowcount
    conn.execute("DELETE FROM confusable WHERE elder_a = ? OR elder_b = ?", (elder_id, elder_id))
    conn.execute(ERASURES)  # a gallery a gateway before this table made
    conn.execute("DELETE FROM erasures WHERE erased_ms < ?", (now_ms - ERASURE_KEPT_MS,))
    if listed is not None and removed:  # with no rows of hers, no counter can know her
        conn.execute("INSERT INTO erasures VALUES (?, ?, ?)", (listed[0], now_ms, listed[1]))
    return int(removed)


def _sealed_entry(key_path: Path | None, elder_id: str) -> tuple[str, bytes] | None:
    """Her id sealed with the gallery's key, under a random token: the file keeps nothing of
    her a reader could use. Without a usable key no counter can have her in memory, so there
    is nobody to tell."""
    if key_path is None:
        return None
    try:
        aead = AESGCM(derive(read_key(key_path), ERASURE_PURPOSE))
    except KeyFileError:
        return None
    token = uuid.uuid4().hex
    nonce = os.urandom(NONCE_BYTES)
    return token, nonce + aead.encrypt(nonce, elder_id.encode(), token.encode())


def _migrate(conn: sqlite3.Connection) -> None:
    """Galleries written before templates recorded where they came from: every template in
    them was enrolled from a photo. Takes the write lock only when there is something to do,
    so opening a current gallery never waits for a long enrolment."""

    def current() -> bool:
        return any(row[1] == "learned_from" for row in conn.execute("PRAGMA table_info(templates)"))

    if current():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not current():  # another process may have got there first
            conn.execute("ALTER TABLE templates ADD COLUMN learned_from TEXT")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _wal(conn: sqlite3.Connection, wait_s: float = 10.0) -> None:
    """Switching a new file to WAL takes it whole and does not wait for the busy timeout: a
    second writer creating the gallery at the same moment waits its turn instead of failing."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def _connect(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A short-lived connection; enrolment (another process) may write between uses.

    Any SQLite error (a damaged file, a full disk) becomes a ``GalleryError``: the face stage
    then reports it instead of taking the gateway down with a raw ``sqlite3`` exception."""
    try:
        refuse_link(db_path)
    except OSError as exc:
        raise GalleryError(f"{db_path}: {exc.strerror}") from None
    if not db_path.exists():  # never created here by SQLite with the umask's mode
        raise GalleryError(f"{db_path}: the face gallery is gone (deleted while in use?)")
    try:
        # read-write, never create: only Gallery creates the file, and creates it private
        uri = f"{db_path.absolute().as_uri()}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise GalleryError(f"{db_path}: cannot open the face gallery ({exc})") from None
    try:
        try:
            _wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            # an erased elder's rows are overwritten, not left in free pages beside the key;
            # Debian's SQLite does this by default, other builds need asking
            conn.execute("PRAGMA secure_delete=ON")
        except sqlite3.DatabaseError as exc:
            raise _unusable(db_path, exc, "not a face gallery") from None
        yield conn
    except sqlite3.Error as exc:
        raise _unusable(db_path, exc, "face gallery damaged or unusable") from exc
    finally:
        conn.close()


def _unusable(db_path: Path, exc: sqlite3.Error, what: str) -> GalleryError:
    """A full disk is named as such: opening the gallery needs room for its -shm file, and
    "not a face gallery (disk I/O error)" would have staff move a sound file aside."""
    if disk_full(exc):
        free_kib = disk_free_bytes(db_path.parent) // 1024
        return GalleryError(
            f"{db_path}: the disk is full ({free_kib} KiB free), the face gallery is not "
            "damaged: free space on that disk (df -h, du -sh /var/log) and try again"
        )
    return GalleryError(f"{db_path}: {what} ({exc})")


def _write(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> tuple[int, T]:
    """``work`` in one transaction that also advances the generation, which tells every
    process holding the gallery in memory to reload. Returns the generation before."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        before, result = _advance(conn, work)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return before, result


def _advance(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> tuple[int, T]:
    """``work``, and the generation advanced, in the transaction already open on ``conn``."""
    before = _generation(conn)
    result = work(conn)
    # an upsert: a gallery created by a process that died between its first two writes has
    # no generation row, and counters would never see a change (an erased elder matched on)
    conn.execute(
        "INSERT INTO meta VALUES ('generation', 1) ON CONFLICT (key) "
        "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )
    return before, result


RACY_S = 2.0  # a file written less than this before it was looked at may change unseen


class _Stamp(NamedTuple):
    """The gallery file and its write-ahead log as the file system shows them: any commit
    changes one of them (the log while it is there, the file at the checkpoint)."""

    files: tuple[tuple[int, int, int, int] | None, ...]
    newest_ns: int
    taken_ns: int

    def recent(self) -> bool:
        return self.taken_ns - self.newest_ns < RACY_S * 1e9


def _file_stamp(db_path: Path) -> _Stamp | None:
    """Inode, size and change times of the gallery and of its log (None: no log); None if
    the gallery cannot be looked at (the open then says why)."""
    taken_ns = time.time_ns()
    files: list[tuple[int, int, int, int] | None] = []
    for path in (db_path, db_path.with_name(db_path.name + "-wal")):
        try:
            st = path.stat()
        except FileNotFoundError:
            if path == db_path:
                return None
            files.append(None)
            continue
        except OSError:
            return None
        files.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    newest = max(max(f[2], f[3]) for f in files if f is not None)
    return _Stamp(tuple(files), newest, taken_ns)


def _text(value: bytes | None) -> str | None:
    """A text column read as a blob; None when it is missing or not UTF-8 (damaged)."""
    if value is None:
        return None
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _generation(conn: sqlite3.Connection) -> int:
    """A damaged value reads as 0, as SQLite casts it: the next write makes it 1, and it
    counts on from there, so an erasure is never held up by it."""
    row = conn.execute(
        "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'"
    ).fetchone()
    return int(row[0]) if row else 0
