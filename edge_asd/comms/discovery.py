"""Home Assistant MQTT discovery: per-component configs, retained.

Why per-component (not device-based) discovery: it works on every HA release still in use.
Each stream gets an anomaly ``binary_sensor`` (device_class problem), a score ``sensor``, an
``enabled`` switch and diagnostics; the node gets diagnostics fed from ``stats`` and a
"Node problem" ``binary_sensor`` fed from its own ``status`` (outbox, delivery, lock faults). Entities
are available only while the node is online **and** the stream's status is ``online``
(``availability_mode: all``); a stream in ``fault`` shows as unavailable, not as "no problem".
Entity ids use ``default_entity_id`` (``object_id`` is deprecated since HA 2025.10).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_asd import __version__
from edge_asd.comms.base import StreamInfo
from edge_asd.comms.topics import Topics, unique_id
from edge_asd.core.constants import FAULT, OFFLINE, ONLINE, STREAM_STATES

logger = logging.getLogger(__name__)

SUPPORT_URL = "https://github.com/edge-asd/edge-asd"


def device_model() -> str:
    """The Jetson model from the device tree, else the CPU architecture."""
    try:
        text = Path("/proc/device-tree/model").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"edge-asd on {platform.machine() or 'unknown'}"
    return text.strip("\x00 \n") or platform.machine()


def device_block(node: str, model: str | None = None) -> dict[str, Any]:
    return {
        "identifiers": [unique_id(node)],
        "name": f"edge-asd {node}",
        "manufacturer": "edge-asd",
        "model": model or device_model(),
        "sw_version": __version__,
    }


def origin_block() -> dict[str, Any]:
    return {"name": "edge-asd", "sw_version": __version__, "support_url": SUPPORT_URL}


def _stats_template(*keys: str, default: str = "0") -> str:
    """A template that survives missing keys (HA logs an error for each failed render)."""
    expr = "value_json"
    for key in keys:
        expr = f"({expr}.get('{key}') or {{}})" if key != keys[-1] else f"{expr}.get('{key}', {default})"
    return "{{ " + expr + " }}"


def discovery_messages(
    topics: Topics,
    streams: Sequence[StreamInfo],
    discovery_prefix: str = "homeassistant",
    model: str | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """``(config topic, payload)`` for every entity of the node; publish retained."""
    node = topics.node
    dev = device_block(node, model)
    origin = origin_block()
    node_avail = {"topic": topics.available, "payload_available": ONLINE, "payload_not_available": OFFLINE}
    out: list[tuple[str, dict[str, Any]]] = []

    def add(component: str, uid: str, payload: dict[str, Any]) -> None:
        payload = {
            "unique_id": uid,
            "default_entity_id": f"{component}.{uid}",
            "device": dev,
            "origin": origin,
            "qos": 1,
            **payload,
        }
        out.append((f"{discovery_prefix}/{component}/{uid}/config", payload))

    for info in streams:
        s = info.name
        stream_avail = [
            node_avail,
            {
                "topic": topics.status(s),
                # any other status (fault, disabled) makes the stream's entities unavailable
                "value_template": f"{{{{ '{ONLINE}' if value == '{ONLINE}' else '{OFFLINE}' }}}}",
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            },
        ]
        add(
            "binary_sensor",
            unique_id(node, s, "anomaly"),
            {
                "name": f"{s} anomaly",
                "device_class": "problem",
                "state_topic": topics.anomaly(s),
                "payload_on": "ON",
                "payload_off": "OFF",
                "availability": stream_avail,
                "availability_mode": "all",
                "json_attributes_topic": topics.attributes(s),
            },
        )
        add(
            "sensor",
            unique_id(node, s, "score"),
            {
                "name": f"{s} score",
                "state_topic": topics.score(s),
                "state_class": "measurement",
                "suggested_display_precision": 3,
                "availability": stream_avail,
                "availability_mode": "all",
                "json_attributes_topic": topics.attributes(s),
            },
        )
        add(
            "switch",
            unique_id(node, s, "enabled"),
            {
                "name": f"{s} monitoring",
                "command_topic": topics.enabled_set(s),
                "state_topic": topics.enabled_state(s),
                "payload_on": "ON",
                "payload_off": "OFF",
                "availability": [node_avail],
                "entity_category": "config",
            },
        )
        add(
            "sensor",
            unique_id(node, s, "status"),
            {
                "name": f"{s} status",
                "state_topic": topics.status(s),
                "device_class": "enum",
                "options": list(STREAM_STATES),
                "availability": [node_avail],
                "entity_category": "diagnostic",
            },
        )
        add(
            "sensor",
            unique_id(node, s, "overflows"),
            {
                "name": f"{s} input overflows",
                "state_topic": topics.stats,
                "value_template": _stats_template("streams", s, "overflows"),
                "state_class": "total_increasing",
                "availability": [node_avail],
                "entity_category": "diagnostic",
            },
        )
    add(
        "sensor",
        unique_id(node, "inference_ms"),
        {
            "name": "Inference time",
            "state_topic": topics.stats,
            "value_template": _stats_template("detector", "inference_ms", default="none"),
            "unit_of_measurement": "ms",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "availability": [node_avail],
            "entity_category": "diagnostic",
        },
    )
    add(
        "sensor",
        unique_id(node, "outbox"),
        {
            "name": "Undelivered events",
            "state_topic": topics.stats,
            "value_template": _stats_template("mqtt", "outbox_pending"),
            "state_class": "measurement",
            "availability": [node_avail],
            "entity_category": "diagnostic",
        },
    )
    add(
        "binary_sensor",
        unique_id(node, "problem"),
        {
            # the node's own faults (outbox, delivery, lock); their text is on status/message
            "name": "Node problem",
            "device_class": "problem",
            "state_topic": topics.node_status,
            "payload_on": FAULT,
            "payload_off": ONLINE,
            "availability": [node_avail],
            "entity_category": "diagnostic",
        },
    )
    return out
