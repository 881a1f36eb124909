"""What a plant throws at event delivery, against a real mosquitto (issue 11, items 2-4 and 12):
a daemon killed during an event, a full disk under the outbox, a corrupt outbox file, a
broker whose ACL refuses the events topic, and the node faults and delivery figures that
tell an operator about each.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTErrorCode

from edge_asd.comms.base import StreamInfo
from edge_asd.comms.mqtt import OUTBOX_FILE, MqttCommunicator
from edge_asd.comms.mqtt import delivery as delivery_mod
from edge_asd.comms.mqtt.communicator import STALE_END_REASON
from edge_asd.comms.mqtt.delivery import DEAD_LETTER_AFTER, EventDelivery
from edge_asd.comms.outbox import Outbox
from edge_asd.config import MqttConfig
from tests.fixtures.mosquitto import Broker, Recorder, retained_snapshot

pytestmark = pytest.mark.device

NODE = "node1"
BASE = f"edge-asd/{NODE}"
EVENTS = f"{BASE}/events"

DENY_EVENTS = "topic readwrite #\ntopic deny edge-asd/+/events\n"  # deny wins whatever the order
ALLOW_ALL = "topic readwrite #\n"


def wait_until(predicate, timeout_s: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def retained(port: int, topic: str) -> str | None:
    return retained_snapshot(port, topic).get(topic)


@pytest.fixture
def comm_factory(tmp_path: Path):
    made: list[MqttCommunicator] = []

    def make(url: str, state_dir: Path | None = None, **kw: object) -> MqttCommunicator:
        cfg = MqttConfig.model_validate({"url": url, **kw})
        comm = MqttCommunicator(cfg, NODE, state_dir or tmp_path / "state")
        made.append(comm)
        return comm

    yield make
    for comm in made:
        comm.stop(timeout_s=0.5)


def event(eid: str, stream: str = "fan1", **kw: object) -> dict:
    return {"id": eid, "stream": stream, "start_time": 31.0, "end_time": None, "start_wall": 1000.0,
            "end_wall": None, "peak_score": 19.0, "windows": 3, "hop_s": 1.0, "active": True, **kw}  # fmt: skip


# A daemon in a child process: opens an event, says ON, and is SIGKILLed during it.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edge_asd.comms.base import StreamInfo
    from edge_asd.comms.mqtt import MqttCommunicator
    from edge_asd.config import MqttConfig
    url, state = sys.argv[1], Path(sys.argv[2])
    comm = MqttCommunicator(MqttConfig(url=url), "node1", state)
    comm.announce([StreamInfo("fan1"), StreamInfo("fan2")])
    comm.start()
    assert comm.wait_connected(10)
    for eid, stream in (("ev-open", "fan1"), ("ev-gone", "fan2")):
        comm.publish_event("new", None, {"id": eid, "stream": stream, "start_time": 31.0, "end_time": None,
                                         "start_wall": 1000.0, "end_wall": None, "windows": 3, "hop_s": 1.0,
                                         "active": True})
        comm.publish_anomaly(stream, True)
    comm.publish_event("update", None, {"id": "ev-open", "stream": "fan1", "start_time": 31.0, "end_time": None,
                                        "start_wall": 1000.0, "end_wall": None, "windows": 5, "hop_s": 1.0,
                                        "peak_score": 25.0, "active": True})
    deadline = time.monotonic() + 10
    while comm.pending_events and time.monotonic() < deadline:
        time.sleep(0.05)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_events_left_open_by_a_killed_daemon_are_ended_at_the_next_start(broker: Broker, tmp_path: Path,
                                                                         comm_factory) -> None:  # fmt: skip
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, broker.url, str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        assert wait_until(lambda: retained(broker.port, f"{BASE}/fan1/anomaly") == "ON")
        proc.send_signal(signal.SIGKILL)  # during both events
        proc.wait(5)
    finally:
        proc.kill()
    assert retained(broker.port, f"{BASE}/fan1/anomaly") == "ON"  # what the crash left behind

    rec = Recorder(broker.port, [EVENTS])
    comm = comm_factory(broker.url, state_dir=state)
    comm.announce([StreamInfo("fan1")])  # fan2 was removed from the config meanwhile
    comm.start()
    assert rec.wait_for(lambda m: len(m) >= 2, 15)
    ends = {e["after"]["id"]: e for e in rec.events(EVENTS)}
    assert set(ends) == {"ev-open", "ev-gone"} and all(e["type"] == "end" for e in ends.values())
    end = ends["ev-open"]["after"]
    assert end["end_reason"] == STALE_END_REASON and end["active"] is False
    assert end["peak_score"] == 25.0  # the last update the dead run wrote
    assert (end["end_time"], end["end_wall"]) == (35.0, 1004.0)  # its last window: start + 4 hops
    assert ends["ev-open"]["before"]["active"] is True
    assert wait_until(lambda: retained(broker.port, f"{BASE}/fan1/anomaly") == "OFF")
    assert wait_until(lambda: retained(broker.port, f"{BASE}/fan2/anomaly") == "OFF")
    assert comm.outbox is not None and comm.outbox.open_events() == []
    assert wait_until(lambda: comm.pending_events == 0)
    rec.close()
    comm.stop(timeout_s=1)
    # nothing is left open for the start after that
    assert Outbox(state / OUTBOX_FILE).open_events() == []


def test_a_full_outbox_keeps_alerting_from_memory_and_raises_a_node_fault(broker: Broker, comm_factory) -> None:
    rec = Recorder(broker.port, [EVENTS])
    comm = comm_factory(broker.url)
    comm.start()
    comm.announce([StreamInfo("fan1")])
    assert comm.wait_connected(10)
    comm.delivery.outbox_retry_s = 0.2
    db = comm.outbox._db  # the real SQLite error: no page may be added to the file
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    big = "x" * 5000
    sent = ["ev-1", "ev-2", "ev-3"]
    for eid in sent:
        comm.publish_event("new", None, event(eid, note=big))  # never raises
        comm.publish_anomaly("fan1", True)
    assert comm.outbox.degraded
    assert rec.wait_for(lambda m: len(m) >= 3, 15)  # delivered from memory
    assert [e["after"]["id"] for e in rec.events(EVENTS)] == sent
    assert wait_until(lambda: retained(broker.port, f"{BASE}/status") == "fault")
    message = retained(broker.port, f"{BASE}/status/message") or ""
    assert "database or disk is full" in message and "free space under" in message
    assert wait_until(lambda: comm.pending_events == 0)
    stats = comm.delivery_stats()
    assert stats == {"outbox_depth": 0, "oldest_undelivered_s": None, "memory_queue": 0, "refused": 0, "dead_letter": 0}

    db.execute("PRAGMA max_page_count = 1000000")  # space again
    assert wait_until(lambda: retained(broker.port, f"{BASE}/status") == "online")
    assert retained(broker.port, f"{BASE}/status/message") is None  # an empty retained message clears it
    comm.publish_event("end", None, event("ev-3", active=False, end_time=40.0))
    assert rec.wait_for(lambda m: len(m) >= 4, 10)
    assert [e.id for e in comm.outbox.open_events()] == ["ev-1", "ev-2"]
    with sqlite3.connect(comm.state_dir / OUTBOX_FILE) as check:  # what a crash now would leave
        assert sorted(r[0] for r in check.execute("SELECT id FROM open_events")) == ["ev-1", "ev-2"]
    rec.close()


def test_a_corrupt_outbox_file_is_moved_aside_at_start(tmp_path: Path, caplog) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / OUTBOX_FILE).write_bytes(b"\x00garbage" * 500)
    comm = MqttCommunicator(MqttConfig(url="mqtt://127.0.0.1:1"), NODE, state)  # no broker needed
    comm.start()
    try:
        comm.publish_event("new", None, event("ev-1"))
        assert comm.pending_events == 1
        aside = list(state.glob(f"{OUTBOX_FILE}.corrupt-*"))
        assert len(aside) == 1 and str(aside[0]) in caplog.text
    finally:
        comm.stop(timeout_s=0.1)


def _break_table(db_file: Path, table: str) -> None:
    """Overwrite ``table``'s root page with junk: the integrity check fails, other tables still read."""
    with contextlib.closing(sqlite3.connect(db_file)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        root = int(db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0])
    with open(db_file, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)


