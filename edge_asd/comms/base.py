"""The one interface the pipeline uses to report: MQTT in production, memory in tests.

Why an abstract class: the pipeline must not know about brokers, outboxes or discovery, and
tests of the pipeline must run without a broker (``MemoryCommunicator`` in
``tests/fixtures/comms.py``).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

EnabledHandler = Callable[[str, bool], None]
StreamCommandHandler = Callable[[str, str, dict], None]
"""``(stream, name, payload)`` of an operator's ``feedback`` or ``enrol`` command."""


@dataclass(frozen=True)
class StreamInfo:
    """What discovery and the retained attributes say about a stream."""

    name: str
    threshold: float | None = None
    classes: tuple[str, ...] = ()
    source: str = ""
    enabled: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def as_stream_info(stream: Any) -> StreamInfo:
    """Accept a ``StreamInfo``, a ``StreamConfig`` or a bare name."""
    if isinstance(stream, StreamInfo):
        return stream
    if isinstance(stream, str):
        return StreamInfo(name=stream)
    return StreamInfo(
        name=stream.name,
        threshold=getattr(stream, "threshold", None),
        classes=tuple(getattr(stream, "classes", ()) or ()),
        source=str(getattr(stream, "source", "") or ""),
        enabled=bool(getattr(stream, "enabled", True)),
    )


class Communicator(abc.ABC):
    """Publishes a node's state and events. Every ``publish_*`` is thread-safe and never blocks
    on the network; ``publish_event`` is durable (it survives a broker outage and a restart).

    ``on_enabled(stream, enabled)`` is called (from a comms thread) when an operator switches a
    stream on or off remotely; the pipeline sets it before ``start()``.
    """

    on_enabled: EnabledHandler | None = None
    on_stream_command: StreamCommandHandler | None = None
    """Called (from a comms thread) with an operator's ``feedback``/``enrol`` command."""

    @abc.abstractmethod
    def start(self) -> None:
        """Begin connecting (in the background: an unreachable broker is not fatal)."""

    @abc.abstractmethod
    def stop(self, timeout_s: float = 5.0) -> None:
        """Flush durable events for up to ``timeout_s``, say goodbye, disconnect."""

    @abc.abstractmethod
    def announce(self, streams: Sequence[StreamInfo | Any]) -> None:
        """Declare the streams: HA discovery, retained attributes and enabled states."""

    @abc.abstractmethod
    def publish_status(self, stream: str, status: str, message: str = "") -> None:
        """Retained stream health: online | offline | fault | disabled (+ fault message)."""

    @abc.abstractmethod
    def publish_anomaly(self, stream: str, on: bool) -> None:
        """Retained ON/OFF anomaly state of a stream."""

    @abc.abstractmethod
    def publish_score(self, stream: str, score: float, threshold: float | None) -> None:
        """Latest score (not retained, QoS 0: a lost score is replaced by the next one)."""

    @abc.abstractmethod
    def publish_event(self, kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
        """An event change (new | update | end); written to durable storage before sending."""

    @abc.abstractmethod
    def publish_stats(self, stats: dict[str, Any]) -> None:
        """Periodic statistics (not retained, QoS 0)."""

    def set_enabled(self, stream: str, enabled: bool) -> None:  # noqa: B027 - optional hook
        """Report a stream's enabled state (retained); default: nothing to report to."""

    def publish_attributes(self, stream: str, threshold: float | None, extra: dict[str, Any]) -> None:  # noqa: B027
        """Retained attributes changed (a new threshold after feedback, the enrolment state)."""

    def publish_feedback_result(self, stream: str, result: dict[str, Any]) -> None:  # noqa: B027
        """The answer to an operator's feedback (QoS 1, not retained)."""

    def publish_enrolment(self, stream: str, state: dict[str, Any]) -> None:  # noqa: B027
        """Retained state of a stream's (re-)enrolment: enrolling, ok or failed, and progress."""
