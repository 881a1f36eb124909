"""The MQTT topic contract in one place, so the publisher, HA discovery and ``watch`` agree.

Layout (``<p>`` prefix, ``<n>`` node id, ``<s>`` stream)::

    <p>/<n>/available                 retained, QoS 1, LWT: online | offline
    <p>/<n>/status                    retained, QoS 1: online | fault (the node's own faults)
    <p>/<n>/status/message            retained, QoS 1: the node's faults, "; "-joined (empty = none)
    <p>/<n>/<s>/status                retained, QoS 1: online | offline | fault | disabled
    <p>/<n>/<s>/status/message        retained, QoS 1: text of the fault (empty = cleared)
    <p>/<n>/<s>/anomaly               retained, QoS 1: ON | OFF
    <p>/<n>/<s>/score                 QoS 0: latest score, a float string
    <p>/<n>/<s>/attributes            retained, QoS 1: JSON {threshold, classes, source}
    <p>/<n>/<s>/enabled/set           command: ON | OFF
    <p>/<n>/<s>/enabled/state         retained, QoS 1: ON | OFF
    <p>/<n>/events                    QoS 1 (durable outbox): {"type", "before", "after"}
    <p>/<n>/stats                     QoS 0: JSON
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_asd.config import sanitize_id
from edge_asd.core.constants import STREAM_STATES

STATUSES = STREAM_STATES
EVENT_KINDS = ("new", "update", "end")


@dataclass(frozen=True)
class Topics:
    """Topic names of one node."""

    prefix: str
    node: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def available(self) -> str:
        return f"{self.base}/available"

    @property
    def node_status(self) -> str:
        """The node's own health (outbox, delivery, lock): ``online`` or ``fault``."""
        return f"{self.base}/status"

    @property
    def node_status_message(self) -> str:
        """What the node's faults are (empty when none). Cannot clash with a stream's topics:
        those have a stream level between the node and ``status``."""
        return f"{self.base}/status/message"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def stream(self, stream: str, leaf: str) -> str:
        return f"{self.base}/{stream}/{leaf}"

    def status(self, stream: str) -> str:
        return self.stream(stream, "status")

    def status_message(self, stream: str) -> str:
        return self.stream(stream, "status/message")

    def anomaly(self, stream: str) -> str:
        return self.stream(stream, "anomaly")

    def score(self, stream: str) -> str:
        return self.stream(stream, "score")

    def attributes(self, stream: str) -> str:
        return self.stream(stream, "attributes")

    def enabled_set(self, stream: str) -> str:
        return self.stream(stream, "enabled/set")

    def enabled_state(self, stream: str) -> str:
        return self.stream(stream, "enabled/state")

    def feedback_result(self, stream: str) -> str:
        return self.stream(stream, "feedback/result")

    def enrol_state(self, stream: str) -> str:
        return self.stream(stream, "enrol/state")

    def command_filter(self, leaf: str) -> str:
        """Subscription matching every stream's ``<leaf>/set`` command (``feedback``, ``enrol``)."""
        return f"{self.base}/+/{leaf}/set"

    def stream_of_command(self, topic: str, leaf: str) -> str | None:
        """The stream name of a ``<stream>/<leaf>/set`` topic of this node, else None."""
        head, tail = f"{self.base}/", f"/{leaf}/set"
        if not topic.startswith(head) or not topic.endswith(tail):
            return None
        stream = topic[len(head) : -len(tail)]
        return stream if stream and "/" not in stream else None

    @property
    def enabled_set_filter(self) -> str:
        """Subscription matching every stream's enable command."""
        return f"{self.base}/+/enabled/set"

    def stream_of_enabled_set(self, topic: str) -> str | None:
        """The stream name of an ``enabled/set`` topic of this node, else None."""
        head = f"{self.base}/"
        if not topic.startswith(head) or not topic.endswith("/enabled/set"):
            return None
        stream = topic[len(head) : -len("/enabled/set")]
        return stream if stream and "/" not in stream else None


def unique_id(*parts: str) -> str:
    """HA unique ids / object ids: only ``[a-zA-Z0-9_-]`` (``edge_asd_<node>_<stream>_<what>``)."""
    return sanitize_id("_".join(["edge_asd", *parts]))
