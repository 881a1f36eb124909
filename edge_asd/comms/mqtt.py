"""MQTT ``Communicator`` (paho-mqtt 2.x): retained state, durable events, HA discovery.

Threads and why:

- the pipeline thread calls ``publish_*``: state publishes go straight to paho (thread-safe,
  non-blocking); events are committed to the SQLite outbox and the sender is woken;
- paho's network thread (``loop_start``) runs the callbacks, which only set flags and put
  items on queues: publishing or waiting inside a callback can deadlock paho;
- our sender thread does everything else: the work after each (re)connect (subscribe,
  retained states, discovery, ``online``), the outbox (in ``seq`` order, at most
  ``max_inflight`` unacknowledged, a row deleted on its PUBACK), the v5 -> 3.1.1 fallback and
  the ``enabled/set`` hook.

paho keeps unacknowledged QoS 1 messages in memory and resends them, in order, after a
reconnect; the outbox covers what memory cannot: a process restart. State topics are
published only while connected and republished on every connect, so a long outage cannot
fill paho's queue with stale states.

On a clean stop the node's availability becomes ``offline`` (the same word as the LWT, per
the topic contract; Frigate uses ``stopped``): HA only knows available/not available.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_asd.comms.base import Communicator, EnabledHandler, StreamInfo, as_stream_info
from edge_asd.comms.credentials import check_tls_files, resolve_password
from edge_asd.comms.discovery import discovery_messages
from edge_asd.comms.outbox import Outbox
from edge_asd.comms.topics import EVENT_KINDS, STATUSES, Topics
from edge_asd.config import MqttConfig

logger = logging.getLogger(__name__)

EVENT_EXPIRY_S = 3600
EVENT_SCHEMA = "1"
OUTBOX_FILE = "outbox.sqlite3"
DISCOVERY_FILE = "discovery.json"
_UNSUPPORTED_PROTOCOL = 132  # CONNACK reason code (paho maps the 3.1.1 refusal onto it)


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays become plain numbers and lists; anything else its str()."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _on_off(on: bool) -> str:
    return "ON" if on else "OFF"


class MqttCommunicator(Communicator):
    """Publishes one node's topics to one broker; see the module docstring for the threads."""

    def __init__(
        self,
        cfg: MqttConfig,
        node_id: str,
        state_dir: Path | str,
        *,
        model: str | None = None,
        on_enabled: EnabledHandler | None = None,
    ) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.state_dir = Path(state_dir)
        self.topics = Topics(cfg.prefix, node_id)
        self.model = model
        self.on_enabled = on_enabled
        self.client_id = cfg.client_id or f"edge-asd-{node_id}"
        self.protocol = "3.1.1" if cfg.protocol == "v311" else "5"
        self.outbox: Outbox | None = None
        self._client: mqtt.Client | None = None
        self._password: str | None = None
        self._tls_context: Any = None
        self._lock = threading.RLock()  # caches + the publishes that must follow them in order
        self._streams: dict[str, StreamInfo] = {}
        self._status: dict[str, tuple[str, str]] = {}
        self._anomaly: dict[str, bool] = {}
        self._enabled: dict[str, bool] = {}
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> outbox seq; sender thread only
        self._last_sent = 0
        self._sender: threading.Thread | None = None
        self.rejected_events = 0
        self._warned_unreachable = False

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Validate TLS/credentials (errors are fatal), open the outbox, connect in the background."""
        self._tls_context = check_tls_files(self.cfg)
        self._password = resolve_password(self.cfg)
        self.outbox = Outbox(self.state_dir / OUTBOX_FILE, self.cfg.outbox_max_rows)
        self._client = self._make_client()
        self._connect(self._client)
        self._sender = threading.Thread(target=self._run_sender, name="mqtt-sender", daemon=True)
        self._sender.start()

    def _make_client(self) -> mqtt.Client:
        proto = MQTTProtocolVersion.MQTTv5 if self.protocol == "5" else MQTTProtocolVersion.MQTTv311
        kwargs: dict[str, Any] = {"client_id": self.client_id, "protocol": proto}
        if proto != MQTTProtocolVersion.MQTTv5:
            kwargs["clean_session"] = True
        client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        client.enable_logger(logging.getLogger("edge_asd.comms.paho"))
        client.will_set(self.topics.available, "offline", qos=1, retain=True)
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

    def stop(self, timeout_s: float = 5.0) -> None:
        """Flush the outbox (while connected, up to ``timeout_s``), publish ``offline``, disconnect.

        Undelivered events stay in the outbox and go out at the next start.
        """
        client = self._client
        if client is None:
            return
        deadline = time.monotonic() + max(0.0, timeout_s)
        while self._connected.is_set() and self.pending_events and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        self._stopping.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout=5)
        client = self._client or client
        if self._connected.is_set():
            info = client.publish(self.topics.available, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as err:
                logger.debug("offline not confirmed: %s", err)
        # paho's network thread logs "Client is not connected" at ERROR while it winds down
        # after a deliberate disconnect; that is not an error of ours.
        client.disable_logger()
        client.disconnect()
        client.loop_stop()
        self._connected.clear()
        if self.outbox is not None:
            left = len(self.outbox)
            if left:
                logger.warning("%d event(s) not delivered yet; kept in %s for the next start", left, self.outbox.path)
            self.outbox.close()
            self.outbox = None
        self._client = None

    # --- state ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    @property
    def pending_events(self) -> int:
        """Events not yet acknowledged by the broker (in the outbox)."""
        return len(self.outbox) if self.outbox is not None else 0

    def _publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = True) -> None:
        """Publish if connected; otherwise the cached state is sent at the next connect."""
        client = self._client
        if client is None or not self._connected.is_set():
            return
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            logger.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))

    def announce(self, streams: Sequence[StreamInfo | Any]) -> None:
        infos = [as_stream_info(s) for s in streams]
        with self._lock:
            self._streams = {i.name: i for i in infos}
            for info in infos:
                self._enabled.setdefault(info.name, info.enabled)
            if self._connected.is_set():
                self._publish_stream_topics()
                self._publish_discovery()

    def publish_status(self, stream: str, status: str, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        with self._lock:
            if self._status.get(stream) == (status, message):
                return
            self._status[stream] = (status, message)
            self._publish(self.topics.status_message(stream), message)
            self._publish(self.topics.status(stream), status)

    def publish_anomaly(self, stream: str, on: bool) -> None:
        with self._lock:
            self._anomaly[stream] = bool(on)
            self._publish(self.topics.anomaly(stream), _on_off(on))

    def publish_score(self, stream: str, score: float, threshold: float | None) -> None:
        with self._lock:
            info = self._streams.get(stream)
            if threshold is not None and (info is None or info.threshold != threshold):
                info = StreamInfo(stream) if info is None else info
                info = StreamInfo(info.name, threshold, info.classes, info.source, info.enabled, info.extra)
                self._streams[stream] = info
                self._publish(self.topics.attributes(stream), self._attributes(info))
        self._publish(self.topics.score(stream), f"{float(score):.6g}", qos=0, retain=False)

    def publish_event(self, kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r} is not one of {EVENT_KINDS}")
        if self.outbox is None:
            raise RuntimeError("MqttCommunicator is not running: publish_event before start() or after stop()")
        payload = json.dumps({"type": kind, "before": before, "after": after}, default=_json_default).encode()
        self.outbox.append(kind, self.topics.events, payload)
        self._wake.set()

    def publish_stats(self, stats: dict[str, Any]) -> None:
        body = dict(stats)
        body["mqtt"] = {
            "connected": self.connected,
            "protocol": self.protocol,
            "outbox_pending": self.pending_events,
            "outbox_dropped_updates": self.outbox.dropped_updates if self.outbox else 0,
            "rejected_events": self.rejected_events,
        }
        self._publish(self.topics.stats, json.dumps(body, default=_json_default), qos=0, retain=False)

    def set_enabled(self, stream: str, enabled: bool) -> None:
        with self._lock:
            self._enabled[stream] = bool(enabled)
            self._publish(self.topics.enabled_state(stream), _on_off(enabled))

    # --- retained state and discovery (sender thread or caller, under the lock) ------------

    @staticmethod
    def _attributes(info: StreamInfo) -> str:
        return json.dumps(
            {"threshold": info.threshold, "classes": list(info.classes), "source": info.source, **info.extra},
            default=_json_default,
        )

    def _publish_stream_topics(self) -> None:
        for name, info in self._streams.items():
            self._publish(self.topics.attributes(name), self._attributes(info))
        for name, enabled in self._enabled.items():
            self._publish(self.topics.enabled_state(name), _on_off(enabled))
        for name, (status, message) in self._status.items():
            self._publish(self.topics.status_message(name), message)
            self._publish(self.topics.status(name), status)
        for name, on in self._anomaly.items():
            self._publish(self.topics.anomaly(name), _on_off(on))

    def _publish_discovery(self) -> None:
        if not self.cfg.discovery.enabled:
            return
        messages = discovery_messages(
            self.topics, list(self._streams.values()), self.cfg.discovery.prefix, model=self.model
        )
        current = [topic for topic, _ in messages]
        for topic in self._forget_old_discovery(current):
            self._publish(topic, b"")  # an empty retained config removes the entity
        for topic, payload in messages:
            self._publish(topic, json.dumps(payload))

    def _forget_old_discovery(self, current: list[str]) -> list[str]:
        """Config topics announced before but not now (a stream was removed or renamed)."""
        path = self.state_dir / DISCOVERY_FILE
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = []
        try:
            path.write_text(json.dumps(current), encoding="utf-8")
        except OSError as err:
            logger.debug("cannot remember discovery topics in %s: %s", path, err)
        return [t for t in old if isinstance(t, str) and t not in set(current)]

    # --- paho callbacks: tiny, never publish or wait -----------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            if reason.value == _UNSUPPORTED_PROTOCOL and self.protocol == "5" and self.cfg.protocol == "auto":
                self._commands.put(("fallback", client))
            else:
                logger.warning("MQTT broker refused the connection: %s", reason)
            self._wake.set()
            return
        logger.info("connected to MQTT broker %s:%d", self.cfg.host, self.cfg.effective_port)
        self._connected.set()
        self._warned_unreachable = False
        self._commands.put(("connected", client))
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._warned_unreachable:
            self._warned_unreachable = True
            logger.warning(
                "cannot reach MQTT broker %s:%d; retrying in the background (events wait in the outbox)",
                self.cfg.host,
                self.cfg.effective_port,
            )

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self._connected.is_set() and not self._stopping.is_set():
            logger.warning("disconnected from MQTT broker: %s; reconnecting", reason)
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acks.put(mid if not reason.is_failure else -mid)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload.decode("utf-8", "replace").strip()
        if msg.topic == f"{self.cfg.discovery.prefix}/status":
            if payload == "online":
                self._commands.put(("ha_online",))
        else:
            stream = self.topics.stream_of_enabled_set(msg.topic)
            if stream is not None and payload.upper() in ("ON", "OFF"):
                self._commands.put(("enabled", stream, payload.upper() == "ON"))
            else:
                logger.debug("ignored message on %s", msg.topic)
                return
        self._wake.set()

    # --- sender thread ----------------------------------------------------------------------

    def _run_sender(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._handle_commands()
                self._handle_acks()
                if self._connected.is_set():
                    self._send_outbox()
            except Exception:  # the sender must outlive one bad row or a transient error
                logger.exception("MQTT sender error; continuing")
                time.sleep(0.5)
        self._handle_acks()

    def _handle_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "connected" and cmd[1] is self._client:
                self._after_connect(cmd[1])
            elif cmd[0] == "fallback" and cmd[1] is self._client:
                self._fallback_to_311(cmd[1])
            elif cmd[0] == "ha_online":
                logger.info("Home Assistant came online: republishing discovery")
                with self._lock:
                    self._publish_discovery()
            elif cmd[0] == "enabled":
                _, stream, enabled = cmd
                logger.info("stream %s %s by MQTT command", stream, "enabled" if enabled else "disabled")
                if self.on_enabled is not None:
                    try:
                        self.on_enabled(stream, enabled)
                    except Exception:
                        logger.exception("on_enabled hook failed for stream %s", stream)
                self.set_enabled(stream, enabled)

    def _after_connect(self, client: mqtt.Client) -> None:
        subs = [(self.topics.enabled_set_filter, 1)]
        if self.cfg.discovery.enabled:
            subs.append((f"{self.cfg.discovery.prefix}/status", 1))
        client.subscribe(subs)
        with self._lock:
            self._publish_stream_topics()
            self._publish_discovery()
            self._publish(self.topics.available, "online")

    def _fallback_to_311(self, old: mqtt.Client) -> None:
        logger.warning("MQTT broker refuses MQTT 5; falling back to MQTT 3.1.1 (no message properties)")
        old.loop_stop()
        old.disconnect()
        self.protocol = "3.1.1"
        self._inflight.clear()
        self._last_sent = 0
        self._client = self._make_client()
        self._connect(self._client)

    def _handle_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            seq = self._inflight.pop(abs(mid), None)
            if seq is None or self.outbox is None:
                continue  # a state publish, or an event resent after the process restarted
            if mid < 0:
                self.rejected_events += 1
                logger.error("broker rejected event #%d (PUBACK failure); dropping it", seq)
            self.outbox.delete(seq)

    def _event_properties(self, seq: int) -> Properties | None:
        if self.protocol != "5":
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = EVENT_EXPIRY_S
        props.ContentType = "application/json"
        props.UserProperty = [("schema", EVENT_SCHEMA), ("seq", str(seq))]
        return props

    def _send_outbox(self) -> None:
        client = self._client
        if client is None or self.outbox is None:
            return
        room = self.cfg.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for row in self.outbox.pending(after_seq=self._last_sent, limit=room):
            info = client.publish(row.topic, row.payload, qos=1, retain=False, properties=self._event_properties(row.seq))
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                logger.debug("event #%d not handed to paho yet: %s", row.seq, mqtt.error_string(info.rc))
                return
            self._inflight[info.mid] = row.seq
            self._last_sent = row.seq
