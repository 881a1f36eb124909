"""MqttCommunicator against a real mosquitto: retained state, LWT, durable events, TLS, auth."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from edge_asd.comms.base import StreamInfo
from edge_asd.comms.mqtt import MqttCommunicator
from edge_asd.config import ConfigError, MqttConfig
from tests.fixtures.mosquitto import Broker, Recorder, retained_snapshot

pytestmark = pytest.mark.device

NODE = "node1"


def mqtt_cfg(url: str, **kw: object) -> MqttConfig:
    return MqttConfig.model_validate({"url": url, **kw})


def wait_until(predicate, timeout_s: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@pytest.fixture
def comm_factory(tmp_path: Path):
    made: list[MqttCommunicator] = []

    def make(url: str, state_dir: Path | None = None, **kw: object) -> MqttCommunicator:
        comm = MqttCommunicator(mqtt_cfg(url, **kw), NODE, state_dir or tmp_path / "state")
        made.append(comm)
        return comm

    yield make
    for comm in made:
        comm.stop(timeout_s=0.5)


# A communicator in a child process, so that it can be SIGKILLed like a crashed daemon.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edge_asd.comms.mqtt import MqttCommunicator
    from edge_asd.config import MqttConfig
    url, state, mode, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    comm = MqttCommunicator(MqttConfig(url=url), "node1", state)
    comm.start()
    if mode == "connect":
        assert comm.wait_connected(10)
        time.sleep(0.5)
    for i in range(n):
        comm.publish_event("new", None, {"id": f"ev-{i}"})
    print("ready", flush=True)
    time.sleep(60)
    """
)


def spawn_child(url: str, state: Path, mode: str, n: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(state), mode, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"child failed: {line} {proc.stderr.read() if proc.stderr else ''}")
    return proc


def ids(events: list[dict]) -> list[str]:
    """Event ids in order of first arrival (delivery is at-least-once)."""
    seen: list[str] = []
    for ev in events:
        if ev["after"]["id"] not in seen:
            seen.append(ev["after"]["id"])
    return seen


def test_availability_retained_states_and_event_properties(broker: Broker, comm_factory) -> None:
    rec = Recorder(broker.port, ["edge-asd/#"])
    comm = comm_factory(broker.url)
    comm.start()
    comm.announce([StreamInfo("fan1", threshold=0.5, classes=("fan/id_00",))])
    comm.publish_status("fan1", "online")
    comm.publish_anomaly("fan1", True)
    assert comm.wait_connected(10)
    comm.publish_score("fan1", 0.75, 0.5)
    comm.publish_event("new", None, {"id": "e1", "stream": "fan1"})
    comm.publish_stats({"detector": {"inference_ms": 3.5}})
    base = f"edge-asd/{NODE}"
    assert rec.wait_for(lambda m: any(x["topic"] == f"{base}/events" for x in m))
    assert rec.wait_for(lambda m: any(x["topic"] == f"{base}/stats" for x in m))
    assert rec.last(f"{base}/available") == "online"
    assert rec.last(f"{base}/fan1/score") == "0.75"
    event = rec.on(f"{base}/events")[0]
    assert json.loads(event["payload"]) == {"type": "new", "before": None, "after": {"id": "e1", "stream": "fan1"}}
    assert event["qos"] == 1 and not event["retain"]
    assert ("schema", "1") in event["user_properties"]
    assert event["content_type"] == "application/json"
    assert event["expiry"] is not None and 3500 < event["expiry"] <= 3600
    stats = json.loads(rec.last(f"{base}/stats"))
    assert stats["detector"]["inference_ms"] == 3.5 and stats["mqtt"]["connected"] is True
    rec.close()
    assert wait_until(lambda: comm.pending_events == 0)

    # a fresh subscriber sees the retained state, but neither score nor events
    snap = retained_snapshot(broker.port, "edge-asd/#")
    assert snap[f"{base}/available"] == "online"
    assert snap[f"{base}/fan1/status"] == "online"
    assert snap[f"{base}/fan1/anomaly"] == "ON"
    assert snap[f"{base}/fan1/enabled/state"] == "ON"
    assert json.loads(snap[f"{base}/fan1/attributes"])["threshold"] == 0.5
    assert f"{base}/fan1/score" not in snap and f"{base}/events" not in snap

    comm.publish_status("fan1", "fault", "mic is silent (-90 dBFS)")
    comm.publish_anomaly("fan1", False)
    comm.stop(timeout_s=2)
    snap = retained_snapshot(broker.port, "edge-asd/#")
    assert snap[f"{base}/available"] == "offline"
    assert snap[f"{base}/fan1/status"] == "fault"
    assert snap[f"{base}/fan1/status/message"] == "mic is silent (-90 dBFS)"
    assert snap[f"{base}/fan1/anomaly"] == "OFF"


