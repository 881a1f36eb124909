"""MQTT ``Communicator`` (paho-mqtt 2.x): retained state, durable events, HA discovery.

One module per responsibility:

- ``communicator``: ``MqttCommunicator``, the ``Communicator`` API and the sender thread;
- ``session``: the paho client, its callbacks (which never publish or wait) and the
  MQTT 5 -> 3.1.1 fallback;
- ``delivery``: the outbox delivery loop (``seq`` order, bounded in flight, delete on a
  successful PUBACK; a refused one is kept and retried with backoff, and raises a node fault);
- ``state``: the retained per-stream and node state and HA discovery, republished on every connect;
- ``commands``: the subscriptions and what arrives on them (HA birth, ``enabled/set``).

paho keeps unacknowledged QoS 1 messages in memory and resends them, in order, after a
reconnect; the outbox covers what memory cannot: a process restart. State topics are
published only while connected and republished on every connect, so a long outage cannot
fill paho's queue with stale states.
"""

from __future__ import annotations

from edge_asd.comms.mqtt.communicator import MqttCommunicator
from edge_asd.comms.mqtt.delivery import EVENT_EXPIRY_S, EVENT_SCHEMA, OUTBOX_FILE
from edge_asd.comms.mqtt.state import DISCOVERY_FILE

__all__ = ["DISCOVERY_FILE", "EVENT_EXPIRY_S", "EVENT_SCHEMA", "OUTBOX_FILE", "MqttCommunicator"]