def test_events_open_in_a_corrupt_outbox_are_ended_not_lost(broker: Broker, tmp_path: Path, comm_factory,
                                                            caplog) -> None:  # fmt: skip
    """The outbox is moved aside, and what its ``open_events`` table still shows is ended at the
    next start like a crashed run's events: an ``end`` each and the retained ``anomaly`` OFF."""
    state = tmp_path / "state"
    comm = comm_factory(broker.url, state_dir=state)
    comm.announce([StreamInfo("fan1")])
    comm.start()
    assert comm.wait_connected(10)
    comm.publish_event("new", None, event("ev-open"))
    comm.publish_anomaly("fan1", True)
    assert wait_until(lambda: comm.pending_events == 0)
    assert wait_until(lambda: retained(broker.port, f"{BASE}/fan1/anomaly") == "ON")
    comm.stop(timeout_s=1)  # as if killed: the event stays open in the outbox
    _break_table(state / OUTBOX_FILE, "outbox")

    rec = Recorder(broker.port, [EVENTS])
    comm = comm_factory(broker.url, state_dir=state)
    comm.announce([StreamInfo("fan1")])
    comm.start()
    assert comm.outbox is not None and comm.outbox.moved_aside is not None
    assert "open in the corrupt outbox are to be ended now: ev-open on fan1" in caplog.text
    assert rec.wait_for(lambda m: len(m) >= 1, 15)
    (end,) = rec.events(EVENTS)
    assert end["type"] == "end" and end["after"]["id"] == "ev-open"
    assert end["after"]["end_reason"] == STALE_END_REASON
    assert wait_until(lambda: retained(broker.port, f"{BASE}/fan1/anomaly") == "OFF")
    assert wait_until(lambda: comm.pending_events == 0)
    assert comm.outbox.open_events() == []
    with contextlib.closing(sqlite3.connect(state / OUTBOX_FILE)) as check:  # the fresh file: nothing left open
        assert check.execute("SELECT COUNT(*) FROM open_events").fetchone()[0] == 0
    rec.close()


