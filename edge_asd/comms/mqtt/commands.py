"""What the node subscribes to, and what the messages that arrive there ask for.

Three kinds of message come in: an operator's JSON command on
``<prefix>/<node>/<stream>/feedback/set`` or ``.../enrol/set`` (for the pipeline), Home Assistant's birth message (``<discovery prefix>/status``
= ``online``: HA restarted and forgot the entities, so discovery must be published again)
and an operator's ``<prefix>/<node>/<stream>/enabled/set`` switch. paho delivers them on its
network thread, where publishing or waiting can deadlock paho, so they are only parsed here
into ``Command``s and queued; the sender thread carries them out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from edge_asd.comms.topics import Topics
from edge_asd.config import MqttConfig

logger = logging.getLogger(__name__)

CONNECTED = "connected"  # a client connected: subscribe and republish the state
FALLBACK = "fallback"  # the broker refused MQTT 5: reconnect with 3.1.1
HA_ONLINE = "ha_online"  # Home Assistant came (back) online: republish discovery
ENABLED = "enabled"  # an operator switched a stream on or off
STREAM_COMMAND = "stream_command"  # feedback on an event, or a re-enrolment: for the pipeline

STREAM_COMMANDS = ("feedback", "enrol")
"""``<prefix>/<node>/<stream>/<name>/set`` commands with a JSON object payload."""

HA_BIRTH_PAYLOAD = "online"
"""What Home Assistant publishes on ``<discovery prefix>/status`` when it starts (its word, not ours)."""


@dataclass(frozen=True)
class Command:
    """One piece of work for the sender thread; ``client`` is the paho client it concerns."""

    kind: str
    client: Any = None
    stream: str = ""
    enabled: bool = True
    name: str = ""
    payload: dict | None = None


def subscriptions(cfg: MqttConfig, topics: Topics) -> list[tuple[str, int]]:
    """Topic filters (QoS 1) to subscribe to after each connect."""
    subs = [(topics.enabled_set_filter, 1)] + [(topics.command_filter(name), 1) for name in STREAM_COMMANDS]
    if cfg.discovery.enabled:
        subs.append((f"{cfg.discovery.prefix}/status", 1))
    return subs


def parse_message(cfg: MqttConfig, topics: Topics, msg: mqtt.MQTTMessage) -> Command | None:
    """The command an incoming message carries, or None for anything we do not act on."""
    payload = msg.payload.decode("utf-8", "replace").strip()
    if msg.topic == f"{cfg.discovery.prefix}/status":
        return Command(HA_ONLINE) if payload == HA_BIRTH_PAYLOAD else None
    stream = topics.stream_of_enabled_set(msg.topic)
    if stream is not None and payload.upper() in ("ON", "OFF"):
        return Command(ENABLED, stream=stream, enabled=payload.upper() == "ON")
    for name in STREAM_COMMANDS:
        stream = topics.stream_of_command(msg.topic, name)
        if stream is None:
            continue
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            logger.warning("ignored %s command for %s: the payload must be a JSON object, got %.80r", name, stream, payload)
            return None
        return Command(STREAM_COMMAND, stream=stream, name=name, payload=body)
    logger.debug("ignored message on %s", msg.topic)
    return None
