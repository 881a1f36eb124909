"""The outbox delivery loop: durable events handed to paho in order, deleted on their PUBACK.

paho keeps unacknowledged QoS 1 messages in memory and resends them, in order, after a
reconnect; the SQLite outbox covers what memory cannot, a process restart. This class is the
bridge: rows go out in ``seq`` order with at most ``max_inflight`` unacknowledged, and a row
leaves the outbox only when the broker confirmed it. Only the sender thread calls it, except
``acked`` (paho's network thread), which just queues the message id and reason code.

A PUBACK with a failure reason code (MQTT 5: 0x80 and above) is not a delivery, and what
follows depends on whom the refusal is about:

- **every event** (``REFUSED_FOR_ALL``: 0x87 Not authorized from an ACL on the one events
  topic, 0x97 Quota exceeded, 0x89 Server busy, 0x8F/0x90 topic invalid, 0x91 packet id in
  use): the row stays, sending pauses with an exponential backoff (``retry_base_s`` doubling up
  to ``retry_cap_s``) and resumes at the refused row, so order is kept, and a node fault names
  the reason until the next acknowledged delivery. Waiting is right: an operator fixes the ACL
  or the quota refills, and nothing is lost meanwhile.
- **this one message** (``REFUSED_THIS_MESSAGE``: 0x95 Packet too large, 0x99 Payload format
  invalid): sending it again can never succeed and pausing for it would hold back every later
  alert, so the row moves at once to the outbox's ``dead_letter`` table (kept, counted as
  ``dead_letter`` in the stats), an error names the event, its topic and the reason, and the
  node fault ``dead_letter`` says so.
- **anything else** (0x80 Unspecified error, 0x83 Implementation specific error, codes this
  version does not know): it may be either, so it is treated as about every event, but a row
  refused ``DEAD_LETTER_AFTER`` times in a row becomes a dead letter: one poison event cannot
  throttle the rest for ever. (0x83 is what broker plugins that validate a message's content
  answer, which is why it is not simply "every event".)

Any accepted PUBACK resets the backoff. MQTT 3.1.1 has no such codes (README, MQTT contract).
"""

from __future__ import annotations

import json
import logging
import queue
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_asd.comms.outbox import FaultHandler, OpenEvent, Outbox

logger = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite3"
"""Under the state directory: events not yet acknowledged by the broker."""

EVENT_EXPIRY_S = 3600
"""MQTT 5 message expiry of an event: the broker drops an older one instead of delivering it late
(a consumer that was away that long still finds the retained anomaly state)."""

EVENT_SCHEMA = "1"
"""``schema`` user property of an event, for consumers that parse the payload."""

REFUSED_RETRY_BASE_S = 5.0
"""First wait before an event the broker refused is sent again; doubles on each refusal."""

REFUSED_RETRY_CAP_S = 300.0
"""Longest wait between two attempts at a refused event."""

OUTBOX_RETRY_S = 10.0
"""How often a failing outbox file (full disk, I/O error) is tried again."""

NOT_AUTHORIZED = 0x87
QUOTA_EXCEEDED = 0x97
FAILURE = 0x80  # MQTT 5 reason codes from here on are failures

REFUSED_FOR_ALL = frozenset({NOT_AUTHORIZED, QUOTA_EXCEEDED, 0x89, 0x8F, 0x90, 0x91})
"""Reason codes about every event (ACL, quota, busy, topic, session): pause all and retry."""

REFUSED_THIS_MESSAGE = frozenset({0x95, 0x99})
"""Reason codes about one message (Packet too large, Payload format invalid): a dead letter at once."""

DEAD_LETTER_AFTER = 5
"""Refusals in a row of one event, with any other code, after which it becomes a dead letter."""


def event_properties(seq: int, protocol: str) -> Properties | None:
    """MQTT 5 properties of an event (expiry, content type, schema, ``seq`` for de-duplication)."""
    if protocol != "5":
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = EVENT_EXPIRY_S
    props.ContentType = "application/json"
    props.UserProperty = [("schema", EVENT_SCHEMA), ("seq", str(seq))]
    return props


def refusal_message(code: int, reason: str, topic: str) -> str:
    """The node fault for a refused event: the broker's reason and what to check."""
    if code == NOT_AUTHORIZED:
        hint = f"check the broker ACL for {topic}"
    elif code == QUOTA_EXCEEDED:
        hint = "the broker's quota for this client is exhausted; events are kept and retried"
    else:
        hint = f"reason code 0x{code:02x}; events are kept and retried"
    return f"broker refused event delivery: {reason or 'unspecified error'} ({hint})"