def test_salvaged_open_events_are_kept_in_the_fresh_outbox_until_ended(tmp_path: Path) -> None:
    """Between the salvage and the ``end``, a crash must not lose them a second time."""
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    box.append("new", EVENTS, b"{}", event=event("ev-1"))
    box.close()
    _break_table(path, "outbox")
    box = Outbox(path)
    try:
        assert box.moved_aside is not None
        with contextlib.closing(sqlite3.connect(path)) as check:
            assert [r[0] for r in check.execute("SELECT id FROM open_events")] == ["ev-1"]
        assert [e.id for e in box.take_stale()] == ["ev-1"]
    finally:
        box.close()
    box = Outbox(path)  # a crash before the end: the next start hands it out again, once
    try:
        assert box.moved_aside is None and [e.id for e in box.take_stale()] == ["ev-1"]
        box.append("end", EVENTS, b"{}", event=event("ev-1", active=False))
        assert box.open_events() == [] and box.take_stale() == []
    finally:
        box.close()


def test_only_sound_rows_are_salvaged_from_a_corrupt_outbox(tmp_path: Path, caplog) -> None:
    """Damaged rows must not become events nobody can end (an ``end`` closes the id it names)
    or a stream name that is no topic level; a row whose event is unreadable is still ended by id."""
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    box.append("new", EVENTS, b"{}", event=event("ev-good"))
    box.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executemany(
            "INSERT INTO open_events (id, stream, topic, event, updated) VALUES (?, ?, ?, ?, ?)",
            [("ev-wild", "fan+#", EVENTS, json.dumps(event("ev-wild")).encode(), 1.0),
             ("ev-other", "fan1", EVENTS, json.dumps(event("ev-else")).encode(), 1.0),
             (None, "fan1", EVENTS, json.dumps(event("ev-none")).encode(), 1.0),
             ("ev-blob", "fan2", EVENTS, b"\x00\xff", 1.0)],  # its details lost, its id still ends it
        )  # fmt: skip
        db.commit()
    _break_table(path, "outbox")
    box = Outbox(path)
    try:
        stale = {e.id: e for e in box.take_stale()}
        assert set(stale) == {"ev-good", "ev-blob"} and stale["ev-blob"].event == {"id": "ev-blob"}
        assert "skipped 3 unreadable open event(s)" in caplog.text
    finally:
        box.close()


