"""Pick the communicator a config asks for: MQTT when ``mqtt:`` is set, else the log."""

from __future__ import annotations

from edge_asd.comms.base import Communicator
from edge_asd.config import AppConfig


def create_communicator(cfg: AppConfig, *, model: str | None = None) -> Communicator:
    """``MqttCommunicator`` (outbox in ``cfg.state_dir``) or ``LogCommunicator``; not started."""
    if cfg.mqtt is None:
        from edge_asd.comms.log import LogCommunicator

        return LogCommunicator()
    from edge_asd.comms.mqtt import MqttCommunicator

    return MqttCommunicator(cfg.mqtt, cfg.node_id, cfg.state_dir, model=model)
