"""Home Assistant discovery payloads and their lifecycle on a real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_asd.comms.base import StreamInfo
from edge_asd.comms.discovery import discovery_messages
from edge_asd.comms.mqtt import MqttCommunicator
from edge_asd.comms.topics import Topics
from edge_asd.config import MqttConfig
from tests.fixtures.mosquitto import Broker, Recorder, retained_snapshot, settled_retained

pytestmark = pytest.mark.device

ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def test_payloads_per_stream() -> None:
    topics = Topics("edge-asd", "line-1")
    msgs = dict(discovery_messages(topics, [StreamInfo("fan_a", threshold=0.4)], model="test rig"))
    anomaly = msgs["homeassistant/binary_sensor/edge_asd_line-1_fan_a_anomaly/config"]
    assert anomaly["device_class"] == "problem"
    assert anomaly["state_topic"] == "edge-asd/line-1/fan_a/anomaly"
    assert (anomaly["payload_on"], anomaly["payload_off"]) == ("ON", "OFF")
    assert anomaly["unique_id"] == "edge_asd_line-1_fan_a_anomaly"
    assert anomaly["default_entity_id"] == "binary_sensor.edge_asd_line-1_fan_a_anomaly"
    assert "object_id" not in anomaly
    assert anomaly["availability_mode"] == "all"
    avail_topics = [a["topic"] for a in anomaly["availability"]]
    assert avail_topics == ["edge-asd/line-1/available", "edge-asd/line-1/fan_a/status"]
    assert anomaly["json_attributes_topic"] == "edge-asd/line-1/fan_a/attributes"
    assert anomaly["device"]["identifiers"] == ["edge_asd_line-1"]
    assert anomaly["device"]["model"] == "test rig" and anomaly["device"]["manufacturer"] == "edge-asd"
    assert anomaly["origin"]["name"] == "edge-asd"
    score = msgs["homeassistant/sensor/edge_asd_line-1_fan_a_score/config"]
    assert score["state_class"] == "measurement" and score["state_topic"] == "edge-asd/line-1/fan_a/score"
    status = msgs["homeassistant/sensor/edge_asd_line-1_fan_a_status/config"]
    assert status["entity_category"] == "diagnostic"
    overflows = msgs["homeassistant/sensor/edge_asd_line-1_fan_a_overflows/config"]
    assert overflows["state_topic"] == "edge-asd/line-1/stats" and "overflows" in overflows["value_template"]
    assert msgs["homeassistant/sensor/edge_asd_line-1_inference_ms/config"]["unit_of_measurement"] == "ms"
    problem = msgs["homeassistant/binary_sensor/edge_asd_line-1_problem/config"]
    assert problem["state_topic"] == "edge-asd/line-1/status" and problem["device_class"] == "problem"
    assert (problem["payload_on"], problem["payload_off"]) == ("fault", "online")
    switch = msgs["homeassistant/switch/edge_asd_line-1_fan_a_enabled/config"]
    assert switch["command_topic"] == "edge-asd/line-1/fan_a/enabled/set"
    for topic, payload in msgs.items():
        assert set(payload["unique_id"]) <= ID_CHARS, topic
        assert topic == f"homeassistant/{topic.split('/')[1]}/{payload['unique_id']}/config"


def test_discovery_is_retained_republished_on_ha_birth_and_stale_entities_removed(
    broker: Broker, tmp_path: Path
) -> None:
    cfg = MqttConfig.model_validate({"url": broker.url})
    comm = MqttCommunicator(cfg, "n1", tmp_path / "state")
    comm.start()
    try:
        comm.announce([StreamInfo("a"), StreamInfo("b")])
        assert comm.wait_connected(10)
        anomaly_a = "homeassistant/binary_sensor/edge_asd_n1_a_anomaly/config"
        anomaly_b = "homeassistant/binary_sensor/edge_asd_n1_b_anomaly/config"
        deadline = time.monotonic() + 10
        snap: dict[str, str] = {}
        # the configs are published one by one: wait for both rather than the first
        while not (anomaly_a in snap and anomaly_b in snap) and time.monotonic() < deadline:
            time.sleep(0.05)
            snap = retained_snapshot(broker.port, "homeassistant/#")
        assert json.loads(snap[anomaly_a])["device_class"] == "problem"
        assert anomaly_b in snap

        rec = Recorder(broker.port, [anomaly_a])
        assert rec.wait_for(lambda m: len(m) == 1)  # the retained copy
        rec.client.publish("homeassistant/status", "online", qos=1)
        assert rec.wait_for(lambda m: len(m) >= 2)  # republished for the restarted HA
        assert not rec.messages[-1]["retain"]  # a live copy
        rec.close()
    finally:
        comm.stop(timeout_s=1)

    # restart with stream b gone: its entities are removed (empty retained config)
    comm = MqttCommunicator(cfg, "n1", tmp_path / "state")
    comm.start()
    try:
        comm.announce([StreamInfo("a")])
        assert comm.wait_connected(10)
        gone = "homeassistant/binary_sensor/edge_asd_n1_b_anomaly/config"
        deadline = time.monotonic() + 10
        snap = retained_snapshot(broker.port, "homeassistant/#")
        while gone in snap and time.monotonic() < deadline:
            time.sleep(0.05)
            snap = retained_snapshot(broker.port, "homeassistant/#")
        assert gone not in snap and anomaly_a in snap
    finally:
        comm.stop(timeout_s=1)


def test_discovery_can_be_disabled(broker: Broker, tmp_path: Path) -> None:
    cfg = MqttConfig.model_validate({"url": broker.url, "discovery": {"enabled": False}})
    comm = MqttCommunicator(cfg, "n2", tmp_path / "state")
    comm.start()
    try:
        comm.announce([StreamInfo("a")])
        assert comm.wait_connected(10)
        settled_retained(broker.port, "edge-asd/n2/#", lambda snap: snap.get("edge-asd/n2/available") == "online")
        assert retained_snapshot(broker.port, "edge-asd/n2/available") == {"edge-asd/n2/available": "online"}
        assert retained_snapshot(broker.port, "homeassistant/#") == {}
    finally:
        comm.stop(timeout_s=1)