def test_salvaged_open_events_survive_a_fresh_outbox_that_cannot_be_made(tmp_path: Path, monkeypatch) -> None:
    """The corrupt file is moved aside but the disk refuses a fresh one: the salvaged events are
    ended from memory and reach the fresh file when it can be made."""
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    box.append("new", EVENTS, b"{}", event=event("ev-1"))
    box.close()
    _break_table(path, "outbox")
    connect = Outbox._connect
    calls = {"n": 0}

    def failing_once(self: Outbox, seq_floor: int = 0) -> sqlite3.Connection:
        calls["n"] += 1
        if calls["n"] == 2:  # the first fails on the corrupt file, the second is the fresh one
            raise sqlite3.OperationalError("database or disk is full")
        return connect(self, seq_floor)

    monkeypatch.setattr(Outbox, "_connect", failing_once)
    box = Outbox(path)
    try:
        assert box.moved_aside is not None and box.degraded
        assert [e.id for e in box.open_events()] == ["ev-1"]
        assert [e.id for e in box.take_stale()] == ["ev-1"]
        assert box.retry()
        with contextlib.closing(sqlite3.connect(path)) as check:
            assert [r[0] for r in check.execute("SELECT id FROM open_events")] == ["ev-1"]
    finally:
        box.close()


def test_refused_events_are_kept_retried_and_raise_a_node_fault(tmp_path: Path, comm_factory) -> None:
    """MQTT 5: mosquitto answers a publish its ACL denies with PUBACK 0x87 Not authorized."""
    b = Broker(tmp_path / "broker", acl=DENY_EVENTS).start()
    try:
        comm = comm_factory(b.url)
        comm.delivery.retry_base_s, comm.delivery.retry_cap_s = 0.2, 0.4
        comm.start()
        comm.announce([StreamInfo("fan1")])
        assert comm.wait_connected(10)
        comm.publish_event("new", None, event("ev-1"))
        comm.publish_event("update", None, event("ev-1", windows=4))
        assert wait_until(lambda: comm.rejected_events >= 4, 15)  # refused, retried, refused again
        assert comm.pending_events == 2  # nothing deleted
        assert comm.delivery_stats()["refused"] == comm.rejected_events
        assert comm.delivery_stats()["outbox_depth"] == 2
        assert wait_until(lambda: retained(b.port, f"{BASE}/status") == "fault")
        message = retained(b.port, f"{BASE}/status/message")
        assert message == f"broker refused event delivery: Not authorized (check the broker ACL for {EVENTS})"

        rec = Recorder(b.port, [EVENTS])
        b.set_acl(ALLOW_ALL)  # the operator fixes the ACL
        assert rec.wait_for(lambda m: len(m) >= 2, 15)
        assert [e["type"] for e in rec.events(EVENTS)][:2] == ["new", "update"]  # order kept
        assert wait_until(lambda: comm.pending_events == 0)
        assert wait_until(lambda: retained(b.port, f"{BASE}/status") == "online")
        assert retained(b.port, f"{BASE}/status/message") is None  # cleared
        rec.close()
    finally:
        b.stop()


