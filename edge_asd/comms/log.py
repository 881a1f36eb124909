"""A ``Communicator`` for a daemon without a broker (``mqtt:`` unset): everything goes to the log.

Why not the tests' ``MemoryCommunicator`` (``tests/fixtures/comms.py``): that one keeps every
call and would grow without bound in a daemon; this one keeps only the latest state and writes
changes to the journal. (``NullCommunicator`` is for runs that must not report at all.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from edge_asd.comms.base import Communicator, StreamInfo, as_stream_info
from edge_asd.comms.topics import EVENT_KINDS, STATUSES
from edge_asd.core.constants import FAULT

logger = logging.getLogger(__name__)


class LogCommunicator(Communicator):
    """Logs state changes (INFO), faults and events (WARNING), scores and stats (DEBUG)."""

    def __init__(self) -> None:
        self.status: dict[str, tuple[str, str]] = {}
        self.anomaly: dict[str, bool] = {}

    def start(self) -> None:
        logger.info("no MQTT broker configured: alerts are only logged")

    def stop(self, timeout_s: float = 5.0) -> None:
        return None

    def announce(self, streams: Sequence[StreamInfo | Any]) -> None:
        names = ", ".join(as_stream_info(s).name for s in streams)
        logger.info("monitoring stream(s): %s", names)

    def publish_status(self, stream: str, status: str, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        if self.status.get(stream) == (status, message):
            return
        self.status[stream] = (status, message)
        level = logging.WARNING if status == FAULT else logging.INFO
        logger.log(level, "stream %s is %s%s", stream, status, f": {message}" if message else "")

    def publish_anomaly(self, stream: str, on: bool) -> None:
        if self.anomaly.get(stream) == bool(on):
            return
        self.anomaly[stream] = bool(on)
        logger.warning("stream %s anomaly %s", stream, "ON" if on else "OFF")

    def publish_score(self, stream: str, score: float, threshold: float | None) -> None:
        logger.debug("stream %s score %.4f (threshold %s)", stream, score, threshold)

    def publish_event(self, kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r} is not one of {EVENT_KINDS}")
        logger.warning("event %s: %s", kind, json.dumps(after, default=str))

    def publish_stats(self, stats: dict[str, Any]) -> None:
        logger.debug("stats: %s", json.dumps(stats, default=str))
