"""A durable, bounded, ordered queue of event messages in SQLite, with a memory fallback.

Why: an alert must not be lost to a broker outage or a daemon restart. paho keeps QoS 1
messages in memory only, so each event is committed here (WAL, ``synchronous=FULL``) before
``append`` returns and before it is handed to paho; its row is deleted only when the broker's
PUBACK arrives. Delivery is at-least-once: a row acknowledged just before a crash may be
sent again; the ``seq`` user property lets a consumer drop duplicates.

Sequence numbers never go backwards and never name two events, whatever the disk does: a
consumer that drops duplicates by ``seq`` would otherwise drop a real event. The file's
AUTOINCREMENT covers the healthy case; a small mark next to it (``<file>.seq``, written
atomically) reserves ``SEQ_RESERVE`` numbers ahead, so a run that cannot open the file at
all (full disk, I/O error, read-only file system) still numbers its memory-held events above
anything an earlier run used. The wall clock is only the last resort (a Jetson without an RTC
battery boots with a stale clock): when neither the mark nor the file can be read, and in any
case when memory rows move back into the file, rows that would collide are renumbered above
the file's highest ``seq`` (the file's older undelivered rows stay first).

Open events: the same transaction that writes a ``new``/``update``/``end`` row also records
which events are open (table ``open_events``, kept after delivery). A run that dies during an
event (SIGKILL, OOM, watchdog, power cut) leaves them there, and the next start closes them
(``take_stale()``; the communicator publishes the ``end``). A run that could not read the file
at start picks them up when it first can, and hands them out the same way; they are merged
with this run's own open events, never overwritten.

Bound: at most ``max_rows`` rows. When full, the oldest ``update`` rows are dropped first
(an update is superseded by the next update or the end); ``new`` and ``end`` rows are never
dropped, so the table may exceed the bound only by new/end rows, which the decision engine's
cooldown keeps rare.

A failing disk must not turn alerting off. When a write fails ("database or disk is full",
an I/O error, a read-only file system, a file corrupted under us) the outbox degrades to a
bounded queue in memory (``memory_max`` rows, oldest updates then oldest rows dropped, each
drop logged), reports the fault through ``on_fault(message)``, and ``retry()`` (called
periodically by the sender) moves the memory rows back, in order, once the disk takes them
again (``on_fault(None)``). Events held in memory are lost if the process dies before that:
the fault says so. A file that is not a database or fails its integrity check at open is
moved aside (``<file>.corrupt-<time>``, named in a warning) and a fresh one started: a daemon
that cannot start because of an unreadable outbox alerts nobody. The events it held as open,
as far as a read-only look still finds them, are ended like those of a run that died. Only a state directory the
service user may not use is a configuration error (it never heals by itself).

Dead letters: a row the broker will never accept (``dead_letter()``, decided by the delivery
loop) moves to the table ``dead_letter`` of the same file, kept for an operator, never
deleted by the daemon.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_asd.config import ConfigError
from edge_asd.config.base import SAFE_NAME
from edge_asd.core import jsonsafe
from edge_asd.core.atomic import atomic_write_text

logger = logging.getLogger(__name__)

MEMORY_QUEUE_MAX = 10_000
"""Events held in memory while the outbox file cannot be written (oldest updates dropped first)."""

SEQ_RESERVE = 1000
"""Sequence numbers the ``<file>.seq`` mark reserves ahead: one small atomic write per this many
events, and a restart after a crash skips at most this many numbers."""

SALVAGE_MAX = 1000
"""Open events read back from a corrupt outbox at the most: damaged pages must not flood the
broker with ``end`` events (a node has a few streams, each with at most one open event)."""

SEQ_MARK_SUFFIX = ".seq"
"""The mark's name: the outbox file's name plus this."""

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
CREATE TABLE IF NOT EXISTS dead_letter (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    seq     INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    failed  REAL NOT NULL,
    code    INTEGER NOT NULL,
    reason  TEXT NOT NULL
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


@dataclass(frozen=True)
class _DeadRow:
    """A dead letter decided while the file could not be written (moved there by ``retry``)."""

    row: OutboxRow
    failed: float
    code: int
    reason: str


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


def read_only_fs(path: Path) -> bool:
    """True when the file system holding ``path`` is mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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
        self.renumbered = 0
        """How many times memory rows got new sequence numbers when they moved back into the file
        (a sender must forget what it has in flight: those acks name the old numbers)."""
        self._lock = threading.Lock()
        self._notify_lock = threading.Lock()  # orders on_fault calls; never taken under _lock
        self._reported: str | None = None  # the state on_fault was last told
        self._db: sqlite3.Connection | None = None
        self._file_read = False  # the file's open events were merged into _open once
        self._count = 0  # rows in the file (including delivered rows whose delete is pending)
        self._dead_count = 0  # rows in the file's dead_letter table
        self._last_seq = 0
        self._reserved = 0  # the highest seq the mark on disk covers
        self._mark_failing = False
        self._memory: OrderedDict[int, OutboxRow] = OrderedDict()
        self._dead_memory: list[_DeadRow] = []
        self._open: dict[str, OpenEvent] = {}
        self._stale: dict[str, OpenEvent] = {}
        self._unsynced_deletes: set[int] = set()
        self._failure: str | None = None
        self._failure_corrupt = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot open the event outbox {self.path}: {err}; check state_dir and its permissions"
            ) from None
        mark = self._read_mark()
        self._last_seq = self._reserved = mark or 0
        with self._lock:
            self._open_file(first=True)
            if self._db is None:
                self._floor_without_file(mark)
        self._notify()
        if self._count:
            logger.info("outbox %s holds %d undelivered event(s) from a previous run", self.path, self._count)
        if self._dead_count:
            logger.warning(
                "outbox %s keeps %d event(s) the broker refused for good (table dead_letter)",
                self.path, self._dead_count,
            )  # fmt: skip

    # --- opening -----------------------------------------------------------------------------

    def _open_file(self, first: bool) -> None:
        """Connect (moving a corrupt file aside); a full or failing disk leaves ``_db`` None."""
        try:
            self._db = self._connect()
        except sqlite3.Error as err:
            if is_corrupt(err):
                # Its open events were never read: what a read-only look still finds of them is
                # ended like any other run's (take_stale), not lost with the file.
                salvaged = None if self._file_read else self._salvage_open_events(err)
                self._move_aside(err)
                if salvaged is not None:  # in memory now: ended even if no fresh file can be made
                    self._adopt_salvaged(salvaged)
                try:
                    self._db = self._connect(seq_floor=self._corrupt_floor())
                    self._record_salvaged(salvaged)
                    return
                except sqlite3.Error as again:
                    err = again
            if first and _cannot_open(err):
                problem = self._config_problem()
                if problem is not None:
                    raise ConfigError(f"cannot open the event outbox {self.path}: {err}; {problem}") from None
            self._db = None
            self._fail(err)

    def _config_problem(self) -> str | None:
        """Why the file cannot be opened, when the user must fix it: the directory is missing or
        the service user may not use it. A read-only file system is a fault, not this."""
        folder = self.path.parent
        if not folder.is_dir():
            return f"the state directory {folder} is missing: create it or set state_dir"
        if read_only_fs(folder):
            return None
        user = _user_name()
        if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            return (
                f"the service user {user} lacks permission on {folder}: "
                f"chown it to {user} (or set state_dir to a directory {user} may write)"
            )
        for name in (self.path.name, self.path.name + "-wal", self.path.name + "-shm"):
            item = folder / name
            if item.exists() and not os.access(item, os.R_OK | os.W_OK):
                return f"the service user {user} lacks permission on {item}: chown it to {user}"
        return None

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
            dead = int(db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0])
            top = _file_top(db)
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
        self._dead_count = dead
        self._last_seq = max(self._last_seq, top)
        if not self._file_read:
            # The first read in this process: what the file holds as open was left by the previous
            # run (this run's own events, if any, are only in memory yet). Merge, never overwrite.
            self._file_read = True
            self._unsynced_deletes.clear()  # no file row was ever handed out: these name memory rows
            left = {eid: ev for eid, ev in stored.items() if eid not in self._open}
            self._open = {**left, **self._open}
            self._stale.update(left)
            if left and (self._memory or self._dead_memory):
                logger.warning(
                    "outbox %s readable again: %d event(s) the previous run left open are to be ended now",
                    self.path, len(left),
                )  # fmt: skip
        return db

    def _salvage_open_events(self, err: BaseException) -> dict[str, OpenEvent]:
        """The open events a corrupt file still shows to a read-only look (best effort).

        A failed integrity check often concerns one table's pages: the small ``open_events``
        table may read fine, and each event it names would otherwise stay open for ever at its
        subscribers (a ``new`` without an ``end``, a retained ``ON``). Rows that do not look
        like what this outbox writes (an id, a stream name fit for a topic, the event's own id)
        are skipped: an ``end`` must close what it names."""
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
            try:
                rows = db.execute(
                    "SELECT id, stream, topic, event, updated FROM open_events LIMIT ?", (SALVAGE_MAX + 1,)
                ).fetchall()
            finally:
                db.close()
        except (sqlite3.Error, OSError, ValueError) as read_err:
            logger.warning(
                "the corrupt event outbox %s (%s) shows no open events either (%s): an event open when "
                "it broke stays open at its subscribers",
                self.path, err, read_err,
            )  # fmt: skip
            return {}
        if len(rows) > SALVAGE_MAX:
            logger.warning("the corrupt outbox %s shows over %d open events: only the first are ended", self.path, SALVAGE_MAX)
            rows = rows[:SALVAGE_MAX]
        found: dict[str, OpenEvent] = {}
        skipped = 0
        for eid, stream, topic, blob, updated in rows:
            event = _loads(blob)
            ok = (
                isinstance(eid, str) and eid != ""
                and (stream in (None, "") or (isinstance(stream, str) and SAFE_NAME.match(stream) is not None))
                and event.get("id", eid) == eid
                and isinstance(updated, (int, float, type(None)))
            )  # fmt: skip
            if not ok:
                skipped += 1
                continue
            found[eid] = OpenEvent(eid, str(stream or ""), str(topic or ""), {**event, "id": eid}, float(updated or 0.0))
        if skipped:
            logger.warning("skipped %d unreadable open event(s) in the corrupt outbox %s", skipped, self.path)
        return found

    def _adopt_salvaged(self, salvaged: dict[str, OpenEvent]) -> None:
        """Hand the open events read from a corrupt file out as stale (``take_stale``), once: the
        file they came from is moved aside, so no later open can read them again."""
        self._file_read = True
        left = {eid: ev for eid, ev in salvaged.items() if eid not in self._open}
        if not left:
            return
        self._open = {**left, **self._open}
        self._stale.update(left)
        logger.warning(
            "%d event(s) open in the corrupt outbox are to be ended now: %s",
            len(left), ", ".join(f"{e.id} on {e.stream or '?'}" for e in left.values()),
        )  # fmt: skip

    def _record_salvaged(self, salvaged: dict[str, OpenEvent] | None) -> None:
        """Keep the salvaged events in the fresh file's ``open_events`` until they are ended, so
        that a crash meanwhile does not lose them a second time."""
        keep = [self._open[eid] for eid in (salvaged or {}) if eid in self._open]
        if not keep:
            return
        assert self._db is not None
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO open_events (id, stream, topic, event, updated) VALUES (?, ?, ?, ?, ?)",
                [_open_event_values(e) for e in keep],
            )
        except sqlite3.Error as err:  # degrade: retry() rewrites open_events from memory
            self._fail(err)

    def _corrupt_floor(self) -> int:
        """The first seq of a fresh file after a corrupt one: above the mark, and above the clock
        in milliseconds (the old file may have numbered from a clock too)."""
        return max(self._last_seq, int(time.time() * 1000))

    def _floor_without_file(self, mark: int | None) -> None:
        """At start the file could not be opened: number the memory rows above what was used."""
        peek = self._peek_top()
        if peek is not None:
            self._last_seq = max(self._last_seq, peek)
        if mark is None and peek is None:
            self._last_seq = max(self._last_seq, int(time.time() * 1000))
            logger.warning(
                "no record of the event numbers used so far (%s and its mark unreadable): numbering "
                "from the clock; events are renumbered above the file's when it opens again", self.path,
            )  # fmt: skip

    def _peek_top(self) -> int | None:
        """The highest seq the file shows to a read-only look (best effort), 0 without a file."""
        if not self.path.exists():
            return 0
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
            try:
                return _file_top(db)
            finally:
                db.close()
        except (sqlite3.Error, OSError, ValueError) as err:
            logger.debug("cannot read %s read-only either: %s", self.path, err)
            return None

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

    # --- the sequence mark ----------------------------------------------------------------------

    @property
    def mark_path(self) -> Path:
        """``<file>.seq``: the highest sequence number any run may have handed out."""
        return self.path.with_name(self.path.name + SEQ_MARK_SUFFIX)

    def _read_mark(self) -> int | None:
        try:
            text = self.mark_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            logger.warning("cannot read the event number mark %s (%s): ignoring it", self.mark_path, err)
            return None
        try:
            return max(0, int(text))
        except ValueError:
            logger.warning("the event number mark %s is damaged (%r): ignoring it", self.mark_path, text[:40])
            return None

    def _write_mark(self, value: int) -> bool:
        """Atomically record ``value``; a failing disk is logged once, not raised."""
        try:
            atomic_write_text(self.mark_path, f"{value}\n")
        except OSError as err:
            if not self._mark_failing:
                logger.warning("cannot write the event number mark %s (%s); will try again", self.mark_path, err)
            self._mark_failing = True
            return False
        self._mark_failing = False
        return True

    def _next_seq(self) -> int:
        """Hand out the next number, reserving a block in the mark first when it runs out."""
        self._last_seq += 1
        if self._last_seq > self._reserved:
            if self._write_mark(self._last_seq + SEQ_RESERVE - 1):
                self._reserved = self._last_seq + SEQ_RESERVE - 1
            else:
                # Past the reservation with no mark on disk: a crash now would restart numbering
                # below numbers consumers have seen. The clock (in ms) is the last resort that
                # stays above them (a run cannot hand out 1000 numbers a millisecond).
                self._last_seq = max(self._last_seq, int(time.time() * 1000))
        return self._last_seq

    # --- failure and recovery ----------------------------------------------------------------

    def _fail(self, err: BaseException) -> None:
        """Switch to (or stay in) the memory queue; report the fault when its reason changes."""
        self._failure_corrupt = is_corrupt(err)
        folder = self.path.parent
        if read_only_fs(folder):
            hint = f"the file system under {folder} is mounted read-only: remount it read-write"
        else:
            hint = f"free space under {folder} or check its file system"
        message = (
            f"event outbox {self.path} cannot be written ({err}): holding events in memory "
            f"(at most {self.memory_max}, lost if the daemon stops); {hint}"
        )
        if message != self._failure:
            logger.error("%s", message)
            self._failure = message

    def _notify(self) -> None:
        """Tell ``on_fault`` the current state if it is not what it was last told.

        Outside ``_lock`` (the handler may publish), under a lock of its own that orders the
        calls: the state is read when it is delivered, so two threads can never deliver an old
        fault after the recovery that followed it."""
        if self.on_fault is None:
            return
        with self._notify_lock:
            with self._lock:
                current = self._failure
            if current == self._reported:
                return
            self._reported = current
            try:
                self.on_fault(current)
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
                    self._db = self._connect(seq_floor=self._corrupt_floor())
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
                ok = True
        if ok:
            logger.warning("event outbox %s works again: %d event(s) moved back from memory", self.path, moved)
        self._notify()
        return ok

    def _flush_locked(self) -> None:
        """One transaction: pending deletes, memory rows, dead letters, the open events.

        Memory rows whose numbers the file already used (it could not be read when they were
        numbered) get new ones above everything used so far, in their order: the file's older
        undelivered rows go first, and no number names two events."""
        db = self._db
        assert db is not None
        rows = list(self._memory.values())
        deletes = sorted(self._unsynced_deletes)
        db.execute("BEGIN IMMEDIATE")
        try:
            renumber = bool(rows) and rows[0].seq <= _file_top(db)
            if renumber:
                base = max(_file_top(db), self._last_seq)
                rows = [dataclasses.replace(r, seq=base + i) for i, r in enumerate(rows, start=1)]
            deleted = 0
            for seq in deletes:
                deleted += db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount
            db.executemany(
                "INSERT INTO outbox (seq, kind, topic, payload, created) VALUES (?, ?, ?, ?, ?)",
                [(r.seq, r.kind, r.topic, r.payload, r.created) for r in rows],
            )
            db.executemany(
                "INSERT INTO dead_letter (seq, kind, topic, payload, created, failed, code, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [_dead_values(d.row, d.failed, d.code, d.reason) for d in self._dead_memory],
            )
            db.execute("DELETE FROM open_events")
            db.executemany(
                "INSERT INTO open_events (id, stream, topic, event, updated) VALUES (?, ?, ?, ?, ?)",
                [_open_event_values(e) for e in self._open.values()],
            )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        if renumber:
            old = (next(iter(self._memory)), next(reversed(self._memory)))
            self._last_seq = rows[-1].seq
            self.renumbered += 1
            logger.warning(
                "the %d event(s) held in memory as #%d..#%d collide with numbers %s already used: "
                "renumbered #%d..#%d (sent again under the new numbers)",
                len(rows), old[0], old[1], self.path, rows[0].seq, rows[-1].seq,
            )  # fmt: skip
            if self._last_seq > self._reserved and self._write_mark(self._last_seq + SEQ_RESERVE):
                self._reserved = self._last_seq + SEQ_RESERVE
        self._count += len(rows) - deleted
        self._dead_count += len(self._dead_memory)
        self._memory.clear()
        self._dead_memory.clear()
        self._unsynced_deletes.clear()

    # --- the queue -----------------------------------------------------------------------------

    def append(self, kind: str, topic: str, payload: bytes, event: dict[str, Any] | None = None) -> int:
        """Commit one message (durable when this returns, unless degraded); returns its ``seq``.

        ``event`` is the event's ``after`` object: a ``new``/``update`` records it as open, an
        ``end`` closes it, in the same transaction as the row."""
        with self._lock:
            row = OutboxRow(self._next_seq(), kind, topic, payload, time.time())
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
            self._stale.pop(change[1], None)
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
                    _open_event_values(ev),
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

    def dead_letter(self, seq: int, code: int, reason: str) -> OutboxRow | None:
        """Move an undelivered row to the ``dead_letter`` table: the broker will never take it.

        Kept for an operator, never deleted here; while the file cannot be written the move
        waits in memory for ``retry``. Returns the row, or None when it is gone already."""
        now = time.time()
        with self._lock:
            row = self._memory.pop(seq, None)
            if row is None:
                row = self._file_row(seq)
                if row is not None and not self._dead_letter_in_file(row, now, code, reason):
                    self._unsynced_deletes.add(seq)  # filtered out of pending() until retry() moves it
                    self._dead_memory.append(_DeadRow(row, now, int(code), reason))
            else:
                self._dead_memory.append(_DeadRow(row, now, int(code), reason))
        self._notify()
        return row

    def _file_row(self, seq: int) -> OutboxRow | None:
        if self._db is None or seq in self._unsynced_deletes:
            return None
        try:
            found = self._db.execute(
                "SELECT seq, kind, topic, payload, created FROM outbox WHERE seq = ?", (seq,)
            ).fetchone()
        except sqlite3.Error as err:
            self._fail(err)
            return None
        if found is None:
            return None
        s, k, t, p, c = found
        return OutboxRow(int(s), str(k), str(t), bytes(p), float(c))

    def _dead_letter_in_file(self, row: OutboxRow, now: float, code: int, reason: str) -> bool:
        """One transaction: the row into ``dead_letter``, out of ``outbox``; False when degraded."""
        db = self._db
        if db is None or self._failure is not None:
            return False
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO dead_letter (seq, kind, topic, payload, created, failed, code, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                _dead_values(row, now, code, reason),
            )
            db.execute("DELETE FROM outbox WHERE seq = ?", (row.seq,))
            db.execute("COMMIT")
        except sqlite3.Error as err:
            _rollback(db)
            self._fail(err)
            return False
        except BaseException:
            _rollback(db)
            raise
        self._count -= 1
        self._dead_count += 1
        return True

    @property
    def dead_letters(self) -> int:
        """Rows the broker refused for good: in the file's ``dead_letter`` table and in memory."""
        with self._lock:
            return self._dead_count + len(self._dead_memory)

    def open_events(self) -> list[OpenEvent]:
        """Events opened and not ended, oldest first (left by a previous run, at start)."""
        with self._lock:
            return sorted(self._open.values(), key=lambda e: e.updated)

    def take_stale(self) -> list[OpenEvent]:
        """Events a previous run left open that nobody has been handed yet, oldest first.

        At start these are all the file's open events; a run that could not read the file at
        start gets them on the first ``retry`` that can. The caller ends each (an ``end``
        through ``append`` closes it here)."""
        with self._lock:
            stale, self._stale = self._stale, {}
        return sorted(stale.values(), key=lambda e: e.updated)

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
        """Close the file; events still held in memory are lost (and logged).

        The mark is set to the exact last number handed out, so a clean restart skips none."""
        if self.degraded:
            self.retry()
        with self._lock:
            if self._memory or self._dead_memory:
                logger.error(
                    "%d event(s) and %d dead letter(s) held in memory are lost: the outbox %s could not be written (%s)",
                    len(self._memory), len(self._dead_memory), self.path, self._failure,
                )  # fmt: skip
            if self._last_seq and self._write_mark(self._last_seq):
                self._reserved = self._last_seq
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error as err:
                    logger.debug("closing the outbox: %s", err)
                self._db = None


