"""The console's own memory: the event history and the feedback log, in one SQLite file.

Why a database of its own: events are published once (not retained), so a console that
restarts would start with an empty list; the daemon's outbox forgets an event as soon as the
broker has it. The file is bounded (the newest ``max_events`` events are kept) and events
are keyed by ``(node, id)``, because delivery is at least once and a redelivered ``new``
or ``update`` must neither duplicate a row nor reopen an event that has ended. Every
feedback an operator sends is kept with who sent it, and the daemon's answer next to it.

Used from the console's event-loop thread only (one connection, no locking needed).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LABELS = ("normal", "anomaly")
UNLABELLED = "none"
"""The label filter value for events nobody has labelled yet."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    node TEXT NOT NULL,
    id TEXT NOT NULL,
    stream TEXT NOT NULL,
    start_wall REAL,
    end_wall REAL,
    peak REAL,
    threshold REAL,
    active INTEGER NOT NULL,
    label TEXT,
    summary TEXT,
    data TEXT NOT NULL,
    first_seen REAL NOT NULL,
    updated REAL NOT NULL,
    sort_key REAL NOT NULL,
    PRIMARY KEY (node, id)
);
CREATE INDEX IF NOT EXISTS events_sort ON events (sort_key);
CREATE INDEX IF NOT EXISTS events_stream ON events (node, stream, sort_key);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    node TEXT NOT NULL,
    stream TEXT NOT NULL,
    event TEXT NOT NULL,
    label TEXT NOT NULL,
    by TEXT NOT NULL,
    ok INTEGER,
    message TEXT,
    threshold REAL,
    answered REAL
);
CREATE INDEX IF NOT EXISTS feedback_event ON feedback (node, event);
"""


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summary_of(after: dict[str, Any]) -> str:
    """The one-line explanation of an event, if the daemon sent one."""
    explanation = after.get("explanation")
    if isinstance(explanation, dict) and isinstance(explanation.get("summary"), str):
        return explanation["summary"]
    return ""


class EventStore:
    """Events by ``(node, id)`` (newest ``max_events`` kept) and the feedback log."""

    def __init__(self, path: Path, max_events: int) -> None:
        self.path = Path(path)
        self.max_events = int(max_events)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- events ---------------------------------------------------------------------------

    def upsert(self, node: str, kind: str, after: dict[str, Any], received: float | None = None) -> dict[str, Any] | None:
        """Fold one ``new``/``update``/``end`` message in; returns the stored record (None: unusable).

        An event that has ended stays ended: a late duplicate ``update`` keeps its end and
        only raises the peak. The stored ``data`` is the newest ``after`` merged over the old one,
        so fields the daemon sends only once (evidence paths, explanation) are kept.
        """
        eid = after.get("id")
        if not isinstance(eid, str) or not eid:
            return None
        now = received if received is not None else time.time()
        old = self.get(node, eid)
        ended = kind == "end" or after.get("active") is False or after.get("end_wall") is not None
        data = dict(old["data"]) if old else {}
        data.update({k: v for k, v in after.items() if v is not None or k not in data})
        if old and not old["active"] and not ended:
            data["active"] = False
            data["end_wall"] = old["end_wall"]
            ended = True
        peak = _num(after.get("peak_score"))
        if old and old["peak"] is not None and (peak is None or old["peak"] > peak):
            peak = old["peak"]
            data["peak_score"] = peak
        stream = str(after.get("stream") or (old["stream"] if old else "") or "?")
        start = _num(data.get("start_wall"))
        label = data.get("label") if data.get("label") in LABELS else (old["label"] if old else None)
        row = {
            "node": node, "id": eid, "stream": stream, "start_wall": start,
            "end_wall": _num(data.get("end_wall")), "peak": peak, "threshold": _num(data.get("threshold")),
            "active": 0 if ended else 1, "label": label, "summary": summary_of(data),
            "data": json.dumps(data, default=str), "first_seen": old["first_seen"] if old else now,
            "updated": now, "sort_key": start if start is not None else (old["first_seen"] if old else now),
        }
        self.db.execute(
            "INSERT OR REPLACE INTO events (node, id, stream, start_wall, end_wall, peak, threshold, active, label,"
            " summary, data, first_seen, updated, sort_key) VALUES (:node, :id, :stream, :start_wall, :end_wall,"
            " :peak, :threshold, :active, :label, :summary, :data, :first_seen, :updated, :sort_key)",
            row,
        )
        if old is None:
            self._trim()
        return self.get(node, eid)

    def _trim(self) -> None:
        cur = self.db.execute(
            "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events ORDER BY sort_key DESC LIMIT -1 OFFSET ?)",
            (self.max_events,),
        )
        if cur.rowcount:
            logger.info("event history: dropped %d oldest event(s) (keeping %d)", cur.rowcount, self.max_events)
            self.db.execute(
                "DELETE FROM feedback WHERE seq IN (SELECT seq FROM feedback ORDER BY seq DESC LIMIT -1 OFFSET ?)",
                (self.max_events,),
            )

    @staticmethod
    def _record(row: sqlite3.Row) -> dict[str, Any]:
        rec = dict(row)
        rec["data"] = json.loads(rec["data"])
        rec["active"] = bool(rec["active"])
        return rec

    def get(self, node: str, eid: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM events WHERE node = ? AND id = ?", (node, eid)).fetchone()
        return self._record(row) if row else None

    def query(
        self,
        *,
        node: str | None = None,
        stream: str | None = None,
        label: str | None = None,
        before: float | None = None,
        active: bool | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first; ``label`` is ``normal``, ``anomaly`` or ``none`` (unlabelled)."""
        where, args = self._where(node=node, stream=stream, label=label, before=before, active=active)
        rows = self.db.execute(
            f"SELECT * FROM events{where} ORDER BY sort_key DESC LIMIT ?", (*args, max(1, min(int(limit), 1000)))
        ).fetchall()
        return [self._record(r) for r in rows]

    def matches(self, record: dict[str, Any], *, node: str | None, stream: str | None, label: str | None) -> bool:
        """Whether a record passes the Events page's filters (for live rows)."""
        if node and record["node"] != node:
            return False
        if stream and record["stream"] != stream:
            return False
        if label == UNLABELLED:
            return record["label"] is None
        return not label or record["label"] == label

    @staticmethod
    def _where(**filters: Any) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if filters["node"]:
            clauses.append("node = ?")
            args.append(filters["node"])
        if filters["stream"]:
            clauses.append("stream = ?")
            args.append(filters["stream"])
        if filters["label"] == UNLABELLED:
            clauses.append("label IS NULL")
        elif filters["label"]:
            clauses.append("label = ?")
            args.append(filters["label"])
        if filters["before"] is not None:
            clauses.append("sort_key < ?")
            args.append(float(filters["before"]))
        if filters["active"] is not None:
            clauses.append("active = ?")
            args.append(1 if filters["active"] else 0)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def streams(self) -> list[tuple[str, str]]:
        """``(node, stream)`` pairs that have events (the Events page's filter choices)."""
        rows = self.db.execute("SELECT DISTINCT node, stream FROM events ORDER BY node, stream").fetchall()
        return [(r["node"], r["stream"]) for r in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # --- feedback -------------------------------------------------------------------------

    def add_feedback(self, node: str, stream: str, event: str, label: str, by: str, ts: float | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO feedback (ts, node, stream, event, label, by) VALUES (?, ?, ?, ?, ?, ?)",
            (ts if ts is not None else time.time(), node, stream, event, label, by),
        )
        return int(cur.lastrowid or 0)

    def feedback_result(self, node: str, stream: str, result: dict[str, Any]) -> dict[str, Any] | None:
        """Attach the daemon's answer to the oldest unanswered feedback it can be for.

        An answer that matches nothing sent from here (another console, or ``mosquitto_pub``)
        is still logged as a row, by "unknown", so the page shows every label the daemon took.
        """
        event = str(result.get("event") or "")
        label = str(result.get("label") or "")
        if not event:
            return None
        ok = bool(result.get("ok"))
        message = str(result.get("message") or "")
        threshold = _num(result.get("threshold"))
        row = self.db.execute(
            "SELECT seq FROM feedback WHERE node = ? AND event = ? AND answered IS NULL AND (label = ? OR ? = '')"
            " ORDER BY seq LIMIT 1",
            (node, event, label, label),
        ).fetchone()
        now = time.time()
        if row is None:
            seq = self.add_feedback(node, stream, event, label or "?", "unknown", now)
        else:
            seq = int(row["seq"])
        self.db.execute(
            "UPDATE feedback SET ok = ?, message = ?, threshold = ?, answered = ? WHERE seq = ?",
            (1 if ok else 0, message, threshold, now, seq),
        )
        if ok and label in LABELS:
            self.db.execute("UPDATE events SET label = ? WHERE node = ? AND id = ?", (label, node, event))
        return self.feedback_row(seq)

    def feedback_row(self, seq: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM feedback WHERE seq = ?", (seq,)).fetchone()
        return self._feedback(row) if row else None

    @staticmethod
    def _feedback(row: sqlite3.Row) -> dict[str, Any]:
        rec = dict(row)
        rec["ok"] = None if rec["ok"] is None else bool(rec["ok"])
        return rec

    def feedback_for(self, node: str, event: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT * FROM feedback WHERE node = ? AND event = ? ORDER BY seq", (node, event)
        ).fetchall()
        return [self._feedback(r) for r in rows]


__all__ = ["LABELS", "UNLABELLED", "EventStore", "summary_of"]
