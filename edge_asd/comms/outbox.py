"""A durable, bounded, ordered queue of event messages in SQLite.

Why: an alert must not be lost to a broker outage or a daemon restart. paho keeps QoS 1
messages in memory only, so each event is committed here (WAL, ``synchronous=FULL``) before
it is handed to paho, and its row is deleted only when the broker's PUBACK arrives.
Delivery is at-least-once: a row acknowledged just before a crash may be sent again; the
``seq`` user property lets a consumer drop duplicates.

Bound: at most ``max_rows`` rows. When full, the oldest ``update`` rows are dropped first
(an update is superseded by the next update or the end); ``new`` and ``end`` rows are never
dropped, so the table may exceed the bound only by new/end rows, which the decision engine's
cooldown keeps rare.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_asd.config import ConfigError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT NOT NULL,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    kind: str
    topic: str
    payload: bytes


class Outbox:
    """Thread-safe: the pipeline appends, the sender reads and deletes."""

    def __init__(self, path: Path | str, max_rows: int = 100_000) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise ConfigError(
                f"cannot open the event outbox {self.path}: {err}; check state_dir and its permissions"
            ) from None
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        if self._count:
            logger.info("outbox %s holds %d undelivered event(s) from a previous run", self.path, self._count)

    def append(self, kind: str, topic: str, payload: bytes) -> int:
        """Commit one message; returns its sequence number. Applies the bound first."""
        with self._lock:
            if self._count >= self.max_rows:
                self._make_room()
            cur = self._db.execute(
                "INSERT INTO outbox (kind, topic, payload, created) VALUES (?, ?, ?, ?)",
                (kind, topic, payload, time.time()),
            )
            self._count += 1
            return int(cur.lastrowid)

    def _make_room(self) -> None:
        excess = self._count - self.max_rows + 1
        cur = self._db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE kind = 'update' ORDER BY seq LIMIT ?)",
            (excess,),
        )
        dropped = cur.rowcount
        if dropped:
            self._count -= dropped
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('dropped_updates', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (dropped,),
            )
            logger.warning("outbox full (%d rows): dropped %d oldest update event(s)", self.max_rows, dropped)
        else:
            logger.warning("outbox full (%d rows) of new/end events: keeping them anyway", self.max_rows)

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Rows with ``seq > after_seq`` in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [OutboxRow(int(s), str(k), str(t), bytes(p)) for s, k, t, p in rows]

    def delete(self, seq: int) -> None:
        """Forget a delivered row (a row already dropped by the bound is fine)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._count -= cur.rowcount

    def __len__(self) -> int:
        with self._lock:
            return self._count

    @property
    def dropped_updates(self) -> int:
        """Update rows dropped by the bound, over the life of this file."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'dropped_updates'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
