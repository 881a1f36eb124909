"""``MqttCommunicator``: the ``Communicator`` the daemon uses when ``mqtt:`` is configured.

It wires the parts of this package together and owns the sender thread:

- the pipeline thread calls ``publish_*``: state publishes go straight to paho (thread-safe,
  non-blocking) through ``RetainedState``; events are committed to the SQLite outbox and the
  sender is woken;
- paho's network thread runs ``MqttSession``'s callbacks, which only queue ``Command``s and
  message ids;
- the sender thread does everything else: the work after each (re)connect (subscribe,
  retained states, discovery, ``online``), the outbox (``EventDelivery``), the v5 -> 3.1.1
  fallback and the ``enabled/set`` hook.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_asd.comms.base import Communicator, EnabledHandler, StreamInfo, as_stream_info
from edge_asd.comms.mqtt.commands import (
    CONNECTED,
    ENABLED,
    FALLBACK,
    HA_ONLINE,
    STREAM_COMMAND,
    Command,
    parse_message,
    subscriptions,
)
from edge_asd.comms.mqtt.delivery import OUTBOX_FILE, EventDelivery
from edge_asd.comms.mqtt.session import MqttSession
from edge_asd.comms.mqtt.state import RetainedState
from edge_asd.comms.outbox import Outbox
from edge_asd.comms.topics import EVENT_KINDS, STATUSES, Topics
from edge_asd.config import MqttConfig
from edge_asd.core import jsonsafe
from edge_asd.core.constants import ONLINE

logger = logging.getLogger(__name__)

OUTBOX_FAULT = "outbox"
"""``publish_node_fault`` key: the outbox file cannot be written (events held in memory)."""

DELIVERY_FAULT = "delivery"
"""``publish_node_fault`` key: the broker refuses events (PUBACK with a failure reason code)."""

DEAD_LETTER_FAULT = "dead_letter"
"""``publish_node_fault`` key: an event the broker will never take was set aside (for this run)."""

STALE_END_REASON = "daemon restarted (the previous run stopped during the event)"
"""``end_reason`` of the ``end`` a start publishes for an event its previous run left open."""


def stale_end(last: dict[str, Any], last_written: float | None = None) -> dict[str, Any]:
    """The ``after`` of an ``end`` for an event a previous run left open: its last known state,
    ended at the last window that run reported (``start + (windows - 1) * hop``; for the wall
    clock without a ``start_wall``, when the outbox last wrote about it)."""
    after = dict(last)
    hop = _number(after.get("hop_s"))
    span = max(0.0, (_number(after.get("windows")) - 1) * hop)
    after["active"] = False
    if after.get("end_time") is None:
        after["end_time"] = _number(after.get("start_time")) + span
    if after.get("end_wall") is None:
        start_wall = after.get("start_wall")
        after["end_wall"] = _number(start_wall) + span if start_wall is not None else last_written
    after["end_reason"] = STALE_END_REASON
    return after


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


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
        self._wake = threading.Event()
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.delivery = EventDelivery(
            cfg.max_inflight,
            on_fault=lambda msg: self.publish_node_fault(DELIVERY_FAULT, msg),
            on_dead_letter=lambda msg: self.publish_node_fault(DEAD_LETTER_FAULT, msg),
        )
        self.session = MqttSession(
            cfg, self.topics, self.client_id, commands=self._commands, wake=self._wake,
            on_ack=self.delivery.acked, on_message=lambda msg: parse_message(cfg, self.topics, msg),
        )
        self.state = RetainedState(cfg, self.topics, self.state_dir, model, self.session.publish)
        self._sender: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Validate TLS/credentials (errors are fatal), open the outbox, end the events the
        previous run left open, connect in the background."""
        self.session.check_credentials()
        self.delivery.open(
            self.state_dir / OUTBOX_FILE, self.cfg.outbox_max_rows,
            on_fault=lambda msg: self.publish_node_fault(OUTBOX_FAULT, msg),
        )  # fmt: skip
        self._close_stale_events()
        self.session.connect()
        self._sender = threading.Thread(target=self._run_sender, name="mqtt-sender", daemon=True)
        self._sender.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Flush the outbox (while connected, up to ``timeout_s``), publish ``offline``, disconnect.

        Undelivered events stay in the outbox and go out at the next start.
        """
        if self.session.client is None:
            return
        deadline = time.monotonic() + max(0.0, timeout_s)
        while self.connected and self.pending_events and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        self.session.stopping.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout=5)
        self.session.close(deadline)
        self.delivery.close()

    # --- state ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.session.connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.session.connected.wait(timeout_s)

    @property
    def protocol(self) -> str:
        """``"5"``, or ``"3.1.1"`` when configured so or after the broker refused MQTT 5."""
        return self.session.protocol

    @property
    def outbox(self) -> Outbox | None:
        """The SQLite outbox while running (None before ``start`` and after ``stop``)."""
        return self.delivery.outbox

    @property
    def pending_events(self) -> int:
        """Events not yet acknowledged by the broker (in the outbox)."""
        return self.delivery.pending

    @property
    def rejected_events(self) -> int:
        """PUBACKs with a failure reason code (the events are kept and retried)."""
        return self.delivery.refused

    def delivery_stats(self) -> dict[str, Any]:
        return self.delivery.stats()

    def publish_node_fault(self, key: str, message: str | None) -> None:
        """Logged (base class) and published retained: ``<prefix>/<node>/status`` online | fault
        and ``.../status/message`` with every current fault, republished on each connect."""
        super().publish_node_fault(key, message)
        self.state.set_node_fault(key, message)

    def _close_stale_events(self) -> None:
        """End each event the previous run left open (it died during the event) and set its
        stream's retained ``anomaly`` back to ``OFF``: subscribers must not hold a ``new``
        without an ``end``, nor an ``ON`` nobody will ever clear.

        At start, and again from the sender when an outbox that could not be read at start
        becomes readable (its stale events only show up then)."""
        stale = self.delivery.take_stale()
        for ev in stale:
            before = dict(ev.event)
            self.publish_event("end", before, stale_end(before, ev.updated))
            if ev.stream:
                self.state.correct_anomaly(ev.stream)
        if stale:
            logger.warning(
                "ended %d event(s) left open by the previous run (it stopped during them): %s",
                len(stale), ", ".join(f"{e.id} on {e.stream or '?'}" for e in stale),
            )  # fmt: skip

    def announce(self, streams: Sequence[StreamInfo | Any]) -> None:
        self.state.announce([as_stream_info(s) for s in streams], connected=self.connected)

    def publish_status(self, stream: str, status: str, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        self.state.set_status(stream, status, message)

    def publish_anomaly(self, stream: str, on: bool) -> None:
        self.state.set_anomaly(stream, on)

    def publish_score(self, stream: str, score: float, threshold: float | None) -> None:
        self.state.set_threshold(stream, threshold)
        self.session.publish(self.topics.score(stream), f"{float(score):.6g}", qos=0, retain=False)

    def publish_event(self, kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r} is not one of {EVENT_KINDS}")
        payload = jsonsafe.dumps({"type": kind, "before": before, "after": after}).encode()
        self.delivery.append(kind, self.topics.events, payload, after)  # committed when this returns
        self._wake.set()

    def publish_stats(self, stats: dict[str, Any]) -> None:
        body = dict(stats)
        body["mqtt"] = {
            "connected": self.connected,
            "protocol": self.protocol,
            "outbox_pending": self.pending_events,
            "outbox_dropped_updates": self.delivery.dropped_updates,
            "rejected_events": self.rejected_events,
            "memory_dropped": self.outbox.memory_dropped if self.outbox is not None else 0,
        }
        body.setdefault("delivery", self.delivery_stats())
        self.session.publish(self.topics.stats, jsonsafe.dumps(body), qos=0, retain=False)

    def set_enabled(self, stream: str, enabled: bool) -> None:
        self.state.set_enabled(stream, enabled)

    # --- sender thread ----------------------------------------------------------------------

    def _run_sender(self) -> None:
        while not self.session.stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._handle_commands()
                self.delivery.maintain()
                self._close_stale_events()
                self.delivery.handle_acks()
                client = self.session.client
                if self.connected and client is not None:
                    self.delivery.send(client, self.protocol)
            except Exception:  # the sender must outlive one bad row or a transient error
                logger.exception("MQTT sender error; continuing")
                time.sleep(0.5)
        self.delivery.handle_acks()

    def _handle_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd.kind == CONNECTED and cmd.client is self.session.client:
                self._after_connect(cmd.client)
            elif cmd.kind == FALLBACK and cmd.client is self.session.client:
                self.delivery.reset()
                self.session.fallback_to_311(cmd.client)
            elif cmd.kind == HA_ONLINE:
                logger.info("Home Assistant came online: republishing discovery")
                self.state.publish_discovery()
            elif cmd.kind == ENABLED:
                self._apply_enabled(cmd.stream, cmd.enabled)
            elif cmd.kind == STREAM_COMMAND:
                self._apply_stream_command(cmd.stream, cmd.name, cmd.payload or {})

    def _after_connect(self, client: mqtt.Client) -> None:
        client.subscribe(subscriptions(self.cfg, self.topics))
        with self.state.lock:
            self.state.republish_streams()
            self.state.publish_discovery()
            self.session.publish(self.topics.available, ONLINE)

    def _apply_stream_command(self, stream: str, name: str, payload: dict) -> None:
        """An operator's ``feedback``/``enrol`` command for a known stream goes to the pipeline."""
        if stream not in self.state.streams:
            logger.warning("ignored %s command for unknown stream %r (this node has %s)",
                           name, stream, ", ".join(sorted(self.state.streams)) or "no streams")  # fmt: skip
            return
        if self.on_stream_command is None:
            logger.warning("ignored %s command for %s: nothing on this node handles it", name, stream)
            return
        try:
            self.on_stream_command(stream, name, payload)
        except Exception:
            logger.exception("%s command for stream %s failed", name, stream)

    def publish_attributes(self, stream: str, threshold: float | None, extra: dict[str, Any]) -> None:
        self.state.set_attributes(stream, threshold, extra)

    def publish_feedback_result(self, stream: str, result: dict[str, Any]) -> None:
        self.session.publish(self.topics.feedback_result(stream), jsonsafe.dumps(result), qos=1, retain=False)

    def publish_enrolment(self, stream: str, state: dict[str, Any]) -> None:
        self.session.publish(self.topics.enrol_state(stream), jsonsafe.dumps(state), qos=1, retain=True)

    def _apply_enabled(self, stream: str, enabled: bool) -> None:
        """An operator's switch: the pipeline's hook first, then the retained state confirms it.

        A command for a stream this node does not have is ignored: echoing it back would
        retain a state for a stream that does not exist, forever."""
        if stream not in self.state.streams:
            logger.warning("ignored enabled/set for unknown stream %r (this node has %s)",
                           stream, ", ".join(sorted(self.state.streams)) or "no streams")  # fmt: skip
            return
        logger.info("stream %s %s by MQTT command", stream, "enabled" if enabled else "disabled")
        if self.on_enabled is not None:
            try:
                self.on_enabled(stream, enabled)
            except Exception:
                logger.exception("on_enabled hook failed for stream %s", stream)
        self.set_enabled(stream, enabled)
