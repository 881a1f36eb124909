"""The live picture of the fleet, folded from ``<prefix>/#``: nodes, streams, the last hour of scores.

Like ``edge_asd.comms.watcher.WatchState`` (the terminal view) but with what a web page
needs on top: attributes (threshold, enrolment), the re-enrolment progress, the console URL
a node announced, and a bounded score history per stream. Scores arrive about once a
second per stream; the history keeps the highest score of each ``bucket_s`` for the last
``history_s`` (720 points an hour at 5 s), so 32 streams stay well under a megabyte and the
page's plot shows every peak.

``apply`` returns what changed (an :class:`Update`) so the server can push only that to
browsers; it never blocks and never does I/O.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from edge_asd.core.constants import DISABLED, FAULT, OFFLINE, ONLINE

logger = logging.getLogger(__name__)

CONSOLE_LEAF = "console"
"""``<prefix>/<node>/console``: retained JSON ``{"url": ...}`` a console announces for its node."""

NODE = "node"
STREAM = "stream"
SCORE = "score"
EVENT = "event"
FEEDBACK = "feedback"


@dataclass(frozen=True)
class Update:
    """What one message changed: ``kind`` is node, stream, score, event or feedback."""

    kind: str
    node: str
    stream: str = ""
    data: Any = None


def _parse_json(payload: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None


def _float(payload: str) -> float | None:
    try:
        value = float(payload)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass
class StreamState:
    """One stream as the page shows it."""

    node: str
    name: str
    history_s: float
    bucket_s: float
    status: str = "?"
    message: str = ""
    anomaly: str = "?"
    score: float | None = None
    score_ts: float | None = None
    threshold: float | None = None
    classes: list[str] = field(default_factory=list)
    source: str = ""
    enrolment: dict[str, Any] = field(default_factory=dict)
    enabled: str = "?"
    enrol: dict[str, Any] = field(default_factory=dict)
    history: deque[list[float]] = field(default_factory=deque)

    @property
    def key(self) -> str:
        return f"{self.node}/{self.name}"

    def add_score(self, score: float, ts: float) -> None:
        self.score, self.score_ts = score, ts
        start = math.floor(ts / self.bucket_s) * self.bucket_s
        threshold = self.threshold if self.threshold is not None else math.nan
        if self.history and self.history[-1][0] >= start:
            last = self.history[-1]  # same bucket (or a late message): fold into the newest point
            last[1] = max(last[1], score)
            last[2] = threshold
        else:
            self.history.append([start, score, threshold])
        cutoff = ts - self.history_s
        while self.history and self.history[0][0] < cutoff:
            self.history.popleft()

    def series(self) -> list[list[float | None]]:
        """``[t, score, threshold]`` points (threshold None where unknown) for the plot, rounded:
        an hour of 32 streams is 23 000 points, and the page loads them all at once."""
        return [[round(t, 1), round(s, 3), None if math.isnan(th) else round(th, 3)] for t, s, th in self.history]


@dataclass
class NodeState:
    name: str
    available: str = "?"
    console_url: str | None = None
    streams: dict[str, StreamState] = field(default_factory=dict)
    last_seen: float = 0.0


class ConsoleState:
    """Folds messages of ``<prefix>/#`` into nodes and streams."""

    def __init__(self, prefix: str, history_s: float, bucket_s: float) -> None:
        self.prefix = prefix
        self.history_s = history_s
        self.bucket_s = bucket_s
        self.nodes: dict[str, NodeState] = {}

    def node(self, name: str) -> NodeState:
        found = self.nodes.get(name)
        if found is None:
            found = self.nodes[name] = NodeState(name)
        return found

    def stream(self, node: str, name: str) -> StreamState:
        n = self.node(node)
        found = n.streams.get(name)
        if found is None:
            found = n.streams[name] = StreamState(node, name, self.history_s, self.bucket_s)
        return found

    def find(self, node: str, stream: str) -> StreamState | None:
        n = self.nodes.get(node)
        return n.streams.get(stream) if n else None

    def streams(self) -> list[StreamState]:
        return [s for n in sorted(self.nodes) for _, s in sorted(self.nodes[n].streams.items())]

    def apply(self, topic: str, payload: str, ts: float | None = None) -> Update | None:
        """Fold one message in; returns what changed, or None for topics the console ignores."""
        ts = time.time() if ts is None else ts
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) < 2 or not parts[0]:
            return None
        node_name, leaf = parts[0], parts[1:]
        if leaf == ["stats"]:
            return None
        node = self.node(node_name)
        node.last_seen = ts
        if leaf == ["available"]:
            node.available = payload.strip()
            return Update(NODE, node_name)
        if leaf == [CONSOLE_LEAF]:
            info = _parse_json(payload)
            url = info.get("url") if isinstance(info, dict) else None
            node.console_url = url if isinstance(url, str) and url.startswith(("http://", "https://")) else None
            return Update(NODE, node_name)
        if leaf == ["events"]:
            event = _parse_json(payload)
            if not isinstance(event, dict) or not isinstance(event.get("after"), dict):
                return None
            return Update(EVENT, node_name, str(event["after"].get("stream") or ""), event)
        if len(leaf) < 2 or not leaf[0] or leaf == ["status", "message"]:
            return None  # <node>/status/message is the node's own fault text, not a stream's
        return self._stream_topic(node_name, leaf[0], leaf[1:], payload, ts)

    def _stream_topic(self, node: str, name: str, leaf: list[str], payload: str, ts: float) -> Update | None:
        if leaf[-1] == "set":
            return None  # a command (ours or somebody else's), not a state
        if leaf == ["feedback", "result"]:
            result = _parse_json(payload)
            return Update(FEEDBACK, node, name, result) if isinstance(result, dict) else None
        view = self.stream(node, name)
        if leaf == ["score"]:
            score = _float(payload)
            if score is None:
                return None
            view.add_score(score, ts)
            return Update(SCORE, node, name)
        if leaf == ["status"]:
            view.status = payload.strip()
        elif leaf == ["status", "message"]:
            view.message = payload
        elif leaf == ["anomaly"]:
            view.anomaly = payload.strip()
        elif leaf == ["attributes"]:
            attrs = _parse_json(payload)
            if not isinstance(attrs, dict):
                return None
            threshold = attrs.get("threshold")
            view.threshold = float(threshold) if isinstance(threshold, (int, float)) else None
            view.classes = [str(c) for c in attrs.get("classes") or []]
            view.source = str(attrs.get("source") or "")
            enrolment = attrs.get("enrolment")
            view.enrolment = enrolment if isinstance(enrolment, dict) else {}
        elif leaf == ["enabled", "state"]:
            view.enabled = payload.strip().upper()
        elif leaf == ["enrol", "state"]:
            state = _parse_json(payload)
            view.enrol = state if isinstance(state, dict) else {}
        else:
            return None
        return Update(STREAM, node, name)


def effective_status(node: NodeState, stream: StreamState) -> str:
    """What the page shows: a node that went offline takes its streams with it."""
    if node.available == OFFLINE:
        return OFFLINE
    if stream.status in (ONLINE, FAULT, DISABLED, OFFLINE):
        return stream.status
    return "unknown"


__all__ = [
    "CONSOLE_LEAF",
    "EVENT",
    "FEEDBACK",
    "NODE",
    "SCORE",
    "STREAM",
    "ConsoleState",
    "NodeState",
    "StreamState",
    "Update",
    "effective_status",
]
