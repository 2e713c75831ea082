"""Platform -> gateway requests: ``request/<op>`` -> schema -> handler -> ``response/<op>``.

Every request carries a ``transaction`` id. A request is applied at most once: its response is
committed together with whatever the handler changes, and a repeat of the transaction is answered
from that record without running the handler again. Bad input (oversized, not JSON, schema
violations, unknown ops) gets an error response, a log line and a counter, and changes nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import queue
import re
import sqlite3
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from gateway import jsonin
from gateway.config import DownlinkSection
from gateway.contract import request_validator
from gateway.events import compact_json
from gateway.lifecycle import Worker
from gateway.logs import RateLimitedLog
from gateway.store import DomainWrite, StorageFull, Store, StoreClosed, Withdrawn
from gateway.store.cipher import EventCipher, Undecryptable, answer_key
from gateway.store.db import connect, overwriting
from gateway.sync.mqtt import LIVE, Done, Handover, Message
from gateway.sync.topics import Topics

log = logging.getLogger(__name__)
PRUNE_EVERY = 100
QUEUED_OVERHEAD = 256  # bytes a waiting request costs beyond its topic and payload
MESSAGE_MAX = 500  # characters of an error message: a JSON error or a key name may be long
COMMIT_TIMEOUT_S = 30.0  # how long a request waits for its response to be stored
HELD_MAX_BYTES = 1_048_576  # answers kept while there is no connection to take them
INTERNAL = "internal error (see the log)"
RETAINED = "retained: not applied; publish requests with retain=false, and clear this one"
STOPPING = "not applied: the gateway is stopping; send again"
UNREADABLE = "already applied; its stored answer does not open (damaged, or another key)"
SEAL_BATCH = 500  # answers stored in plain text by an earlier version, sealed per commit
PROBLEMS_READ = 16  # schema problems looked at: one per item of a 4 MiB array would be gigabytes
TRANSACTION_MAX = 64  # characters, as the request schemas allow: longer ones are not echoed
REFUSAL_PARSE_MAX = 65_536  # bytes of a request parsed on paho's thread to find its transaction
REFUSAL_SCAN = 4096  # ... and of a larger one, searched for it
DIGEST = "request_sha256"  # kept with a stored answer, never sent: which request it answered
_TRANSACTION = re.compile(rb'"transaction"\s*:\s*("(?:[^"\\]|\\.){1,%d}")' % TRANSACTION_MAX)


class RequestError(Exception):
    """A handler's way to refuse a request cleanly; the message goes back to the sender, and
    to the log unless ``personal``: a refusal that names the elders a face resembled, or its
    scores against them (a link of a face to elders the log would keep past their erasure)."""

    def __init__(self, message: str, *, personal: bool = False) -> None:
        super().__init__(message)
        self.personal = personal


@dataclass(frozen=True)
class Reply:
    data: Mapping[str, Any] = field(default_factory=dict)
    writes: Sequence[DomainWrite] = ()


Handler = Callable[[Mapping[str, Any]], Reply]


@dataclass(frozen=True)
class Operation:
    """``applies_elsewhere``: the handler changes state outside the store's transaction (the
    face gallery is its own file), so a response that fails to commit cannot undo it. The
    sender is then told it was applied, not that it was not; such handlers must be idempotent,
    since a repeat of the transaction runs them again."""

    name: str
    handler: Handler
    applies_elsewhere: bool = False


@dataclass(frozen=True)
class _Incoming:
    topic: str
    payload: bytes
    size: int
    cost: int
    copy: bytes | None  # what tells a copy of it handed over again; None: none is looked for
    dones: list[Done]  # its own, then those of copies handed over again while it waited


class Downlink:
    name = "downlink"

    def __init__(
        self,
        cfg: DownlinkSection,
        store: Store,
        topics: Topics,
        send: Callable[[Message], bool],
        operations: Sequence[Operation],
        *,
        commit_timeout_s: float = COMMIT_TIMEOUT_S,
    ) -> None:
        self.cfg = cfg
        self._commit_timeout_s = commit_timeout_s
        self._store = store
        self._topics = topics
        self._send = send
        self._ops = {op.name: op for op in operations}
        self._validators: dict[str, Draft202012Validator] = {
            name: request_validator(name) for name in self._ops
        }
        self._queue: queue.SimpleQueue[_Incoming | None] = queue.SimpleQueue()
        self._worker = Worker("downlink", self._run, wake=lambda: self._queue.put(None))
        self._reader: sqlite3.Connection | None = None
        self._rate_log = RateLimitedLog(log, 30)
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._since_prune = 0
        self._count_lock = threading.Lock()
        self._waiting_lock = threading.Lock()
        self._waiting = 0  # requests received and not yet answered
        self._waiting_bytes = 0
        self._stopping = False  # under _waiting_lock: nothing is queued once it is set
        self._holding: dict[bytes, _Incoming] = {}  # under _waiting_lock: queued or in hand
        self._send_lock = threading.Lock()
        self._held: deque[Message] = deque()  # under _send_lock: answers no connection took
        self._held_bytes = 0
        self._stopped = False  # under _send_lock: what is held now would never go out

    def start(self) -> None:
        self._reader = connect(self._store.path)
        self._reader.execute("PRAGMA query_only = ON")
        with self._waiting_lock:
            self._stopping = False
        with self._send_lock:
            self._stopped = False
        self._worker.start()

    def stop(self) -> None:
        """The request in hand is finished; those still waiting, and any that arrive from
        now on, are answered "stopping" and not applied (and then acknowledged to the broker:
        the answer tells the sender to send them again). Call it while the connection is
        still up, so the answers go out."""
        with self._waiting_lock:
            self._stopping = True
        self._worker.stop()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        with self._send_lock:
            unsent = len(self._held)
            self._held.clear()
            self._held_bytes = 0
            self._stopped = True
        if unsent:  # no connection took them before the stop: said, not dropped silently
            with self._count_lock:
                self.errors["unanswered"] += unsent
            log.warning("downlink: %d answers not sent: no connection before the stop", unsent)

    def healthy(self) -> bool:
        return self._worker.alive()

    def link_up(self) -> None:
        """A connection is up: the answers made while there was none go out now. The broker
        had its PUBACK for each request once answered and will not hand it over again, so an
        answer dropped for want of a connection would leave the sender waiting for ever. The
        requests it keeps for us while we are offline arrive right after the CONNACK, before
        the link is ready to publish: their answers are the ones held here."""
        with self._send_lock:
            while self._held:
                if not self._send(self._held[0]):
                    return
                self._held_bytes -= len(self._held.popleft().payload)

    def health(self) -> dict[str, Any]:
        with self._count_lock:
            return {"requests": dict(self.counts), "errors": dict(self.errors)}

    @property
    def operations(self) -> list[str]:
        return sorted(self._ops)

    def received(self, topic: str, payload: bytes, how: Handover = LIVE) -> None:
        """Called on paho's thread: queue and return. Requests may carry photos, so a burst
        (the broker hands over a day's requests at reconnect) must not fill the memory: an
        oversized payload is not kept while it waits, and past ``waiting_max_bytes`` the
        sender is told to send again later. paho's thread is never held up: it also carries
        the alarms. A retained request is refused: the broker hands it over again at every
        subscription, and once its transaction has been forgotten it would be applied again.
        ``how.done`` is called once the request is answered or refused, not before: the broker
        hands over again one the gateway was killed holding, and at a reconnect one still
        waiting here (``how.resent``). Such a copy of a request still waiting or in hand is
        neither queued nor answered: it is done when the request is (counted as
        ``handed_over_again``). A request sent twice by the platform is two requests."""
        retained, resent, done = how
        size = len(payload)
        kept = payload if size <= self.cfg.max_payload_bytes else b""
        cost = len(kept) + len(topic) + QUEUED_OVERHEAD
        copy = None
        if kept and not retained:
            copy = hashlib.blake2b(topic.encode() + b"\0" + kept, digest_size=16).digest()
        queued = False
        try:
            if retained and not payload:
                return  # the sender clearing a retained request, as its refusal asked: not one
            if retained:
                self._refuse(topic, kept, "retained", RETAINED)
                return
            with self._waiting_lock:
                original = self._holding.get(copy) if copy is not None and resent else None
                if original is not None:
                    original.dones.append(done)
                    queued = True
                    self._tally(self.counts, "handed_over_again")
                    return
                stopping = self._stopping
                waiting = self._waiting
                admit = waiting == 0 or self._waiting_bytes + cost <= self.cfg.waiting_max_bytes
                if admit and not stopping:
                    self._waiting += 1
                    self._waiting_bytes += cost
                    item = _Incoming(topic, kept, size, cost, copy, [done])
                    if copy is not None:
                        self._holding[copy] = item
                    self._queue.put(item)
                    queued = True
            if stopping:
                self._refuse(topic, kept, "stopping", STOPPING)
            elif not admit:
                self._busy(topic, kept, waiting)
        finally:
            if not queued:
                done()

    def _busy(self, topic: str, payload: bytes, waiting: int) -> None:
        self._refuse(topic, payload, "busy", f"busy: {waiting} requests waiting, send again")

    def _refuse(self, topic: str, payload: bytes, reason: str, message: str) -> None:
        """Answered on paho's thread without being looked at further."""
        op = self._op_of(topic)
        if op is None:
            return
        self._tally(self.counts, "received")
        self._error(op, _transaction_of(payload), reason, message)

    def _run(self, stopping: threading.Event) -> None:
        self._seal_plain_answers(stopping)
        while not stopping.is_set():
            item = self._queue.get()
            if item is None:
                continue
            try:
                self.handle(item.topic, item.payload, item.size)
            except Exception:
                self._tally(self.errors, "internal")
                log.exception("downlink: request on %s failed", item.topic)
                self._answer_failure(item.topic)
            finally:
                self._done(item)
        self._refuse_waiting()

    def _seal_plain_answers(self, stopping: threading.Event) -> None:
        """Answers stored before they were sealed name elders and the photos sent for them:
        sealed now, a batch per commit so an alarm does not wait behind them all."""
        cipher = self._cipher()

        def batch(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT txn, response FROM requests WHERE typeof(response) = 'text' LIMIT ?",
                (SEAL_BATCH,),
            ).fetchall()
            with overwriting(conn):  # the plain text, not left on the pages it frees
                conn.executemany(
                    "UPDATE requests SET response = ? WHERE txn = ?",
                    [(cipher.seal(answer_key(txn), text), txn) for txn, text in rows],
                )
            return len(rows)

        sealed = 0
        try:
            while not stopping.is_set():
                [done] = self._store.wait([self._store.write(batch)], self._commit_timeout_s)
                sealed += done
                if done < SEAL_BATCH:
                    break
        except (sqlite3.Error, StoreClosed, StorageFull, TimeoutError) as exc:
            log.warning("downlink: stored answers left unsealed until the next start: %s", exc)
        if sealed:
            log.info("downlink: %d stored answers sealed", sealed)

    def _cipher(self) -> EventCipher:
        cipher = self._store.cipher
        assert cipher is not None, "requests are handled only while the store is open"
        return cipher

    def _refuse_waiting(self) -> None:
        """At stop: each request still waiting is answered, not applied: a queue of
        enrolments could take minutes, longer than the service manager waits for a stop."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                continue
            try:
                self._refuse(item.topic, item.payload, "stopping", STOPPING)
            except Exception:
                log.exception("downlink: cannot answer the request on %s", item.topic)
            finally:
                self._done(item)

    def _done(self, item: _Incoming) -> None:
        with self._waiting_lock:
            self._waiting -= 1
            self._waiting_bytes -= item.cost
            if item.copy is not None and self._holding.get(item.copy) is item:
                del self._holding[item.copy]
            dones = list(item.dones)  # a copy arriving from now on is queued afresh
        for done in dones:
            done()

    def _answer_failure(self, topic: str) -> None:
        """The last resort: the sender hears that its request failed. Whether it was applied
        is unknown here; a retry with the same transaction is answered from the record."""
        op = self._topics.op_of(topic)
        if op is None:
            return
        response = {"transaction": None, "op": op, "status": "error", "message": INTERNAL}
        try:
            self._respond(op, response)
        except Exception:
            log.exception("downlink: cannot answer the failed %s request", op)

    # ---- one request ---------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, size: int | None = None) -> dict[str, Any] | None:
        op = self._op_of(topic)
        if op is None:
            return None
        self._tally(self.counts, "received")
        size = len(payload) if size is None else size
        if size > self.cfg.max_payload_bytes:
            return self._error(
                op, None, "too_large", f"{size} B, over {self.cfg.max_payload_bytes} B"
            )
        try:
            request = _json(payload, unique_keys=True)
        except ValueError as exc:  # not UTF-8, not JSON, too deep, a number of over 4300 digits
            return self._error(op, None, "invalid_json", f"not JSON: {exc}")
        if _lone_surrogate(request):
            return self._error(
                op, None, "invalid_json", "not JSON text: a string holds half a surrogate pair"
            )
        txn = _transaction(request)
        if op not in self._ops:
            return self._error(op, txn, "unknown_op", f"unknown op '{op}'")
        problems = sorted(
            itertools.islice(self._validators[op].iter_errors(request), PROBLEMS_READ),
            key=lambda e: list(e.path),
        )
        if problems or txn is None:
            first = problems[0] if problems else None
            where = "/".join(str(p) for p in first.path) if first else "transaction"
            text = _schema_problem(first) if first else "missing"
            return self._error(op, txn, "schema", f"{where or 'request'}: {text}")
        digest = _digest(request)
        repeat = self._answer_repeat(op, txn, digest)
        if repeat is not None:
            return repeat
        try:
            reply = self._ops[op].handler(request)
        except RequestError as exc:
            return self._error(op, txn, "refused", str(exc), logged=not exc.personal)
        except Exception:  # a fault of ours: the sender still gets an answer, and may retry
            log.exception("downlink: %s request failed", op)
            return self._error(op, txn, "internal", f"not applied: {INTERNAL}")
        response = {
            "transaction": txn,
            "op": op,
            "status": "ok",
            "message": "",
            "data": dict(reply.data),
        }
        elsewhere = self._ops[op].applies_elsewhere
        try:
            self._commit(txn, op, {**response, DIGEST: digest}, reply.writes)
        except (sqlite3.Error, StoreClosed, StorageFull) as exc:  # rolled back
            if isinstance(exc, sqlite3.IntegrityError):
                # an earlier attempt's commit, answered as not stored in time, landed meanwhile
                repeat = self._answer_repeat(op, txn, digest)
                if repeat is not None:
                    return repeat
            if not elsewhere:
                return self._error(op, txn, "store", f"not applied: {exc}")
            self._tally(self.errors, "unremembered")
            self._rate_log.warning(
                "unremembered", "downlink: %s applied, its response not stored: %s", op, exc
            )
            response["message"] = (
                f"applied, but not remembered ({exc}): a repeat of this transaction is "
                "handled as a new request"
            )[:MESSAGE_MAX]
        except TimeoutError as exc:
            # Withdrawn: taken back, never to be committed; otherwise the writer was stuck in
            # the very commit that holds it, which may yet end
            within = f"the store did not commit within {self._commit_timeout_s:g} s"
            taken_back = isinstance(exc, Withdrawn)
            if not elsewhere:
                return self._error(
                    op,
                    txn,
                    "store_timeout",
                    f"not applied: {within}; send it again"
                    if taken_back
                    else f"not known whether applied: {within}; send the same transaction "
                    "again later: if it was applied, the answer comes from the record, "
                    "otherwise it is applied then",
                )
            self._tally(self.errors, "store_timeout")
            self._rate_log.warning(
                "store_timeout", "downlink: %s applied, its response not stored in time", op
            )
            response["message"] = (
                f"applied, but not remembered ({within}): a repeat of this transaction is "
                "handled as a new request"
                if taken_back
                else f"applied, but perhaps not remembered ({within}): a repeat of this "
                "transaction may be handled as a new request"
            )
        self._tally(self.counts, "ok")
        self._respond(op, response)
        return response

    def _answer_repeat(self, op: str, txn: str, digest: str) -> dict[str, Any] | None:
        """A transaction already applied is answered from its record, not applied again; one
        used for another request (a sender that reuses its ids) is refused, not answered as
        if that request had been applied. Records stored before requests were told apart, or
        rewritten by an erasure, have no digest: a repeat is all they can say."""
        try:
            stored = self._stored(txn)
        except Undecryptable:
            return self._error(op, txn, "unreadable_record", UNREADABLE)
        if stored is None:
            return None
        stored_op, response = stored
        if stored_op != op:
            return self._error(op, txn, "transaction_reused", f"already used for {stored_op}")
        if response.pop(DIGEST, digest) != digest:
            return self._error(
                op, txn, "transaction_reused", f"already used for another {op} request"
            )
        self._tally(self.counts, "repeat")
        response = {**response, "repeat": True}
        self._respond(op, response)
        return response

    def _tally(self, counter: Counter[str], key: str) -> None:
        """Counted from two threads: the worker, and paho's when a request is answered busy."""
        with self._count_lock:
            counter[key] += 1

    def _op_of(self, topic: str) -> str | None:
        op = self._topics.op_of(topic)
        if op is None:
            self._tally(self.errors, "bad_topic")
            self._rate_log.warning("bad_topic", "downlink: ignored request on %r", topic[-80:])
        return op

    def _stored(self, txn: str) -> tuple[str, dict[str, Any]] | None:
        """Raises Undecryptable when the record of the transaction does not open."""
        assert self._reader is not None
        row = self._reader.execute(
            "SELECT op, response FROM requests WHERE txn = ?", (txn,)
        ).fetchone()
        if row is None:
            return None
        return row[0], json.loads(self._cipher().open(answer_key(txn), row[1]))

    def _commit(
        self, txn: str, op: str, response: dict[str, Any], writes: Sequence[DomainWrite]
    ) -> None:
        steady = self._store.steady_ms()
        keep = self.cfg.remember_transactions
        cipher = self._cipher()
        self._since_prune += 1
        prune = self._since_prune >= PRUNE_EVERY
        if prune:
            self._since_prune = 0

        def apply(conn: sqlite3.Connection) -> None:
            for w in writes:
                conn.execute(w.sql, w.params)
            conn.execute(
                "INSERT INTO requests (txn, op, response, steady_ms) VALUES (?, ?, ?, ?)",
                (txn, op, cipher.seal(answer_key(txn), compact_json(response)), steady),
            )
            if prune:
                conn.execute(
                    "DELETE FROM requests WHERE txn NOT IN "
                    "(SELECT txn FROM requests ORDER BY steady_ms DESC LIMIT ?)",
                    (keep,),
                )

        self._store.wait([self._store.write(apply)], self._commit_timeout_s)

    def _error(
        self, op: str, txn: str | None, reason: str, message: str, *, logged: bool = True
    ) -> dict[str, Any]:
        """``logged``: the message goes to the log too (not one that names the elders a face
        resembled: the log outlives their erasure)."""
        self._tally(self.errors, reason)
        if len(message) > MESSAGE_MAX:
            message = message[: MESSAGE_MAX - 3] + "..."
        said = message if logged else "the answer says why"
        self._rate_log.warning(reason, "downlink: %s request refused (%s): %s", op, reason, said)
        response = {"transaction": txn, "op": op, "status": "error", "message": message}
        self._respond(op, response)
        return response

    def _respond(self, op: str, response: Mapping[str, Any]) -> None:
        """Published now, or held until the next connection (``link_up``). Not once stopped:
        paho's thread may still hand over a request, refused "stopping", and nothing would
        count an answer held then."""
        msg = Message(self._topics.response(op), compact_json(response).encode())
        with self._send_lock:
            if self._send(msg):
                return
            stopped = self._stopped
            if not stopped and self._held_bytes + len(msg.payload) <= HELD_MAX_BYTES:
                self._held.append(msg)
                self._held_bytes += len(msg.payload)
                return
        self._tally(self.errors, "unanswered")
        why = "the downlink has stopped" if stopped else f"{HELD_MAX_BYTES} B of answers held"
        self._rate_log.warning("unanswered", "downlink: %s answer dropped: offline, %s", op, why)


def _schema_problem(error: ValidationError) -> str:
    """The rule broken, never the value that broke it: jsonschema's own messages quote the
    value, and a face.enrol value is a photo (which must not reach the log)."""
    rule, limit = error.validator, error.validator_value
    if rule in ("required", "additionalProperties"):
        return error.message  # names keys only
    described = {
        "type": f"must be of type {limit}",
        "maxItems": f"more than {limit} items",
        "minItems": f"fewer than {limit} items",
        "maxLength": f"longer than {limit} characters",
        "minLength": f"shorter than {limit} characters",
        "pattern": f"does not match {limit}",
        "enum": f"must be one of {limit}",
        "const": f"must be {limit!r}",
    }
    return described.get(str(rule), f"breaks the schema's {rule!r} rule")


def _digest(request: Mapping[str, Any]) -> str:
    """The request but its transaction, however its keys were ordered or spaced."""
    rest = {k: v for k, v in request.items() if k != "transaction"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _json(payload: bytes, unique_keys: bool = False) -> Any:
    """JSON on MQTT is UTF-8 (RFC 8259): ``json.loads`` would also take UTF-16 and UTF-32 by
    their byte order marks, and then name those codecs in its error."""
    return jsonin.parse(payload.decode("utf-8"), unique_keys=unique_keys)


def _transaction(request: Any) -> str | None:
    """None for one the answer could not carry back whole (the request schemas refuse it)."""
    txn = request.get("transaction") if isinstance(request, dict) else None
    if not isinstance(txn, str) or len(txn) > TRANSACTION_MAX or _lone_surrogate(txn):
        return None
    return txn


def _transaction_of(payload: bytes) -> str | None:
    """The transaction of a request refused on paho's thread, which carries the alarms too:
    a large request (photos) is not parsed there, only its first bytes searched."""
    try:
        if len(payload) <= REFUSAL_PARSE_MAX:
            return _transaction(_json(payload))
        found = _TRANSACTION.search(payload, 0, REFUSAL_SCAN)
        return None if found is None else _transaction({"transaction": _json(found[1])})
    except ValueError:
        return None  # unreadable, or too large to keep: the sender cannot be told which


def _lone_surrogate(value: Any) -> bool:
    """JSON may escape half of a UTF-16 pair ("\\ud800"); such a string is not text, and
    neither SQLite nor the UTF-8 response can hold it."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False
