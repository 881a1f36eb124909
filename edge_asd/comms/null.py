"""A ``Communicator`` that publishes nothing and keeps nothing.

Why: some runs of the real pipeline must not report at all. ``edge-asd calibrate`` scores
minutes of normal audio with every threshold set to infinity; what it learns is the scores,
read from the streams, and telling a broker or the journal about streams that are being
calibrated would only mislead. Calls are still checked against the ``Communicator`` contract
(known statuses and event kinds), so a pipeline bug shows up here as it would with MQTT.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from edge_asd.comms.base import Communicator, StreamInfo
from edge_asd.comms.topics import EVENT_KINDS, STATUSES

logger = logging.getLogger(__name__)


class NullCommunicator(Communicator):
    """Validates and drops every call; ``start``/``stop`` do nothing."""

    def start(self) -> None:
        logger.debug("reporting disabled for this run (NullCommunicator)")

    def stop(self, timeout_s: float = 5.0) -> None:
        return None

    def announce(self, streams: Sequence[StreamInfo | Any]) -> None:
        return None

    def publish_status(self, stream: str, status: str, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")

    def publish_anomaly(self, stream: str, on: bool) -> None:
        return None

    def publish_score(self, stream: str, score: float, threshold: float | None) -> None:
        return None

    def publish_event(self, kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r} is not one of {EVENT_KINDS}")

    def publish_stats(self, stats: dict[str, Any]) -> None:
        return None