def test_last_will_offline_when_the_process_dies(broker: Broker, tmp_path: Path) -> None:
    proc = spawn_child(broker.url, tmp_path / "state", "connect", 0)
    topic = f"edge-asd/{NODE}/available"
    try:
        assert wait_until(lambda: retained_snapshot(broker.port, topic).get(topic) == "online")
        rec = Recorder(broker.port, [topic])
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        assert rec.wait_for(lambda m: any(x["payload"] == "offline" for x in m), 10)
        rec.close()
    finally:
        proc.kill()
    assert retained_snapshot(broker.port, topic)[topic] == "offline"


@pytest.mark.timeout(240)
def test_events_survive_a_30s_broker_outage_in_order(tmp_path: Path, comm_factory) -> None:
    b = Broker(tmp_path / "broker", persistence=True).start()
    events_topic = f"edge-asd/{NODE}/events"
    rec = Recorder(b.port, [events_topic], client_id="persistent-sub", persistent=True)
    comm = comm_factory(b.url)
    comm.start()
    assert comm.wait_connected(10)
    sent: list[str] = []

    def emit(n: int) -> None:
        for _ in range(n):
            eid = f"ev-{len(sent):03d}"
            sent.append(eid)
            comm.publish_event("update" if len(sent) % 3 else "new", {"id": eid}, {"id": eid})
            time.sleep(0.02)

    try:
        emit(20)
        # mid-stream: some events may still be in flight. SIGTERM rather than SIGKILL so that
        # mosquitto saves the subscriber's session; to the communicator it is the same loss
        # of connection either way.
        b.stop()
        assert wait_until(lambda: not comm.connected, 10)
        outage_end = time.monotonic() + 30
        while time.monotonic() < outage_end:
            emit(1)
            time.sleep(1.0)
        assert comm.pending_events > 0
        b.start()
        emit(10)
        assert rec.wait_for(lambda m: len({json.loads(x["payload"])["after"]["id"] for x in m}) >= len(sent), 90)
        assert ids(rec.events(events_topic)) == sent
        assert wait_until(lambda: comm.pending_events == 0, 10)
    finally:
        rec.close()
        comm.stop(timeout_s=1)
        b.stop()


def _persistent_session(b: Broker) -> None:
    """Create the recorder's persistent session, then take the broker down with it saved."""
    Recorder(b.port, [f"edge-asd/{NODE}/events"], client_id="late-sub", persistent=True).close()
    b.stop()


def test_outbox_survives_a_killed_daemon(tmp_path: Path, comm_factory) -> None:
    b = Broker(tmp_path / "broker", persistence=True).start()
    _persistent_session(b)
    state = tmp_path / "state"
    proc = spawn_child(b.url, state, "offline", 5)  # broker down: events go to the outbox only
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    try:
        b.start()
        rec = Recorder(b.port, [f"edge-asd/{NODE}/events"], client_id="late-sub", persistent=True)
        comm = comm_factory(b.url, state_dir=state)
        comm.start()
        assert rec.wait_for(lambda m: len(m) >= 5, 20)
        assert ids(rec.events(f"edge-asd/{NODE}/events")) == [f"ev-{i}" for i in range(5)]
        assert wait_until(lambda: comm.pending_events == 0)
        rec.close()
    finally:
        b.stop()


def test_unreachable_broker_at_start_retries_and_delivers(tmp_path: Path, comm_factory) -> None:
    b = Broker(tmp_path / "broker", persistence=True).start()
    _persistent_session(b)
    comm = comm_factory(b.url)
    comm.start()  # not fatal
    for i in range(3):
        comm.publish_event("new", None, {"id": f"ev-{i}"})
    time.sleep(1.5)
    assert not comm.connected and comm.pending_events == 3
    try:
        b.start()
        rec = Recorder(b.port, [f"edge-asd/{NODE}/events"], client_id="late-sub", persistent=True)
        assert comm.wait_connected(40)
        assert rec.wait_for(lambda m: len(m) >= 3, 20)
        assert ids(rec.events(f"edge-asd/{NODE}/events")) == ["ev-0", "ev-1", "ev-2"]
        assert wait_until(lambda: comm.pending_events == 0)
        rec.close()
    finally:
        b.stop()