def _file_top(db: sqlite3.Connection) -> int:
    """The highest seq the file has ever used: its AUTOINCREMENT counter, rows, dead letters."""
    top = 0
    for query in (
        "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
        "SELECT MAX(seq) FROM outbox",
        "SELECT MAX(seq) FROM dead_letter",
    ):
        try:
            found = db.execute(query).fetchone()
        except sqlite3.OperationalError as err:
            if "no such table" in str(err).lower():
                continue  # an older or fresh file without that table
            raise
        if found and found[0] is not None:
            top = max(top, int(found[0]))
    return top


def _dead_values(row: OutboxRow, failed: float, code: int, reason: str) -> tuple[Any, ...]:
    return (row.seq, row.kind, row.topic, row.payload, row.created, failed, int(code), reason)


def _user_name() -> str:
    """The service user, for a permission message."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, OSError):
        return str(os.geteuid())


def _rollback(db: sqlite3.Connection) -> None:
    # SQLite may already have rolled the transaction back itself (SQLITE_FULL, IOERR)
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def _open_event_values(ev: OpenEvent) -> tuple[str, str, str, bytes, float]:
    """An ``open_events`` row's values (id, stream, topic, event, updated), as every writer stores them."""
    return (ev.id, ev.stream, ev.topic, jsonsafe.dumps(ev.event).encode(), ev.updated)


def _loads(blob: Any) -> dict[str, Any]:
    try:
        value = json.loads(bytes(blob).decode("utf-8") if isinstance(blob, (bytes, memoryview)) else str(blob))
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
