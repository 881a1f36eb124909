"""`edge-asd watch`: the operator's view, driven by a real communicator through a real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_asd.cli import app
from edge_asd.comms.base import StreamInfo
from edge_asd.comms.mqtt import MqttCommunicator
from edge_asd.comms.watcher import Message, WatchState
from edge_asd.config import MqttConfig
from tests.fixtures.mosquitto import Broker, settled_retained

pytestmark = pytest.mark.device


@pytest.fixture
def live_node(broker: Broker, tmp_path: Path):
    comm = MqttCommunicator(MqttConfig.model_validate({"url": broker.url}), "n1", tmp_path / "state")
    comm.start()
    comm.announce([StreamInfo("fan1", threshold=0.5)])
    comm.publish_status("fan1", "online")
    comm.publish_anomaly("fan1", True)
    assert comm.wait_connected(10)
    # The retained state must be at the broker before a test's watcher subscribes: one that
    # subscribes while the publishes are in flight gets them live, without the retain flag.
    settled_retained(broker.port, "edge-asd/n1/#", lambda snap: snap.get("edge-asd/n1/available") == "online")
    yield comm
    comm.stop(timeout_s=1)


def test_watch_json_sees_retained_state_and_live_events(broker: Broker, live_node: MqttCommunicator) -> None:
    import threading

    def later() -> None:
        time.sleep(1.0)
        live_node.publish_event("new", None, {"id": "ev-1", "stream": "fan1", "peak_score": 0.9})
        live_node.publish_score("fan1", 0.7, 0.5)

    threading.Thread(target=later, daemon=True).start()
    result = CliRunner().invoke(app, ["watch", "--broker", broker.url, "--json", "--duration", "2.5"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by_topic = {m["topic"]: m for m in lines}
    assert by_topic["edge-asd/n1/available"]["payload"] == "online"
    assert by_topic["edge-asd/n1/available"]["retained"] is True
    assert by_topic["edge-asd/n1/fan1/anomaly"]["payload"] == "ON"
    assert by_topic["edge-asd/n1/events"]["payload"]["after"]["id"] == "ev-1"
    assert by_topic["edge-asd/n1/fan1/score"]["payload"] == 0.7


def test_watch_once_prints_the_table(broker: Broker, live_node: MqttCommunicator) -> None:
    result = CliRunner().invoke(app, ["watch", "--broker", broker.url, "--once"])
    assert result.exit_code == 0, result.output
    assert "n1" in result.stdout and "fan1" in result.stdout and "online" in result.stdout
    assert "ON" in result.stdout and "0.500" in result.stdout  # anomaly and threshold


def test_watch_unreachable_broker_is_a_user_error(tmp_path: Path) -> None:
    from edge_asd.core.errors import UserError
    from tests.fixtures.mosquitto import free_port

    result = CliRunner().invoke(app, ["watch", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--once"])
    assert isinstance(result.exception, UserError) and "cannot reach MQTT broker" in str(result.exception)


def test_watch_state_folds_events() -> None:
    state = WatchState("edge-asd")
    ev = {"id": "e1", "stream": "s", "peak_score": 1.2, "end_time": None}
    state.apply(Message("edge-asd/n/events", json.dumps({"type": "new", "before": None, "after": ev}), False, 0))
    assert "e1" in state.nodes["n"].open_events
    done = {**ev, "end_time": 10.0}
    state.apply(Message("edge-asd/n/events", json.dumps({"type": "end", "before": ev, "after": done}), False, 1))
    assert state.nodes["n"].open_events == {} and len(state.log) == 2 and "peak 1.200" in state.log[0]
    state.apply(Message("edge-asd/n/s/status/message", "silent", True, 2))
    state.apply(Message("other/n/s/status", "online", True, 2))
    assert state.nodes["n"].streams["s"].message == "silent" and list(state.nodes) == ["n"]


def test_watch_live_view_runs_for_a_duration(broker: Broker, live_node: MqttCommunicator) -> None:
    result = CliRunner().invoke(app, ["watch", "--broker", broker.url, "--duration", "1.5"])
    assert result.exit_code == 0, result.output
    assert "fan1" in result.stdout


def test_numpy_values_in_events_are_plain_numbers(broker: Broker, live_node: MqttCommunicator) -> None:
    import numpy as np

    from tests.fixtures.mosquitto import Recorder

    rec = Recorder(broker.port, ["edge-asd/n1/events"])
    live_node.publish_event("new", None, {"id": "np", "peak_score": np.float32(1.5), "n": np.int64(3)})
    assert rec.wait_for(lambda m: len(m) == 1)
    assert json.loads(rec.messages[0]["payload"])["after"] == {"id": "np", "peak_score": 1.5, "n": 3}
    rec.close()


def test_watch_state_keeps_node_faults_apart_from_streams() -> None:
    """``<node>/status`` and ``<node>/status/message`` are the node's, not a stream called "status"."""
    state = WatchState("edge-asd")
    state.apply(Message("edge-asd/n/status/message", "event outbox full", True, 0))
    state.apply(Message("edge-asd/n/status", "fault", True, 0))
    state.apply(Message("edge-asd/n/status/status", "online", True, 0))  # a stream named "status"
    node = state.nodes["n"]
    assert (node.status, node.message) == ("fault", "event outbox full")
    assert list(node.streams) == ["status"] and node.streams["status"].status == "online"
    assert node.streams["status"].message == ""


def test_watch_table_shows_a_node_fault() -> None:
    """An operator sees the node's own fault (a full outbox, a refused delivery) in the table."""
    from rich.console import Console

    from edge_asd.cli.watch_cmd import _render

    state = WatchState("edge-asd")
    state.apply(Message("edge-asd/n/available", "online", True, 0))
    state.apply(Message("edge-asd/n/status", "fault", True, 0))
    state.apply(Message("edge-asd/n/status/message", "event outbox full", True, 0))
    state.apply(Message("edge-asd/n/fan/status", "online", True, 0))
    console = Console(width=200, record=True)
    console.print(_render(state))
    text = console.export_text()
    assert "fault" in text and "event outbox full" in text
    state.apply(Message("edge-asd/n/status", "online", True, 0))
    state.apply(Message("edge-asd/n/status/message", "", True, 0))
    console = Console(width=200, record=True)
    console.print(_render(state))
    assert "fault" not in console.export_text()


def test_watch_table_survives_markup_from_the_broker() -> None:
    """Text from the broker is shown as text: a "[/]" in a message must not crash the view."""
    from rich.console import Console

    from edge_asd.cli.watch_cmd import _render

    state = WatchState("edge-asd")
    state.apply(Message("edge-asd/n[red]/status", "fault", True, 0))
    state.apply(Message("edge-asd/n[red]/status/message", "outbox at /var/[/]lib full [bold]", True, 0))
    state.apply(Message("edge-asd/n[red]/fan[b]/status", "fault", True, 0))
    state.apply(Message("edge-asd/n[red]/fan[b]/status/message", "[/] mic", True, 0))
    console = Console(width=200, record=True)
    console.print(_render(state))
    text = console.export_text()
    assert "/var/[/]lib full [bold]" in text and "[/] mic" in text
    assert "n[red]" in text and "fan[b]" in text
