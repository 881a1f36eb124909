"""The connection to the broker: one paho client at a time, its callbacks, the 3.1.1 fallback.

paho's network thread (``loop_start``) runs the callbacks, which only set flags and put
``Command``s on a queue: publishing or waiting inside a callback can deadlock paho. The
node's availability topic carries the LWT ``offline``; on a clean stop the node publishes the
same word itself (per the topic contract; Frigate uses ``stopped``): HA only knows
available/not available.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from edge_asd.comms.credentials import check_tls_files, resolve_password
from edge_asd.comms.mqtt.commands import CONNECTED, FALLBACK, Command
from edge_asd.comms.topics import Topics
from edge_asd.config import MqttConfig
from edge_asd.core.constants import OFFLINE

logger = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = 132  # CONNACK reason code (paho maps the 3.1.1 refusal onto it)


class MqttSession:
    """Owns the paho client and the ``connected`` flag; see the module docstring for threads.

    ``on_ack(mid, reason_code, reason_name)`` and ``on_message(msg) -> Command | None`` are called on paho's
    thread; every command goes to ``commands`` and sets ``wake`` for the sender thread.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        client_id: str,
        *,
        commands: queue.SimpleQueue[Command],
        wake: threading.Event,
        on_ack: Callable[[int, int, str], None],
        on_message: Callable[[mqtt.MQTTMessage], Command | None],
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.client_id = client_id
        self.protocol = "3.1.1" if cfg.protocol == "v311" else "5"
        self.client: mqtt.Client | None = None
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self._commands = commands
        self._wake = wake
        self._on_ack = on_ack
        self._parse = on_message
        self._password: str | None = None
        self._tls_context: Any = None
        self._warned_unreachable = False

    def check_credentials(self) -> None:
        """Validate the TLS files and resolve the password: errors here are the user's to fix."""
        self._tls_context = check_tls_files(self.cfg)
        self._password = resolve_password(self.cfg)

    def connect(self) -> None:
        """Create a client and connect in the background (an unreachable broker is retried)."""
        self.client = self._make_client()
        self._connect(self.client)

    def _make_client(self) -> mqtt.Client:
        proto = MQTTProtocolVersion.MQTTv5 if self.protocol == "5" else MQTTProtocolVersion.MQTTv311
        kwargs: dict[str, Any] = {"client_id": self.client_id, "protocol": proto}
        if proto != MQTTProtocolVersion.MQTTv5:
            kwargs["clean_session"] = True
        client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        client.enable_logger(logging.getLogger("edge_asd.comms.paho"))
        client.will_set(self.topics.available, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(1, 30)
        client.max_queued_messages_set(1000)
        client.max_inflight_messages_set(max(20, self.cfg.max_inflight))
        if self.cfg.username is not None or self._password is not None:
            client.username_pw_set(self.cfg.username or "", self._password)
        if self._tls_context is not None:
            client.tls_set_context(self._tls_context)
            if self.cfg.tls.insecure:
                client.tls_insecure_set(True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _connect(self, client: mqtt.Client) -> None:
        logger.info(
            "connecting to MQTT broker %s:%d (MQTT %s, tls=%s, user=%s) as %s",
            self.cfg.host,
            self.cfg.effective_port,
            self.protocol,
            self.cfg.tls.enabled,
            self.cfg.username or "-",
            self.client_id,
        )
        client.connect_async(self.cfg.host, self.cfg.effective_port, keepalive=self.cfg.keepalive)
        client.loop_start()

    def fallback_to_311(self, old: mqtt.Client) -> None:
        """The broker refused MQTT 5: replace the client by a 3.1.1 one (sender thread)."""
        logger.warning("MQTT broker refuses MQTT 5; falling back to MQTT 3.1.1 (no message properties)")
        old.loop_stop()
        old.disconnect()
        self.protocol = "3.1.1"
        self.connect()

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = True) -> None:
        """Publish if connected; otherwise drop it (state is republished at the next connect)."""
        client = self.client
        if client is None or not self.connected.is_set():
            return
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            logger.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))

    def close(self, deadline: float) -> None:
        """Say ``offline`` (confirmed until ``deadline``, monotonic), disconnect, end paho's thread."""
        client = self.client
        if client is None:
            return
        if self.connected.is_set():
            info = client.publish(self.topics.available, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as err:
                logger.debug("offline not confirmed: %s", err)
        # paho's network thread logs "Client is not connected" at ERROR while it winds down
        # after a deliberate disconnect; that is not an error of ours.
        client.disable_logger()
        client.disconnect()
        client.loop_stop()
        self.connected.clear()
        self.client = None

    # --- paho callbacks: tiny, never publish or wait -----------------------------------------

    def _queue(self, command: Command) -> None:
        self._commands.put(command)
        self._wake.set()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            if reason.value == _UNSUPPORTED_PROTOCOL and self.protocol == "5" and self.cfg.protocol == "auto":
                self._commands.put(Command(FALLBACK, client))
            else:
                logger.warning("MQTT broker refused the connection: %s", reason)
            self._wake.set()
            return
        logger.info("connected to MQTT broker %s:%d", self.cfg.host, self.cfg.effective_port)
        self.connected.set()
        self._warned_unreachable = False
        self._queue(Command(CONNECTED, client))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._warned_unreachable:
            self._warned_unreachable = True
            logger.warning(
                "cannot reach MQTT broker %s:%d; retrying in the background (events wait in the outbox)",
                self.cfg.host,
                self.cfg.effective_port,
            )

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected.is_set() and not self.stopping.is_set():
            logger.warning("disconnected from MQTT broker: %s; reconnecting", reason)
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # paho 2.x (callback API 2) passes the PUBACK's reason code: MQTT 5 brokers refuse with
        # 0x80+ (0x87 Not authorized, 0x97 Quota exceeded); under 3.1.1 it is always Success.
        code = int(getattr(reason, "value", 0) or 0)
        self._on_ack(mid, code, str(reason) if code else "")
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        command = self._parse(msg)
        if command is not None:
            self._queue(command)
