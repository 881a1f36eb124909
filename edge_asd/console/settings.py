"""What one console needs to run: where to listen, who may come in, where the data is.

A plain dataclass of what was resolved from the command line and the config: the defaults
themselves are the config's ``console:`` section (``edge_asd.config.ConsoleConfig``), read once
here; a config without that section still gives the broker, the prefix, the node id and the
state directory.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from edge_asd.config import ConsoleConfig, MqttConfig
from edge_asd.core.errors import UserError
from edge_asd.core.hosts import is_loopback_host

logger = logging.getLogger(__name__)

_DEFAULTS = ConsoleConfig()

DEFAULT_HOST = _DEFAULTS.host
"""Loopback only: nobody but this machine reaches the console unless asked for (the config's
``console:`` section holds every default; these names only read them)."""

DEFAULT_PORT = _DEFAULTS.port
"""8090, not 8080 (BirdNET-Go, Node-RED dashboards and many others take that one)."""

DEFAULT_MAX_EVENTS = _DEFAULTS.max_events
"""Events kept in the console's history database (the oldest go first)."""

HISTORY_S = 3600.0
"""The score plot of each stream covers the last hour."""

BUCKET_S = 5.0
"""The score history keeps the highest score of every 5 s (720 points an hour per stream)."""

DB_NAME = "console.sqlite"
"""The history database's file name inside ``<state dir>/console/`` unless ``--db`` is given."""


class ConsoleError(UserError):
    """A console setting or file the user must fix; the message names it."""


@dataclass
class ConsoleSettings:
    """Everything ``edge-asd console`` was told, with the defaults filled in."""

    mqtt: MqttConfig
    state_dir: Path
    node_id: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    credentials_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    db_path: Path | None = None
    public_url: str | None = None
    max_events: int = DEFAULT_MAX_EVENTS
    trust_localhost: bool = True
    history_s: float = HISTORY_S
    bucket_s: float = BUCKET_S
    extra_hosts: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.mqtt.prefix

    @property
    def evidence_root(self) -> Path:
        """Where the daemon of this node writes evidence (``EvidenceStore`` under the state dir)."""
        return self.state_dir / "evidence"

    @property
    def database(self) -> Path:
        return self.db_path if self.db_path is not None else self.state_dir / "console" / DB_NAME

    @property
    def https(self) -> bool:
        return self.cert_file is not None

    @property
    def loopback_only(self) -> bool:
        return is_loopback_host(self.host)

    def announced_url(self) -> str | None:
        """The URL other consoles link to for this node's evidence (None: not reachable from outside)."""
        if self.public_url:
            return self.public_url.rstrip("/") + "/"
        if self.loopback_only:
            return None
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        elif ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.https else 'http'}://{host}:{self.port}/"

    def check(self) -> None:
        """Refuse settings that would expose the console or that cannot work, naming the fix."""
        if not 0 <= self.port < 65536:  # 0: any free port (tests, benchmarks)
            raise ConsoleError(f"--port {self.port}: give a TCP port between 1 and 65535")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConsoleError("--cert and --key must be given together (the PEM certificate and its private key)")
        if self.max_events < 100:
            raise ConsoleError(f"max events {self.max_events}: keep at least 100")
        if not self.loopback_only and self.credentials_file is None:
            raise ConsoleError(
                f"--host {self.host} would let other machines use the console without a password: "
                "give --credentials FILE (create it with `edge-asd console-user NAME --credentials FILE`), "
                "or keep the default --host 127.0.0.1"
            )
        for what, path in (("--credentials", self.credentials_file), ("--cert", self.cert_file),
                           ("--key", self.key_file)):
            if path is not None and not Path(path).is_file():
                raise ConsoleError(f"{what} {path} not found: create it or fix the path")


__all__ = [
    "BUCKET_S",
    "DB_NAME",
    "DEFAULT_HOST",
    "DEFAULT_MAX_EVENTS",
    "DEFAULT_PORT",
    "HISTORY_S",
    "ConsoleError",
    "ConsoleSettings",
]
