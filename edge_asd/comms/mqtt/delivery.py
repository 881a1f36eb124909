"""The outbox delivery loop: durable events handed to paho in order, deleted on their PUBACK.

paho keeps unacknowledged QoS 1 messages in memory and resends them, in order, after a
reconnect; the SQLite outbox covers what memory cannot, a process restart. This class is the
bridge: rows go out in ``seq`` order with at most ``max_inflight`` unacknowledged, and a row
leaves the outbox only when the broker confirmed it. Only the sender thread calls it, except
``acked`` (paho's network thread), which just queues the message id.
"""

from __future__ import annotations

import logging
import queue
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_asd.comms.outbox import Outbox

logger = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite3"
"""Under the state directory: events not yet acknowledged by the broker."""

EVENT_EXPIRY_S = 3600
"""MQTT 5 message expiry of an event: the broker drops an older one instead of delivering it late
(a consumer that was away that long still finds the retained anomaly state)."""

EVENT_SCHEMA = "1"
"""``schema`` user property of an event, for consumers that parse the payload."""


def event_properties(seq: int, protocol: str) -> Properties | None:
    """MQTT 5 properties of an event (expiry, content type, schema, ``seq`` for de-duplication)."""
    if protocol != "5":
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = EVENT_EXPIRY_S
    props.ContentType = "application/json"
    props.UserProperty = [("schema", EVENT_SCHEMA), ("seq", str(seq))]
    return props


class EventDelivery:
    """Owns the outbox while the communicator runs, and the in-flight map of its rows."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = int(max_inflight)
        self.outbox: Outbox | None = None
        self.rejected = 0
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> outbox seq
        self._last_sent = 0

    def open(self, path: Path, max_rows: int) -> None:
        self.outbox = Outbox(path, max_rows)

    def close(self) -> None:
        """Close the outbox; what was not delivered stays in it for the next start."""
        if self.outbox is None:
            return
        left = len(self.outbox)
        if left:
            logger.warning("%d event(s) not delivered yet; kept in %s for the next start", left, self.outbox.path)
        self.outbox.close()
        self.outbox = None

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by the broker (in the outbox)."""
        return len(self.outbox) if self.outbox is not None else 0

    @property
    def dropped_updates(self) -> int:
        return self.outbox.dropped_updates if self.outbox is not None else 0

    def append(self, kind: str, topic: str, payload: bytes) -> None:
        if self.outbox is None:
            raise RuntimeError("MqttCommunicator is not running: publish_event before start() or after stop()")
        self.outbox.append(kind, topic, payload)

    def acked(self, mid: int, failed: bool) -> None:
        """paho's network thread: a PUBACK (or a failure reason code) for message ``mid``."""
        self._acks.put(-mid if failed else mid)

    def reset(self) -> None:
        """A new paho client: its predecessor's in-flight messages will never be acknowledged."""
        self._inflight.clear()
        self._last_sent = 0

    def handle_acks(self) -> None:
        """Delete acknowledged rows; a rejected event is dropped (it would be rejected again)."""
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            seq = self._inflight.pop(abs(mid), None)
            if seq is None or self.outbox is None:
                continue  # a state publish, or an event resent after the process restarted
            if mid < 0:
                self.rejected += 1
                logger.error("broker rejected event #%d (PUBACK failure); dropping it", seq)
            self.outbox.delete(seq)

    def send(self, client: mqtt.Client, protocol: str) -> None:
        """Hand the next rows to paho, up to the in-flight limit."""
        if self.outbox is None:
            return
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for row in self.outbox.pending(after_seq=self._last_sent, limit=room):
            props = event_properties(row.seq, protocol)
            info = client.publish(row.topic, row.payload, qos=1, retain=False, properties=props)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                logger.debug("event #%d not handed to paho yet: %s", row.seq, mqtt.error_string(info.rc))
                return
            self._inflight[info.mid] = row.seq
            self._last_sent = row.seq