def test_missing_or_invalid_tls_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    comm = MqttCommunicator(mqtt_cfg("mqtts://127.0.0.1:1", tls={"ca_file": str(missing)}), NODE, tmp_path)
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file .*ca\.pem not found"):
        comm.start()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    comm = MqttCommunicator(mqtt_cfg("mqtts://127.0.0.1:1", tls={"ca_file": str(garbage)}), NODE, tmp_path)
    with pytest.raises(ConfigError, match="garbage.pem is not a valid PEM"):
        comm.start()


def test_tls_connection_with_own_ca(tmp_path: Path, comm_factory) -> None:
    b = Broker(tmp_path / "broker", tls=True).start()
    try:
        assert b.tls_files is not None
        comm = comm_factory(b.url, tls={"ca_file": str(b.tls_files["ca"])})
        comm.start()
        assert comm.wait_connected(10)
    finally:
        b.stop()


def test_password_from_credentials_directory_is_used_and_never_logged(
    tmp_path: Path, comm_factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-Pa55word"
    b = Broker(tmp_path / "broker", users={"edge": secret}).start()
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text(secret + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    caplog.set_level(logging.DEBUG)
    try:
        comm = comm_factory(f"mqtt://edge@127.0.0.1:{b.port}")
        comm.start()
        assert comm.wait_connected(10)
        comm.stop(timeout_s=1)
        # the wrong password is refused: the credential really is what authenticates
        (creds / "mqtt_password").write_text("wrong\n")
        other = comm_factory(f"mqtt://edge@127.0.0.1:{b.port}", state_dir=tmp_path / "s2")
        other.start()
        assert not other.wait_connected(2)
    finally:
        b.stop()
    assert secret not in caplog.text
    assert "mqtt_password" in caplog.text  # says where the password came from


def test_enabled_command_calls_hook_and_reports_state(broker: Broker, comm_factory) -> None:
    calls: list[tuple[str, bool]] = []
    comm = comm_factory(broker.url)
    comm.on_enabled = lambda stream, on: calls.append((stream, on))
    comm.start()
    comm.announce([StreamInfo("fan1")])
    assert comm.wait_connected(10)
    state = f"edge-asd/{NODE}/fan1/enabled/state"
    assert wait_until(lambda: retained_snapshot(broker.port, state).get(state) == "ON")
    rec = Recorder(broker.port, [state])
    rec.client.publish(f"edge-asd/{NODE}/fan1/enabled/set", "OFF", qos=1)
    assert wait_until(lambda: calls == [("fan1", False)])
    assert rec.wait_for(lambda m: any(x["payload"] == "OFF" for x in m))
    rec.close()


def test_falls_back_to_mqtt311_when_the_broker_refuses_v5(tmp_path: Path, comm_factory) -> None:
    """A fake 3.1.1-only broker: refuses protocol level 5, accepts level 4."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    levels: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        conns = []
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            data = conn.recv(1024)
            level = data[8] if len(data) > 8 else 0
            levels.append(level)
            conn.sendall(bytes([0x20, 0x02, 0x00, 0x00 if level == 4 else 0x01]))
            conns.append(conn)
        for conn in conns:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        comm = comm_factory(f"mqtt://127.0.0.1:{port}")
        comm.start()
        assert comm.wait_connected(15)
        assert comm.protocol == "3.1.1"
        assert levels[0] == 5 and levels[-1] == 4
    finally:
        stop.set()
        thread.join(2)
        server.close()


def test_stop_without_start_and_event_before_start(tmp_path: Path) -> None:
    comm = MqttCommunicator(mqtt_cfg("mqtt://127.0.0.1:1"), NODE, tmp_path)
    comm.stop(timeout_s=0.1)
    with pytest.raises(RuntimeError):
        comm.publish_event("new", None, {"id": "x"})
    assert os.path.exists(tmp_path) and comm.pending_events == 0


def test_factory_and_log_communicator(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from edge_asd.comms.factory import create_communicator
    from edge_asd.comms.log import LogCommunicator
    from edge_asd.config import validate_config

    base = {
        "state_dir": str(tmp_path),
        "sources": [{"name": "s", "type": "synth"}],
        "streams": [{"name": "x", "source": "s", "classes": ["c"]}],
    }
    comm = create_communicator(validate_config(base))
    assert isinstance(comm, LogCommunicator)
    caplog.set_level(logging.INFO)
    comm.start()
    comm.publish_status("x", "fault", "silent")
    comm.publish_status("x", "fault", "silent")  # unchanged: logged once
    comm.publish_anomaly("x", True)
    comm.publish_event("new", None, {"id": "e"})
    comm.stop()
    assert caplog.text.count("stream x is fault: silent") == 1 and "anomaly ON" in caplog.text
    mq = create_communicator(validate_config({**base, "mqtt": {"url": "mqtt://127.0.0.1:1"}, "node_id": "n9"}))
    assert isinstance(mq, MqttCommunicator) and mq.topics.available == "edge-asd/n9/available"
    assert mq.state_dir == tmp_path


def test_memory_communicator_records_calls() -> None:
    from tests.fixtures.comms import MemoryCommunicator

    comm = MemoryCommunicator()
    seen: list[tuple[str, bool]] = []
    comm.on_enabled = lambda s, on: seen.append((s, on))
    comm.start()
    comm.announce([StreamInfo("a", threshold=1.0)])
    comm.publish_status("a", "online")
    comm.publish_anomaly("a", True)
    comm.publish_score("a", 1.5, 1.0)
    comm.publish_event("new", None, {"id": "e"})
    comm.publish_stats({"k": 1})
    comm.simulate_enabled_command("a", False)
    comm.stop(1.0)
    assert [c[0] for c in comm.calls] == [
        "start", "announce", "status", "anomaly", "score", "event", "stats", "enabled", "stop",
    ]
    assert comm.status["a"] == ("online", "") and comm.anomaly["a"] is True
    assert comm.events == [{"type": "new", "before": None, "after": {"id": "e"}}]
    assert seen == [("a", False)] and comm.enabled["a"] is False
    with pytest.raises(ValueError):
        comm.publish_status("a", "broken")
    with pytest.raises(ValueError):
        comm.publish_event("begin", None, {})


def test_node_faults_are_retained_joined_cleared_and_forgotten_by_the_next_run(
    broker: Broker, comm_factory, tmp_path: Path
) -> None:
    status, message = f"edge-asd/{NODE}/status", f"edge-asd/{NODE}/status/message"
    comm = comm_factory(broker.url)
    comm.start()
    comm.publish_node_fault("outbox", "event outbox full")  # before the connect: said at connect
    assert comm.wait_connected(10)
    comm.publish_node_fault("lock", "another daemon uses the state directory")
    assert wait_until(lambda: retained_snapshot(broker.port, message).get(message)
                      == "another daemon uses the state directory; event outbox full")  # fmt: skip
    assert retained_snapshot(broker.port, status)[status] == "fault"
    comm.publish_node_fault("lock", None)
    assert wait_until(lambda: retained_snapshot(broker.port, message).get(message) == "event outbox full")
    comm.publish_node_fault("nothing-raised", None)  # clearing an unknown key is harmless
    comm.stop(timeout_s=1)
    assert retained_snapshot(broker.port, status)[status] == "fault"  # the dead run's last word
    comm = comm_factory(broker.url, state_dir=tmp_path / "state2")
    comm.start()
    assert comm.wait_connected(10)
    assert wait_until(lambda: retained_snapshot(broker.port, status).get(status) == "online")
    assert message not in retained_snapshot(broker.port, message)  # an empty retained message clears it


def test_node_faults_without_a_broker_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    from edge_asd.comms.log import LogCommunicator
    from edge_asd.comms.null import NullCommunicator
    from tests.fixtures.comms import MemoryCommunicator

    caplog.set_level(logging.INFO)
    for comm in (LogCommunicator(), NullCommunicator()):
        caplog.clear()
        comm.publish_node_fault("outbox", "disk full")
        comm.publish_node_fault("outbox", "disk full")
        comm.publish_node_fault("outbox", None)
        comm.publish_node_fault("outbox", None)
        assert caplog.text.count("node fault outbox: disk full") == 1
        assert caplog.text.count("node fault outbox cleared") == 1
        assert comm.delivery_stats() == {
            "outbox_depth": 0, "oldest_undelivered_s": None, "memory_queue": 0, "refused": 0, "dead_letter": 0,
        }  # fmt: skip
    mem = MemoryCommunicator()
    mem.publish_node_fault("lock", "taken")
    assert mem.node_faults == {"lock": "taken"} and mem.calls[-1] == ("node_fault", ("lock", "taken"))
    mem.publish_node_fault("lock", None)
    assert mem.node_faults == {}
