"""A durable, bounded, ordered queue of event messages in SQLite, with a memory fallback.

Why: an alert must not be lost to a broker outage or a daemon restart. paho keeps QoS 1
messages in memory only, so each event is committed here (WAL, ``synchronous=FULL``) before
``append`` returns and before it is handed to paho; its row is deleted only when the broker's
PUBACK arrives. Delivery is at-least-once: a row acknowledged just before a crash may be
sent again; the ``seq`` user property lets a consumer drop duplicates.

Open events: the same transaction that writes a ``new``/``update``/``end`` row also records
which events are open (table ``open_events``, kept after delivery). A run that dies during an
event (SIGKILL, OOM, watchdog, power cut) leaves them there, and the next start closes them
(``open_events()``; the communicator publishes the ``end``).

Bound: at most ``max_rows`` rows. When full, the oldest ``update`` rows are dropped first
(an update is superseded by the next update or the end); ``new`` and ``end`` rows are never
dropped, so the table may exceed the bound only by new/end rows, which the decision engine's
cooldown keeps rare.

A failing disk must not turn alerting off. When a write fails ("database or disk is full",
an I/O error, a read-only file system, a file corrupted under us) the outbox degrades to a
bounded queue in memory (``memory_max`` rows, oldest updates then oldest rows dropped, each
drop logged), reports the fault through ``on_fault(message)``, and ``retry()`` (called
periodically by the sender) moves the memory rows back, in order and with their sequence
numbers, once the disk takes them again (``on_fault(None)``). Events held in memory are lost
if the process dies before that: the fault says so. A file that is not a database or fails its
integrity check at open is moved aside (``<file>.corrupt-<time>``, named in a warning) and a
fresh one started: a daemon that cannot start because of an unreadable outbox alerts nobody.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_asd.config import ConfigError
from edge_asd.core import jsonsafe

logger = logging.getLogger(__name__)

MEMORY_QUEUE_MAX = 10_000
"""Events held in memory while the outbox file cannot be written (oldest updates dropped first)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT NOT NULL,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS open_events (
    id      TEXT PRIMARY KEY,
    stream  TEXT NOT NULL,
    topic   TEXT NOT NULL,
    event   BLOB NOT NULL,
    updated REAL NOT NULL
);
"""

_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
_CORRUPT_WORDS = ("file is not a database", "malformed", "integrity check")

FaultHandler = Callable[["str | None"], None]
"""``on_fault(message)`` when the outbox starts failing (or its reason changes), ``None`` when it works again."""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    kind: str
    topic: str
    payload: bytes
    created: float = 0.0


@dataclass(frozen=True)
class OpenEvent:
    """An event a ``new`` opened and no ``end`` closed yet: its latest ``after`` object."""

    id: str
    stream: str
    topic: str
    event: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0


class _Corrupt(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` did not answer ``ok``."""


