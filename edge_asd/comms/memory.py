"""A ``Communicator`` that records every call: the pipeline's tests assert on it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from edge_asd.comms.base import Communicator, StreamInfo, as_stream_info
from edge_asd.comms.topics import EVENT_KINDS, STATUSES


class MemoryCommunicator(Communicator):
    """Keeps calls in order (``calls``) and the latest state per stream, under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.started = False
        self.stopped = False
        self.streams: list[StreamInfo] = []
        self.status: dict[str, tuple[str, str]] = {}
        self.anomaly: dict[str, bool] = {}
        self.enabled: dict[str, bool] = {}
        self.scores: list[tuple[str, float, float | None]] = []
        self.events: list[dict[str, Any]] = []
        self.stats: list[dict[str, Any]] = []

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def start(self) -> None:
        with self._lock:
            self.started = True
            self._record("start")

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            self.stopped = True
            self._record("stop", timeout_s)

    def announce(self, streams: Sequence[StreamInfo | Any]) -> None:
        infos = [as_stream_info(s) for s in streams]
        with self._lock:
            self.streams = infos
            for info in infos:
                self.enabled[info.name] = info.enabled
            self._record("announce", tuple(infos))

    def publish_status(self, stream: str, status: str, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        with self._lock:
            self.status[stream] = (status, message)
            self._record("status", stream, status, message)

    def publish_anomaly(self, stream: str, on: bool) -> None:
        with self._lock:
            self.anomaly[stream] = bool(on)
            self._record("anomaly", stream, bool(on))

    def publish_score(self, stream: str, score: float, threshold: float | None) -> None:
        with self._lock:
            self.scores.append((stream, float(score), threshold))
            self._record("score", stream, float(score), threshold)

    def publish_event(self, kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r} is not one of {EVENT_KINDS}")
        with self._lock:
            self.events.append({"type": kind, "before": before, "after": after})
            self._record("event", kind, before, after)

    def publish_stats(self, stats: dict[str, Any]) -> None:
        with self._lock:
            self.stats.append(stats)
            self._record("stats", stats)

    def set_enabled(self, stream: str, enabled: bool) -> None:
        with self._lock:
            self.enabled[stream] = bool(enabled)
            self._record("enabled", stream, bool(enabled))

    def simulate_enabled_command(self, stream: str, enabled: bool) -> None:
        """What an operator's ``enabled/set`` does: call the hook, then report the state."""
        if self.on_enabled is not None:
            self.on_enabled(stream, enabled)
        self.set_enabled(stream, enabled)