def test_mqtt311_cannot_refuse_mosquitto_acks_and_drops_silently(tmp_path: Path, comm_factory) -> None:
    """Why the README warns: under 3.1.1 a denied publish is acknowledged like any other."""
    b = Broker(tmp_path / "broker", acl=DENY_EVENTS).start()
    try:
        comm = comm_factory(b.url, protocol="v311")
        comm.start()
        assert comm.wait_connected(10)
        comm.publish_event("new", None, event("ev-1"))
        assert wait_until(lambda: comm.pending_events == 0)  # "delivered"
        assert comm.rejected_events == 0 and retained(b.port, f"{BASE}/status") == "online"
    finally:
        b.stop()


def test_stats_topic_carries_the_delivery_figures(broker: Broker, comm_factory) -> None:
    comm = comm_factory("mqtt://127.0.0.1:1")  # unreachable: the events wait
    comm.start()
    comm.publish_event("new", None, event("ev-1"))
    time.sleep(0.05)
    stats = comm.delivery_stats()
    assert stats["outbox_depth"] == 1 and stats["memory_queue"] == 0 and stats["refused"] == 0 == stats["dead_letter"]
    assert stats["oldest_undelivered_s"] is not None and 0.0 < stats["oldest_undelivered_s"] < 10.0
    comm.stop(timeout_s=0.1)

    live = comm_factory(broker.url, state_dir=comm.state_dir)
    rec = Recorder(broker.port, [f"{BASE}/stats"])
    live.start()
    assert live.wait_connected(10)
    live.publish_stats({"streams": {}})
    assert rec.wait_for(lambda m: len(m) >= 1)
    body = json.loads(rec.messages[-1]["payload"])
    assert set(body["delivery"]) == {"outbox_depth", "oldest_undelivered_s", "memory_queue", "refused", "dead_letter"}
    assert body["mqtt"]["outbox_pending"] == body["delivery"]["outbox_depth"]
    rec.close()


# --- review of issue 11: a poison event, renumbered rows in flight, stale events found late ------


class _Info:
    def __init__(self, mid: int) -> None:
        self.mid, self.rc = mid, MQTTErrorCode.MQTT_ERR_SUCCESS


class FakeBroker:
    """A paho client stand-in: records publishes; ``acks`` answers each with ``verdict(payload)``."""

    def __init__(self, delivery: EventDelivery, verdict) -> None:
        self.delivery, self.verdict, self.mid = delivery, verdict, 0
        self.wire: list[tuple[int, bytes]] = []
        self.accepted: list[bytes] = []

    def publish(self, topic, payload, qos, retain, properties):  # paho's signature
        self.mid += 1
        self.wire.append((self.mid, payload))
        return _Info(self.mid)

    def acks(self) -> None:
        for mid, payload in self.wire:
            code, reason = self.verdict(payload)
            if code < 0x80:
                self.accepted.append(payload)
            self.delivery.acked(mid, code, reason)
        self.wire = []


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(delivery_mod.time, "monotonic", lambda: now[0])
    return now


def _run(delivery: EventDelivery, broker: FakeBroker, clock: list[float], seconds: int) -> None:
    """The sender loop, once a second."""
    for _ in range(seconds):
        delivery.maintain()
        delivery.handle_acks()
        delivery.send(broker, "5")
        broker.acks()
        clock[0] += 1.0
    delivery.handle_acks()


def _payload(eid: str, kind: str = "new", **after: object) -> bytes:
    return json.dumps({"type": kind, "before": None, "after": {"id": eid, **after}}).encode()


