"""The node's retained state per stream, kept so it can be said again after every connect.

Why a cache: state topics (status, anomaly, attributes, enabled, HA discovery) are published
only while connected, never queued, so a long outage cannot fill paho's queue with stale
states; what the node currently believes is instead republished in full at each connect.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_asd.comms.base import StreamInfo
from edge_asd.comms.discovery import discovery_messages
from edge_asd.comms.topics import Topics
from edge_asd.config import MqttConfig
from edge_asd.core import jsonsafe
from edge_asd.core.constants import FAULT, ONLINE

logger = logging.getLogger(__name__)

DISCOVERY_FILE = "discovery.json"
"""Under the state directory: the HA config topics announced last, to retract removed streams."""

Publish = Callable[[str, "str | bytes"], None]
"""Sends one retained QoS 1 message if connected; a no-op otherwise (the cache covers it)."""


def on_off(on: bool) -> str:
    """The payload of a binary state, as Home Assistant's switch and binary_sensor expect it."""
    return "ON" if on else "OFF"


def attributes_json(info: StreamInfo) -> str:
    """The retained attributes of one stream (threshold, classes, source, extras)."""
    return jsonsafe.dumps(
        {"threshold": info.threshold, "classes": list(info.classes), "source": info.source, **info.extra}
    )


class RetainedState:
    """Latest status, anomaly, enabled state and attributes per stream, plus HA discovery.

    Every method updates the cache and publishes under ``lock``, so a republish after a
    connect (on the sender thread) and a change from the pipeline thread never interleave
    into an older value winning.
    """

    def __init__(self, cfg: MqttConfig, topics: Topics, state_dir: Path, model: str | None, publish: Publish) -> None:
        self.cfg = cfg
        self.topics = topics
        self.state_dir = state_dir
        self.model = model
        self._publish = publish
        self.lock = threading.RLock()
        self.streams: dict[str, StreamInfo] = {}
        self.status: dict[str, tuple[str, str]] = {}
        self.anomaly: dict[str, bool] = {}
        self.enabled: dict[str, bool] = {}
        self.node_faults: dict[str, str] = {}

    def announce(self, infos: list[StreamInfo], connected: bool) -> None:
        """Declare the streams; their enabled state defaults to the config's until switched.

        A stream's retained ``anomaly`` starts ``OFF`` unless this run already opened an event
        on it: an ``ON`` retained by a run that died during an event must not outlive it."""
        with self.lock:
            self.streams = {i.name: i for i in infos}
            for info in infos:
                self.enabled.setdefault(info.name, info.enabled)
                self.anomaly.setdefault(info.name, False)
            if connected:
                self.republish_streams()
                self.publish_discovery()

    def set_status(self, stream: str, status: str, message: str) -> None:
        """Publish a changed status (message first, so a reader of the status finds its reason)."""
        with self.lock:
            if self.status.get(stream) == (status, message):
                return
            self.status[stream] = (status, message)
            self._publish(self.topics.status_message(stream), message)
            self._publish(self.topics.status(stream), status)

    def set_anomaly(self, stream: str, on: bool) -> None:
        with self.lock:
            self.anomaly[stream] = bool(on)
            self._publish(self.topics.anomaly(stream), on_off(on))

    def correct_anomaly(self, stream: str) -> None:
        """``OFF`` for a stream whose event a previous run left open, unless this run opened one."""
        with self.lock:
            if not self.anomaly.get(stream, False):
                self.anomaly[stream] = False
                self._publish(self.topics.anomaly(stream), on_off(False))

    def set_node_fault(self, key: str, message: str | None) -> None:
        """Raise or clear one of the node's faults; publish the node's state when it changed."""
        with self.lock:
            if message is None:
                if self.node_faults.pop(key, None) is None:
                    return
            elif self.node_faults.get(key) == message:
                return
            else:
                self.node_faults[key] = message
            self.publish_node_status()

    def publish_node_status(self) -> None:
        """``status/message`` (the faults, "; "-joined) first, then ``status`` online | fault."""
        with self.lock:
            text = "; ".join(self.node_faults[k] for k in sorted(self.node_faults))
            self._publish(self.topics.node_status_message, text)
            self._publish(self.topics.node_status, FAULT if self.node_faults else ONLINE)

    def set_threshold(self, stream: str, threshold: float | None) -> None:
        """Republish the attributes when the threshold a score is compared with changed."""
        with self.lock:
            info = self.streams.get(stream)
            if threshold is not None and (info is None or info.threshold != threshold):
                info = StreamInfo(stream) if info is None else info
                info = StreamInfo(info.name, threshold, info.classes, info.source, info.enabled, info.extra)
                self.streams[stream] = info
                self._publish(self.topics.attributes(stream), attributes_json(info))

    def set_attributes(self, stream: str, threshold: float | None, extra: dict[str, Any]) -> None:
        """Republish a stream's attributes with a new threshold and extra fields (enrolment)."""
        with self.lock:
            info = self.streams.get(stream) or StreamInfo(stream)
            info = StreamInfo(info.name, threshold if threshold is not None else info.threshold, info.classes,
                              info.source, info.enabled, {**info.extra, **extra})  # fmt: skip
            self.streams[stream] = info
            self._publish(self.topics.attributes(stream), attributes_json(info))

    def set_enabled(self, stream: str, enabled: bool) -> None:
        with self.lock:
            self.enabled[stream] = bool(enabled)
            self._publish(self.topics.enabled_state(stream), on_off(enabled))

    def republish_streams(self) -> None:
        """Every cached stream topic again (after a connect), and the node's own status (which
        also clears a fault retained by a previous run)."""
        with self.lock:
            self.publish_node_status()
            for name, info in self.streams.items():
                self._publish(self.topics.attributes(name), attributes_json(info))
            for name, enabled in self.enabled.items():
                self._publish(self.topics.enabled_state(name), on_off(enabled))
            for name, (status, message) in self.status.items():
                self._publish(self.topics.status_message(name), message)
                self._publish(self.topics.status(name), status)
            for name, on in self.anomaly.items():
                self._publish(self.topics.anomaly(name), on_off(on))

    def publish_discovery(self) -> None:
        """HA discovery configs of the current streams; empty configs retract removed ones."""
        if not self.cfg.discovery.enabled:
            return
        with self.lock:
            messages = discovery_messages(
                self.topics, list(self.streams.values()), self.cfg.discovery.prefix, model=self.model
            )
            current = [topic for topic, _ in messages]
            for topic in self._forget_old_discovery(current):
                self._publish(topic, b"")  # an empty retained config removes the entity
            for topic, payload in messages:
                self._publish(topic, json.dumps(payload))

    def _forget_old_discovery(self, current: list[str]) -> list[str]:
        """Config topics announced before but not now (a stream was removed or renamed)."""
        path = self.state_dir / DISCOVERY_FILE
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = []
        try:
            path.write_text(json.dumps(current), encoding="utf-8")
        except OSError as err:
            logger.debug("cannot remember discovery topics in %s: %s", path, err)
        return [t for t in old if isinstance(t, str) and t not in set(current)]
