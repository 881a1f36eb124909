"""The console's MQTT client: subscribes to ``<prefix>/#``, publishes operators' commands.

Why not ``edge_asd.comms.watcher.Watcher``: the console must also publish (feedback,
re-enrol, enable), must keep serving its pages while the broker is down (``connect_async``
and paho's own reconnect loop, instead of failing at start), and announces its URL for its
node as a retained message that its last will clears.

A persistent MQTT 5 session (one hour) keeps the QoS 1 events a daemon publishes while the
console restarts; the history database drops the duplicates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_asd.comms.credentials import check_tls_files, resolve_password
from edge_asd.comms.topics import Topics
from edge_asd.config import MqttConfig

logger = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600
"""The broker keeps the console's subscription and queued events this long while it is away."""

OnMessage = Callable[[str, str, bool, float], None]


class ConsoleLink:
    """One paho client; ``on_message(topic, payload, retained, ts)`` runs on paho's thread."""

    def __init__(
        self,
        cfg: MqttConfig,
        prefix: str,
        client_id: str,
        on_message: OnMessage,
        announce: tuple[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.prefix = prefix
        self.announce = announce
        self.on_message = on_message
        self.last_error = ""
        self._stopping = False
        self._connected = threading.Event()
        tls = check_tls_files(cfg)
        password = resolve_password(cfg)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.reconnect_delay_set(1, 30)
        if cfg.username is not None or password is not None:
            self.client.username_pw_set(cfg.username or "", password)
        if tls is not None:
            self.client.tls_set_context(tls)
        if announce is not None:
            self.client.will_set(announce[0], "", qos=1, retain=True)  # empty retained = forget the URL
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            logger.warning("%s", self.last_error)
            return
        self.last_error = ""
        client.subscribe(f"{self.prefix}/#", qos=1)
        if self.announce is not None:
            client.publish(self.announce[0], self.announce[1], qos=1, retain=True)
        logger.info("console connected to MQTT broker %s:%s", self.cfg.host, self.cfg.effective_port)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        """Ready once the broker confirmed the subscription: from then on nothing published is missed."""
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stopping:
            self.last_error = f"disconnected from the broker: {reason}"
            logger.warning("%s; reconnecting", self.last_error)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.last_error = f"cannot reach MQTT broker {self.cfg.host}:{self.cfg.effective_port}"
        logger.warning("%s; retrying", self.last_error)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.on_message(msg.topic, msg.payload.decode("utf-8", "replace"), bool(msg.retain), time.time())
        except Exception:  # a bug in one message must not kill paho's thread
            logger.exception("console: could not handle a message on %s", msg.topic)

    def start(self) -> None:
        """Connect in the background: the pages work (and say so) while the broker is away."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(
            self.cfg.host, self.cfg.effective_port, keepalive=self.cfg.keepalive, clean_start=False, properties=props
        )
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        if self.announce is not None and self.connected:
            info = self.client.publish(self.announce[0], "", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2.0)
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: str, qos: int = 1, retain: bool = False) -> str | None:
        """Send a command; returns None when it was handed to the broker's connection, else why not."""
        if not self.connected:
            return self.last_error or "not connected to the MQTT broker"
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return f"MQTT publish failed: {mqtt.error_string(info.rc)}"
        return None


class Commands:
    """The commands an operator can send to a daemon, as topics and payloads of the contract."""

    def __init__(self, link: ConsoleLink, prefix: str) -> None:
        self.link = link
        self.prefix = prefix

    def _topic(self, node: str, stream: str, leaf: str) -> str:
        return Topics(self.prefix, node).stream(stream, leaf)

    def feedback(self, node: str, stream: str, event: str, label: str, by: str) -> str | None:
        payload = json.dumps({"event": event, "label": label, "by": by})
        return self.link.publish(self._topic(node, stream, "feedback/set"), payload)

    def enrol(self, node: str, stream: str, minutes: float) -> str | None:
        return self.link.publish(self._topic(node, stream, "enrol/set"), json.dumps({"minutes": minutes}))

    def enabled(self, node: str, stream: str, on: bool) -> str | None:
        return self.link.publish(Topics(self.prefix, node).enabled_set(stream), "ON" if on else "OFF")


__all__ = ["SESSION_EXPIRY_S", "Commands", "ConsoleLink"]
