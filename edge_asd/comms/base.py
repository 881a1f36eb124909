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
    on the network; ``publish_event`` is durable (it survives a broker outage and a restart):
    when it returns the event is committed, so the pipeline publishes ``anomaly ON`` after it.

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
        """An event change (new | update | end); committed to durable storage before it returns.

        Never raises for a failing disk: the event is then held in memory and a node fault
        raised (``publish_node_fault("outbox", ...)``), so alerting goes on."""

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

    def publish_node_fault(self, key: str, message: str | None) -> None:
        """Raise (``message``) or clear (``None``) a fault of the node itself, named by ``key``.

        Why node-level: a full disk under the outbox, a broker that refuses events or a second
        daemon on the state directory are not any one stream's fault, yet an operator must
        see them. ``key`` ("outbox", "delivery", "lock", ...) lets independent parts raise and
        clear their own fault. Here: logged on change (WARNING raised, INFO cleared); the MQTT
        communicator also publishes the node's faults, retained.
        """
        faults: dict[str, str] = self.__dict__.setdefault("_node_faults", {})
        if message is None:
            if faults.pop(key, None) is not None:
                logger.info("node fault %s cleared", key)
            return
        if faults.get(key) != message:
            faults[key] = message
            logger.warning("node fault %s: %s", key, message)

    def delivery_stats(self) -> dict[str, Any]:
        """How event delivery is doing: ``outbox_depth`` (events not yet acknowledged),
        ``oldest_undelivered_s`` (age of the oldest, None when none), ``memory_queue`` (events
        held in memory because the outbox file fails), ``refused`` (events the broker
        refused) and ``dead_letter`` (events it refused for good, kept in the outbox's
        ``dead_letter`` table). Zeros here: a communicator without an outbox delivers nothing later."""
        return {"outbox_depth": 0, "oldest_undelivered_s": None, "memory_queue": 0, "refused": 0, "dead_letter": 0}