def test_a_message_the_broker_always_refuses_becomes_a_dead_letter_and_throttles_nothing(
    tmp_path: Path, clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """/tmp/rev11/poison.py: 0x95 Packet too large for one event, 200 others accepted."""
    faults: list[str | None] = []
    dead: list[str | None] = []
    d = EventDelivery(max_inflight=20, on_fault=faults.append, on_dead_letter=dead.append)
    d.open(tmp_path / OUTBOX_FILE, 1000)
    big = _payload("ev-big", note="x" * 100)
    broker = FakeBroker(d, lambda p: (0x95, "Packet too large") if p == big else (0, ""))
    d.append("new", EVENTS, big)
    for i in range(200):
        d.append("update", EVENTS, _payload(f"ev-{i}", "update"))
    with caplog.at_level(logging.ERROR):
        _run(d, broker, clock, 15)  # 20 in flight a second: 10 s for 200
    print(f"after 15 s: pending={d.pending} accepted={len(broker.accepted)} dead_letter={d.stats()['dead_letter']}")
    assert d.pending == 0 and len(broker.accepted) == 200
    assert d.refused == 1 and d.stats()["dead_letter"] == 1 and d.dead_lettered == 1
    assert faults == []  # the delivery of everything else was never paused
    assert len(dead) == 1 and "ev-big" in (dead[0] or "") and EVENTS in (dead[0] or "")
    assert "Packet too large" in (dead[0] or "") and "dead_letter" in (dead[0] or "")
    assert "ev-big" in caplog.text and EVENTS in caplog.text and "Packet too large" in caplog.text
    d.close()
    with sqlite3.connect(tmp_path / OUTBOX_FILE) as db:  # kept, never deleted silently
        [(payload, code, reason)] = db.execute("SELECT payload, code, reason FROM dead_letter").fetchall()
    assert (bytes(payload), code) == (big, 0x95) and "Packet too large" in reason
    again = Outbox(tmp_path / OUTBOX_FILE)
    assert again.dead_letters == 1 and len(again) == 0
    again.close()


def test_an_unknown_refusal_is_retried_then_dead_lettered_and_any_accept_resets_the_backoff(
    tmp_path: Path, clock: list[float]
) -> None:
    """0x83 Implementation specific error for one event: paused and retried, a dead letter after
    DEAD_LETTER_AFTER refusals; the accepted events reset the backoff, so waits stay short."""
    d = EventDelivery(max_inflight=20)
    d.retry_base_s, d.retry_cap_s = 5.0, 300.0
    d.open(tmp_path / OUTBOX_FILE, 1000)
    bad = _payload("ev-bad")
    broker = FakeBroker(d, lambda p: (0x83, "Implementation specific error") if p == bad else (0, ""))
    d.append("new", EVENTS, bad)
    for i in range(30):
        d.append("update", EVENTS, _payload(f"ev-{i}", "update"))
    waits = []
    for _ in range(60):
        _run(d, broker, clock, 1)
        waits.append(max(0.0, d._paused_until - clock[0]))
    assert d.pending == 0 and len(broker.accepted) == 30
    assert d.refused == DEAD_LETTER_AFTER and d.stats()["dead_letter"] == 1
    # accepted events reset the backoff (5, 5, 5, then 10 s once none is left to accept): a
    # dead letter within a minute, where a backoff that only grew (5+10+20+40 s) takes 75 s
    assert max(waits) <= 10.0
    d.close()


def test_an_acl_refusal_is_never_dead_lettered(tmp_path: Path, clock: list[float]) -> None:
    """0x87 Not authorized is about every event: kept and retried for as long as it lasts."""
    d = EventDelivery(max_inflight=20)
    d.retry_base_s, d.retry_cap_s = 1.0, 2.0
    d.open(tmp_path / OUTBOX_FILE, 1000)
    allowed = [False]
    broker = FakeBroker(d, lambda p: (0, "") if allowed[0] else (0x87, "Not authorized"))
    d.append("new", EVENTS, _payload("ev-1"))
    d.append("update", EVENTS, _payload("ev-1", "update"))
    _run(d, broker, clock, 60)
    assert d.refused >= 4 * DEAD_LETTER_AFTER and d.pending == 2 and d.stats()["dead_letter"] == 0
    allowed[0] = True
    _run(d, broker, clock, 5)
    assert d.pending == 0 and [json.loads(p)["type"] for p in broker.accepted] == ["new", "update"]
    d.close()


def test_renumbered_rows_in_flight_never_delete_the_previous_runs_rows(
    tmp_path: Path, clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory rows sent under numbers the unreadable file already used: when they move back
    and get new numbers, the acks for the old ones must not delete the file's rows."""
    path = tmp_path / OUTBOX_FILE
    old = Outbox(path)
    for i in range(3):
        old.append("new", EVENTS, _payload(f"old-{i}"))
    old.close()
    path.with_name(path.name + ".seq").unlink()
    real = Outbox._connect
    calls = {"n": 0}

    def flaky(self: Outbox, seq_floor: int = 0) -> sqlite3.Connection:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, seq_floor)

    monkeypatch.setattr(Outbox, "_connect", flaky)
    monkeypatch.setattr(Outbox, "_peek_top", lambda self: None)
    monkeypatch.setattr("edge_asd.comms.outbox.time.time", lambda: 0.0)  # a stale clock
    d = EventDelivery(max_inflight=20)
    d.outbox_retry_s = 0.0
    d.open(path, 1000)
    d.append("new", EVENTS, _payload("new-0"))
    d.append("new", EVENTS, _payload("new-1"))  # #1 and #2, like old-0 and old-1
    broker = FakeBroker(d, lambda p: (0, ""))
    d.send(broker, "5")  # in flight under #1, #2
    d.maintain()  # the file opens: new-0/new-1 become #4/#5, the in-flight map is forgotten
    assert d.outbox is not None and d.outbox.renumbered == 1
    broker.acks()  # the acks for the old #1, #2 arrive
    _run(d, broker, clock, 3)
    got = [json.loads(p)["after"]["id"] for p in broker.accepted]
    assert got[:2] == ["new-0", "new-1"] and sorted(set(got[2:])) == ["new-0", "new-1", "old-0", "old-1", "old-2"]
    assert [json.loads(p)["after"]["id"] for p in broker.accepted[2:5]] == ["old-0", "old-1", "old-2"]  # order kept
    assert d.pending == 0
    d.close()


def test_events_left_open_are_ended_when_an_outbox_unreadable_at_start_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start could not read the file, so it could not end what the previous run left open:
    the sender ends those events once the file opens, with the start's ``end_reason``."""
    state = tmp_path / "state"
    old = Outbox(state / OUTBOX_FILE)
    old.append("new", EVENTS, b"{}", event("ev-left"))
    old.close()
    real = Outbox._connect
    calls = {"n": 0}

    def flaky(self: Outbox, seq_floor: int = 0) -> sqlite3.Connection:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, seq_floor)

    monkeypatch.setattr(Outbox, "_connect", flaky)
    comm = MqttCommunicator(MqttConfig(url="mqtt://127.0.0.1:1"), NODE, state)  # no broker needed
    comm.delivery.outbox_retry_s = 0.05
    comm.start()
    try:
        assert comm.outbox is not None
        comm.publish_event("new", None, event("ev-now"))
        assert wait_until(lambda: not comm.outbox.degraded and [e.id for e in comm.outbox.open_events()] == ["ev-now"])
        ends = [json.loads(r.payload) for r in comm.outbox.pending(limit=50) if r.kind == "end"]
        assert [(e["after"]["id"], e["after"]["end_reason"]) for e in ends] == [("ev-left", STALE_END_REASON)]
        kinds = [r.kind for r in comm.outbox.pending(limit=50)]
        assert kinds == ["new", "new", "end"]  # the old new first, then this run's, then the end
    finally:
        comm.stop(timeout_s=0.1)