def is_corrupt(err: BaseException) -> bool:
    """A damaged file (not a database, malformed image), as opposed to a full or failing disk."""
    if isinstance(err, _Corrupt):
        return True
    code = getattr(err, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return (int(code) & 0xFF) in _CORRUPT_CODES
    text = str(err).lower()
    return any(word in text for word in _CORRUPT_WORDS)


def _cannot_open(err: BaseException) -> bool:
    """SQLite cannot create or open the file at all (a missing or unwritable directory)."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return (int(code) & 0xFF) == 14  # SQLITE_CANTOPEN
    return "unable to open database file" in str(err).lower()


class Outbox:
    """Thread-safe: the pipeline appends, the sender reads, deletes and retries."""

    def __init__(
        self,
        path: Path | str,
        max_rows: int = 100_000,
        *,
        memory_max: int = MEMORY_QUEUE_MAX,
        on_fault: FaultHandler | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.memory_max = int(memory_max)
        self.on_fault = on_fault
        self.memory_dropped = 0
        """Events dropped from the memory queue (full while the disk failed), this process."""
        self.moved_aside: Path | None = None
        """Where a corrupt outbox file was moved at open, if it was."""
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._count = 0  # rows in the file (including delivered rows whose delete is pending)
        self._last_seq = 0
        self._memory: OrderedDict[int, OutboxRow] = OrderedDict()
        self._open: dict[str, OpenEvent] = {}
        self._unsynced_deletes: set[int] = set()
        self._failure: str | None = None
        self._failure_corrupt = False
        self._notices: list[str | None] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot open the event outbox {self.path}: {err}; check state_dir and its permissions"
            ) from None
        with self._lock:
            self._open_file(first=True)
        self._notify()
        if self._count:
            logger.info("outbox %s holds %d undelivered event(s) from a previous run", self.path, self._count)

    # --- opening -----------------------------------------------------------------------------

    def _open_file(self, first: bool) -> None:
        """Connect (moving a corrupt file aside); a full or failing disk leaves ``_db`` None."""
        try:
            self._db = self._connect()
        except sqlite3.Error as err:
            if is_corrupt(err):
                self._move_aside(err)
                try:
                    self._db = self._connect(seq_floor=int(time.time() * 1000))
                    return
                except sqlite3.Error as again:
                    err = again
            if first and _cannot_open(err):
                raise ConfigError(
                    f"cannot open the event outbox {self.path}: {err}; check state_dir and its permissions"
                ) from None
            self._db = None
            self._fail(err)

    def _connect(self, seq_floor: int = 0) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            check = db.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                detail = " ".join(str(check[0]).split()[:24]) if check else "no answer"
                raise _Corrupt(f"integrity check failed: {detail}")
            db.executescript(_SCHEMA)
            if seq_floor:
                # A fresh file after a corrupt one: continue above any seq a consumer may have
                # seen from the old file, so de-duplication by seq never drops a new event.
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (seq_floor,))
            count = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            top = db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
            stored = {
                str(eid): OpenEvent(str(eid), str(stream), str(topic), _loads(event), float(updated))
                for eid, stream, topic, event, updated in db.execute(
                    "SELECT id, stream, topic, event, updated FROM open_events"
                )
            }
        except BaseException:
            db.close()
            raise
        self._count = count
        self._last_seq = max(self._last_seq, int(row[0]) if row else 0, int(top or 0))
        if not self._memory and not self._open:
            self._open = stored
        return db

    def _move_aside(self, err: BaseException) -> None:
        """Keep the damaged file (and its WAL) for a post-mortem, out of the daemon's way."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            self.path.replace(target)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.replace(target.with_name(target.name + suffix))
        except OSError as move_err:
            raise ConfigError(
                f"the event outbox {self.path} is corrupt ({err}) and cannot be moved aside: {move_err}; "
                "move or delete it, then start again"
            ) from None
        self.moved_aside = target
        self._unsynced_deletes.clear()
        logger.warning(
            "the event outbox %s was corrupt (%s): moved it to %s and started a fresh one; "
            "events still undelivered in it are not sent",
            self.path, err, target,
        )  # fmt: skip

    # --- failure and recovery ----------------------------------------------------------------

    def _fail(self, err: BaseException) -> None:
        """Switch to (or stay in) the memory queue; report the fault when its reason changes."""
        self._failure_corrupt = is_corrupt(err)
        message = (
            f"event outbox {self.path} cannot be written ({err}): holding events in memory "
            f"(at most {self.memory_max}, lost if the daemon stops); free space under {self.path.parent} "
            "or check its file system"
        )
        if message != self._failure:
            logger.error("%s", message)
            self._failure = message
            self._notices.append(message)

    def _notify(self) -> None:
        """Call ``on_fault`` for what changed, outside the lock (the handler may publish)."""
        with self._lock:
            notices, self._notices = self._notices, []
        for notice in notices:
            if self.on_fault is not None:
                try:
                    self.on_fault(notice)
                except Exception:
                    logger.exception("outbox fault handler failed")

    @property
    def degraded(self) -> bool:
        """True while events are held in memory because the file cannot be written."""
        with self._lock:
            return self._failure is not None

    @property
    def failure(self) -> str | None:
        """The current fault message, or None while the outbox works."""
        with self._lock:
            return self._failure

    def retry(self) -> bool:
        """Try the file again: apply pending deletes, move the memory rows back in order.

        Returns True when the outbox works again (and reports the fault cleared)."""
        with self._lock:
            if self._failure is None:
                return False
            moved = len(self._memory)
            try:
                if self._db is not None and self._failure_corrupt:
                    self._db.close()
                    self._db = None
                    self._move_aside(sqlite3.DatabaseError("database disk image is malformed"))
                    self._db = self._connect(seq_floor=max(self._last_seq, int(time.time() * 1000)))
                elif self._db is None:
                    self._open_file(first=False)
                    if self._db is None:
                        return False
                self._flush_locked()
            except sqlite3.Error as err:
                self._fail(err)
                ok = False
            else:
                self._failure = None
                self._failure_corrupt = False
                self._notices.append(None)
                ok = True
        if ok:
            logger.warning("event outbox %s works again: %d event(s) moved back from memory", self.path, moved)
        self._notify()
        return ok

    def _flush_locked(self) -> None:
        """One transaction: pending deletes, memory rows (their own seqs), the open events."""
        db = self._db
        assert db is not None
        rows = list(self._memory.values())
        deletes = sorted(self._unsynced_deletes)
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted = 0
            for seq in deletes:
                deleted += db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount
            db.executemany(
                "INSERT INTO outbox (seq, kind, topic, payload, created) VALUES (?, ?, ?, ?, ?)",
                [(r.seq, r.kind, r.topic, r.payload, r.created) for r in rows],
            )
            db.execute("DELETE FROM open_events")
            db.executemany(
                "INSERT INTO open_events (id, stream, topic, event, updated) VALUES (?, ?, ?, ?, ?)",
                [(e.id, e.stream, e.topic, jsonsafe.dumps(e.event).encode(), e.updated) for e in self._open.values()],
            )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._count += len(rows) - deleted
        self._memory.clear()
        self._unsynced_deletes.clear()

    # --- the queue -----------------------------------------------------------------------------

    def append(self, kind: str, topic: str, payload: bytes, event: dict[str, Any] | None = None) -> int:
        """Commit one message (durable when this returns, unless degraded); returns its ``seq``.

        ``event`` is the event's ``after`` object: a ``new``/``update`` records it as open, an
        ``end`` closes it, in the same transaction as the row."""
        with self._lock:
            self._last_seq += 1
            row = OutboxRow(self._last_seq, kind, topic, payload, time.time())
            change = self._open_change(kind, topic, event, row.created)
            if self._failure is None and self._db is not None:
                try:
                    self._insert_locked(row, change)
                except sqlite3.Error as err:
                    self._fail(err)
                else:
                    self._apply_open_change(change)
                    return row.seq
            self._apply_open_change(change)
            self._push_memory(row)
        self._notify()
        return row.seq

    def _open_change(self, kind: str, topic: str, event: dict[str, Any] | None, now: float) -> tuple[str, Any] | None:
        if not isinstance(event, dict) or event.get("id") is None:
            return None
        eid = str(event["id"])
        if kind == "end":
            return ("close", eid)
        return ("open", OpenEvent(eid, str(event.get("stream") or ""), topic, dict(event), now))

    def _apply_open_change(self, change: tuple[str, Any] | None) -> None:
        if change is None:
            return
        if change[0] == "close":
            self._open.pop(change[1], None)
        else:
            self._open[change[1].id] = change[1]

    def _insert_locked(self, row: OutboxRow, change: tuple[str, Any] | None) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            dropped = self._make_room(db) if self._count >= self.max_rows else 0
            db.execute(
                "INSERT INTO outbox (seq, kind, topic, payload, created) VALUES (?, ?, ?, ?, ?)",
                (row.seq, row.kind, row.topic, row.payload, row.created),
            )
            if change is not None and change[0] == "close":
                db.execute("DELETE FROM open_events WHERE id = ?", (change[1],))
            elif change is not None:
                ev: OpenEvent = change[1]
                db.execute(
                    "INSERT INTO open_events (id, stream, topic, event, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET event = excluded.event, updated = excluded.updated",
                    (ev.id, ev.stream, ev.topic, jsonsafe.dumps(ev.event).encode(), ev.updated),
                )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._count += 1 - dropped

    def _make_room(self, db: sqlite3.Connection) -> int:
        """Inside the append's transaction: drop the oldest updates; returns how many."""
        excess = self._count - self.max_rows + 1
        cur = db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE kind = 'update' ORDER BY seq LIMIT ?)",
            (excess,),
        )
        dropped = max(0, cur.rowcount)
        if dropped:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('dropped_updates', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (dropped,),
            )
            logger.warning("outbox full (%d rows): dropped %d oldest update event(s)", self.max_rows, dropped)
        else:
            logger.warning("outbox full (%d rows) of new/end events: keeping them anyway", self.max_rows)
        return dropped

    def _push_memory(self, row: OutboxRow) -> None:
        if len(self._memory) >= self.memory_max:
            victim = next((s for s, r in self._memory.items() if r.kind == "update"), None)
            if victim is None:
                victim = next(iter(self._memory))
            lost = self._memory.pop(victim)
            self.memory_dropped += 1
            logger.error(
                "event queue in memory full (%d) while the outbox fails: dropped %s event #%d "
                "(%d dropped so far)", self.memory_max, lost.kind, lost.seq, self.memory_dropped,
            )  # fmt: skip
        self._memory[row.seq] = row

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Undelivered rows with ``seq > after_seq``, in order (file and memory together)."""
        with self._lock:
            rows: list[OutboxRow] = []
            if self._db is not None:
                try:
                    found = self._db.execute(
                        "SELECT seq, kind, topic, payload, created FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                        (after_seq, limit + len(self._unsynced_deletes)),
                    ).fetchall()
                except sqlite3.Error as err:
                    self._fail(err)
                    found = []
                rows = [
                    OutboxRow(int(s), str(k), str(t), bytes(p), float(c))
                    for s, k, t, p, c in found
                    if int(s) not in self._unsynced_deletes
                ]
            rows += [r for r in self._memory.values() if r.seq > after_seq]
            rows.sort(key=lambda r: r.seq)
            result = rows[:limit]
        self._notify()
        return result

    def delete(self, seq: int) -> None:
        """Forget a delivered row (a row already dropped by the bound is fine)."""
        with self._lock:
            if self._memory.pop(seq, None) is not None:
                return
            if self._db is None or self._failure is not None:
                self._unsynced_deletes.add(seq)  # applied by retry(), filtered out until then
                return
            try:
                cur = self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            except sqlite3.Error as err:
                self._unsynced_deletes.add(seq)
                self._fail(err)
            else:
                self._count -= max(0, cur.rowcount)
        self._notify()

    def open_events(self) -> list[OpenEvent]:
        """Events opened and not ended, oldest first (left by a previous run, at start)."""
        with self._lock:
            return sorted(self._open.values(), key=lambda e: e.updated)

    def __len__(self) -> int:
        """Events not yet acknowledged: in the file and in memory."""
        with self._lock:
            return max(0, self._count - len(self._unsynced_deletes)) + len(self._memory)

    @property
    def memory_rows(self) -> int:
        """Events held in memory because the file cannot be written."""
        with self._lock:
            return len(self._memory)

    def oldest_age_s(self, now: float | None = None) -> float | None:
        """Age of the oldest undelivered event in seconds, or None when there is none."""
        now = time.time() if now is None else now
        oldest: float | None = None
        with self._lock:
            if self._db is not None:
                try:
                    found = self._db.execute(
                        "SELECT seq, created FROM outbox ORDER BY seq LIMIT ?", (len(self._unsynced_deletes) + 1,)
                    ).fetchall()
                    oldest = next((float(c) for s, c in found if int(s) not in self._unsynced_deletes), None)
                except sqlite3.Error:
                    oldest = None
            if self._memory:
                first = next(iter(self._memory.values())).created
                oldest = first if oldest is None else min(oldest, first)
        return None if oldest is None else max(0.0, now - oldest)

    @property
    def dropped_updates(self) -> int:
        """Update rows dropped by the bound, over the life of this file."""
        with self._lock:
            if self._db is None:
                return 0
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'dropped_updates'").fetchone()
            except sqlite3.Error:
                return 0
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the file; events still held in memory are lost (and logged)."""
        if self.degraded:
            self.retry()
        with self._lock:
            if self._memory:
                logger.error(
                    "%d event(s) held in memory are lost: the outbox %s could not be written (%s)",
                    len(self._memory), self.path, self._failure,
                )  # fmt: skip
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error as err:
                    logger.debug("closing the outbox: %s", err)
                self._db = None


def _rollback(db: sqlite3.Connection) -> None:
    # SQLite may already have rolled the transaction back itself (SQLITE_FULL, IOERR)
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def _loads(blob: Any) -> dict[str, Any]:
    try:
        value = json.loads(bytes(blob).decode("utf-8") if isinstance(blob, (bytes, memoryview)) else str(blob))
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