class EventDelivery:
    """Owns the outbox while the communicator runs, and the in-flight map of its rows."""

    def __init__(
        self,
        max_inflight: int,
        on_fault: FaultHandler | None = None,
        on_dead_letter: FaultHandler | None = None,
    ) -> None:
        self.max_inflight = int(max_inflight)
        self.on_fault = on_fault
        """``on_fault(message | None)``: the broker refuses events (or accepts them again)."""
        self.on_dead_letter = on_dead_letter
        """``on_dead_letter(message)``: an event the broker will never take was set aside."""
        self.outbox: Outbox | None = None
        self.refused = 0
        """PUBACKs with a failure reason code, this process (kept and retried, or dead letters)."""
        self.dead_lettered = 0
        """Events moved to the dead-letter table, this process."""
        self.retry_base_s = REFUSED_RETRY_BASE_S
        self.retry_cap_s = REFUSED_RETRY_CAP_S
        self.outbox_retry_s = OUTBOX_RETRY_S
        self._acks: queue.SimpleQueue[tuple[int, int, str]] = queue.SimpleQueue()
        self._inflight: dict[int, tuple[int, int, str]] = {}  # mid -> (outbox seq, refusal generation, topic)
        self._last_sent = 0
        self._generation = 0  # bumped by each refusal that starts a backoff
        self._refusals_in_a_row = 0
        self._refusals_of: dict[int, int] = {}  # seq -> refusals in a row (codes not in either set)
        self._paused_until = 0.0
        self._fault: str | None = None
        self._next_outbox_retry = 0.0
        self._renumbered = 0  # the outbox's count when the in-flight map was last valid

    def open(self, path: Path, max_rows: int, on_fault: FaultHandler | None = None) -> None:
        self.outbox = Outbox(path, max_rows, on_fault=on_fault)

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
        """Events not yet acknowledged by the broker (in the outbox, file and memory)."""
        return len(self.outbox) if self.outbox is not None else 0

    @property
    def dropped_updates(self) -> int:
        return self.outbox.dropped_updates if self.outbox is not None else 0

    def stats(self) -> dict[str, Any]:
        """``Communicator.delivery_stats()``: depth, age of the oldest, memory queue, refusals."""
        box = self.outbox
        return {
            "outbox_depth": len(box) if box is not None else 0,
            "oldest_undelivered_s": box.oldest_age_s() if box is not None else None,
            "memory_queue": box.memory_rows if box is not None else 0,
            "refused": self.refused,
            "dead_letter": box.dead_letters if box is not None else 0,
        }

    def append(self, kind: str, topic: str, payload: bytes, event: dict[str, Any] | None = None) -> None:
        if self.outbox is None:
            raise RuntimeError("MqttCommunicator is not running: publish_event before start() or after stop()")
        self.outbox.append(kind, topic, payload, event)

    def acked(self, mid: int, code: int = 0, reason: str = "") -> None:
        """paho's network thread: a PUBACK for message ``mid`` with its reason code."""
        self._acks.put((mid, int(code), reason))

    def reset(self) -> None:
        """A new paho client: its predecessor's in-flight messages will never be acknowledged."""
        self._inflight.clear()
        self._last_sent = 0

    def maintain(self) -> None:
        """Retry a failing outbox file every ``outbox_retry_s`` (sender thread)."""
        box = self.outbox
        if box is None or not box.degraded or time.monotonic() < self._next_outbox_retry:
            return
        self._next_outbox_retry = time.monotonic() + self.outbox_retry_s
        if box.retry():
            self._last_sent = 0  # rows unreadable while failing go out now (in-flight ones are skipped)
        if box.renumbered != self._renumbered:
            # Memory rows got new numbers: acks for the old ones must not delete the rows that
            # now carry them. Forget what is in flight; those events go out again (at least once).
            self._renumbered = box.renumbered
            self._inflight.clear()
            self._last_sent = 0

    def take_stale(self) -> list[OpenEvent]:
        """Events a previous run left open, not yet handed to anyone (``Outbox.take_stale``)."""
        return self.outbox.take_stale() if self.outbox is not None else []

    def handle_acks(self) -> None:
        """Delete acknowledged rows; keep refused ones and back off (see the module docstring)."""
        while True:
            try:
                mid, code, reason = self._acks.get_nowait()
            except queue.Empty:
                return
            sent = self._inflight.pop(mid, None)
            if sent is None or self.outbox is None:
                continue  # a state publish, or an event resent after the process restarted
            seq, generation, topic = sent
            if code >= FAILURE:
                self._refused(seq, generation, topic, code, reason)
                continue
            self.outbox.delete(seq)
            self._refusals_of.pop(seq, None)
            self._refusals_in_a_row = 0  # any accepted event resets the backoff
            if self._fault is not None and generation == self._generation:
                logger.warning("the broker accepts events again (event #%d delivered)", seq)
                self._fault = None
                self._report(None)

    def _refused(self, seq: int, generation: int, topic: str, code: int, reason: str) -> None:
        self.refused += 1
        if code in REFUSED_THIS_MESSAGE:
            self._dead_letter(seq, topic, code, reason, "the broker refuses this message itself")
            return
        if code not in REFUSED_FOR_ALL:
            tries = self._refusals_of[seq] = self._refusals_of.get(seq, 0) + 1
            if tries >= DEAD_LETTER_AFTER:
                self._dead_letter(seq, topic, code, reason, f"refused {tries} times in a row")
                self._paused_until = 0.0  # the rows behind it go out now
                return
        self._last_sent = min(self._last_sent, seq - 1)  # resume at the refused row, in order
        if generation != self._generation:
            return  # sent before the current backoff began: the same refusal, already handled
        self._generation += 1
        self._refusals_in_a_row += 1
        delay = min(self.retry_cap_s, self.retry_base_s * 2 ** (self._refusals_in_a_row - 1))
        self._paused_until = time.monotonic() + delay
        message = refusal_message(code, reason, topic)
        logger.error("%s: event #%d kept in the outbox, next attempt in %.1f s", message, seq, delay)
        if message != self._fault:
            self._fault = message
            self._report(message)

    def _dead_letter(self, seq: int, topic: str, code: int, reason: str, why: str) -> None:
        """Set an event the broker will never take aside, keep it, and say so loudly."""
        self._refusals_of.pop(seq, None)
        box = self.outbox
        if box is None:
            return
        said = reason or "unspecified error"
        row = box.dead_letter(seq, code, f"{said} (0x{code:02x})")
        if row is None:
            return  # gone already (a late ack for a row set aside before)
        self.dead_lettered += 1
        eid = event_id(row.payload)
        logger.error(
            "broker refused event %s (%s, #%d) on %s for good: %s (0x%02x, %s); kept in %s, table dead_letter, "
            "not sent again", eid, row.kind, seq, topic, said, code, why, box.path,
        )  # fmt: skip
        message = (
            f"broker refused event {eid} on {topic} for good: {said} (0x{code:02x}); "
            f"{box.dead_letters} event(s) kept in {box.path} table dead_letter, not sent again"
        )
        if self.on_dead_letter is not None:
            try:
                self.on_dead_letter(message)
            except Exception:
                logger.exception("dead-letter fault handler failed")

    def _report(self, message: str | None) -> None:
        if self.on_fault is None:
            return
        try:
            self.on_fault(message)
        except Exception:
            logger.exception("delivery fault handler failed")

    def send(self, client: mqtt.Client, protocol: str) -> None:
        """Hand the next rows to paho, up to the in-flight limit (none while backing off)."""
        if self.outbox is None or time.monotonic() < self._paused_until:
            return
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        flying = {seq for seq, _, _ in self._inflight.values()}
        for row in self.outbox.pending(after_seq=self._last_sent, limit=room + len(flying)):
            if row.seq in flying:
                self._last_sent = max(self._last_sent, row.seq)
                continue
            if room <= 0:
                return
            props = event_properties(row.seq, protocol)
            info = client.publish(row.topic, row.payload, qos=1, retain=False, properties=props)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                logger.debug("event #%d not handed to paho yet: %s", row.seq, mqtt.error_string(info.rc))
                return
            self._inflight[info.mid] = (row.seq, self._generation, row.topic)
            self._last_sent = row.seq
            room -= 1


def event_id(payload: bytes) -> str:
    """The ``after.id`` of an event message, for a log line (``?`` when it has none)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return "?"
    after = body.get("after") if isinstance(body, dict) else None
    if isinstance(after, dict) and after.get("id") is not None:
        return str(after["id"])
    return "?"
