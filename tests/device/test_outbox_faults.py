"""What a plant throws at event delivery, against a real mosquitto (issue 11, items 2-4 and 12):
a daemon killed during an event, a full disk under the outbox, a corrupt outbox file, a
broker whose ACL refuses the events topic, and the node faults and delivery figures that
tell an operator about each.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge_asd.comms.base import StreamInfo
from edge_asd.comms.mqtt import OUTBOX_FILE, MqttCommunicator
from edge_asd.comms.mqtt.communicator import STALE_END_REASON
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
    return retained_snapshot(port, topic, 0.3).get(topic)


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
    assert stats == {"outbox_depth": 0, "oldest_undelivered_s": None, "memory_queue": 0, "refused": 0}

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
    assert stats["outbox_depth"] == 1 and stats["memory_queue"] == 0 and stats["refused"] == 0
    assert stats["oldest_undelivered_s"] is not None and 0.0 < stats["oldest_undelivered_s"] < 10.0
    comm.stop(timeout_s=0.1)

    live = comm_factory(broker.url, state_dir=comm.state_dir)
    rec = Recorder(broker.port, [f"{BASE}/stats"])
    live.start()
    assert live.wait_connected(10)
    live.publish_stats({"streams": {}})
    assert rec.wait_for(lambda m: len(m) >= 1)
    body = json.loads(rec.messages[-1]["payload"])
    assert set(body["delivery"]) == {"outbox_depth", "oldest_undelivered_s", "memory_queue", "refused"}
    assert body["mqtt"]["outbox_pending"] == body["delivery"]["outbox_depth"]
    rec.close()
