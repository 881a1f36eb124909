"""The subscriber side of the topic contract: what ``edge-asd watch`` shows operators.

Kept apart from the CLI so the parsing of topics and events is testable without a terminal,
and so it documents, from the consumer's side, what the daemon publishes.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_asd.comms.credentials import check_tls_files, resolve_password
from edge_asd.config import MqttConfig
from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class Message:
    topic: str
    payload: str
    retained: bool
    ts: float

    def parsed(self) -> Any:
        try:
            return json.loads(self.payload)
        except ValueError:
            return self.payload

    def as_json_line(self) -> str:
        return json.dumps(
            {"ts": round(self.ts, 3), "topic": self.topic, "retained": self.retained, "payload": self.parsed()},
            default=str,
        )


@dataclass
class StreamView:
    status: str = "?"
    message: str = ""
    anomaly: str = "?"
    score: float | None = None
    threshold: float | None = None
    enabled: str = "?"
    classes: list[str] = field(default_factory=list)


@dataclass
class NodeView:
    available: str = "?"
    status: str = "?"
    """The node's own health (outbox, delivery, lock): ``online`` or ``fault``."""
    message: str = ""
    """The node's faults, "; "-joined (empty when none)."""
    streams: dict[str, StreamView] = field(default_factory=dict)
    open_events: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def stream(self, name: str) -> StreamView:
        return self.streams.setdefault(name, StreamView())


class WatchState:
    """Folds messages of ``<prefix>/#`` into per-node views and an event log."""

    def __init__(self, prefix: str, log_lines: int = 12) -> None:
        self.prefix = prefix
        self.nodes: dict[str, NodeView] = {}
        self.log: deque[str] = deque(maxlen=log_lines)

    def apply(self, msg: Message) -> None:
        head = f"{self.prefix}/"
        if not msg.topic.startswith(head):
            return
        parts = msg.topic[len(head) :].split("/")
        if len(parts) < 2:
            return
        node = self.nodes.setdefault(parts[0], NodeView())
        leaf = parts[1:]
        if leaf == ["available"]:
            node.available = msg.payload
        elif leaf == ["status"]:
            node.status = msg.payload
        elif leaf == ["status", "message"]:  # the node's; a stream's has the stream level too
            node.message = msg.payload
        elif leaf == ["events"]:
            self._event(parts[0], node, msg)
        elif leaf == ["stats"]:
            parsed = msg.parsed()
            node.stats = parsed if isinstance(parsed, dict) else {}
        elif len(leaf) >= 2:
            self._stream_topic(node.stream(leaf[0]), leaf[1:], msg)

    @staticmethod
    def _stream_topic(view: StreamView, leaf: list[str], msg: Message) -> None:
        if leaf == ["status"]:
            view.status = msg.payload
        elif leaf == ["status", "message"]:
            view.message = msg.payload
        elif leaf == ["anomaly"]:
            view.anomaly = msg.payload
        elif leaf == ["score"]:
            try:
                view.score = float(msg.payload)
            except ValueError:
                view.score = None
        elif leaf == ["attributes"]:
            attrs = msg.parsed()
            if isinstance(attrs, dict):
                view.threshold = attrs.get("threshold")
                view.classes = list(attrs.get("classes") or [])
        elif leaf == ["enabled", "state"]:
            view.enabled = msg.payload

    def _event(self, node_name: str, node: NodeView, msg: Message) -> None:
        event = msg.parsed()
        if not isinstance(event, dict):
            return
        after = event.get("after") or {}
        kind = event.get("type", "?")
        eid = str(after.get("id", "?"))
        if kind == "end" or after.get("end_time") is not None or after.get("active") is False:
            node.open_events.pop(eid, None)
        else:
            node.open_events[eid] = after
        stream = after.get("stream") or after.get("mic") or "?"
        score = after.get("peak_score", after.get("score"))
        when = time.strftime("%H:%M:%S", time.localtime(msg.ts))
        score_text = f" peak {score:.3f}" if isinstance(score, (int, float)) else ""
        summary = (after.get("explanation") or {}).get("summary") if kind == "new" else None
        why = f": {summary}" if summary else ""
        self.log.append(f"{when} {node_name}/{stream} {kind} {eid}{score_text}{why}")


class Watcher:
    """A paho subscriber to ``<prefix>/#`` that hands messages to the caller's thread."""

    def __init__(self, cfg: MqttConfig, prefix: str | None = None) -> None:
        self.cfg = cfg
        self.prefix = prefix or cfg.prefix
        self.queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        tls = check_tls_files(cfg)
        password = resolve_password(cfg)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edge-asd-watch-{time.monotonic_ns() % 10**9}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if cfg.username is not None or password is not None:
            self.client.username_pw_set(cfg.username or "", password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            logger.warning("broker refused the connection: %s", reason)
            return
        client.subscribe(f"{self.prefix}/#", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.queue.put(Message(msg.topic, msg.payload.decode("utf-8", "replace"), bool(msg.retain), time.time()))

    def start(self) -> None:
        try:
            self.client.connect(self.cfg.host, self.cfg.effective_port, keepalive=30)
        except OSError as err:
            raise UserError(
                f"cannot reach MQTT broker {self.cfg.host}:{self.cfg.effective_port}: {err}; "
                "check --broker and that the broker runs"
            ) from None
        self.client.loop_start()

    def get(self, timeout_s: float) -> Message | None:
        try:
            return self.queue.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
