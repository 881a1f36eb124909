"""``edge-asd console`` (the operator's web console) and ``edge-asd console-user`` (its users).

The command only gathers settings (the daemon's config file, then flags over it) and starts
``edge_asd.console``; aiohttp is imported inside, so ``edge-asd --help`` works without it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edge_asd.cli.output import error_console

if TYPE_CHECKING:
    from edge_asd.console.settings import ConsoleSettings

logger = logging.getLogger(__name__)

# Keys of the config's optional `console:` section, and the settings they fill.
CONFIG_KEYS = {
    "host": "host", "port": "port", "credentials_file": "credentials_file", "cert_file": "cert_file",
    "key_file": "key_file", "public_url": "public_url", "db": "db_path", "max_events": "max_events",
    "trust_localhost": "trust_localhost",
}


def _console_section(cfg: Any) -> dict[str, Any]:
    """The ``console:`` section of a config as a dict ({} while the schema has none)."""
    section = getattr(cfg, "console", None)
    if section is None:
        return {}
    if hasattr(section, "model_dump"):
        return dict(section.model_dump())
    return dict(section) if isinstance(section, dict) else {}


def build_settings(
    *,
    config: Path | None,
    broker: str | None,
    prefix: str | None,
    state_dir: Path | None,
    node: str | None,
    flags: dict[str, Any],
) -> tuple[ConsoleSettings, bool]:
    """Settings from the config file (if any) with flags over it; the bool is ``console.enabled``."""
    from edge_asd.config import ConfigError, MqttConfig, default_node_id, default_state_dir, load_config
    from edge_asd.console.settings import ConsoleSettings

    values: dict[str, Any] = {}
    enabled = True
    mqtt_cfg: MqttConfig | None = None
    if config is not None:
        cfg = load_config(config)
        if cfg.mqtt is None and broker is None:
            raise ConfigError(f"config {config} has no mqtt: section; the console needs the broker (or --broker)")
        mqtt_cfg = cfg.mqtt
        values.update(state_dir=Path(cfg.state_dir), node_id=cfg.node_id)
        section = _console_section(cfg)
        enabled = bool(section.get("enabled", True))
        values.update({CONFIG_KEYS[k]: v for k, v in section.items() if k in CONFIG_KEYS and v is not None})
    if broker is not None or mqtt_cfg is None:
        url = broker or "mqtt://localhost:1883"
        try:
            base: dict[str, Any] = {"url": url}
            if mqtt_cfg is not None:
                base["prefix"] = mqtt_cfg.prefix
            mqtt_cfg = MqttConfig.model_validate(base)
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            raise ConfigError(f"--broker {url!r}: {err}") from None
    if prefix is not None:
        try:
            mqtt_cfg = mqtt_cfg.model_copy(update={"prefix": MqttConfig.model_validate({"prefix": prefix}).prefix})
        except ValueError as err:
            raise ConfigError(f"--prefix {prefix!r}: {err}") from None
    if state_dir is not None:
        values["state_dir"] = state_dir
    if node is not None:
        values["node_id"] = node
    values.update({k: v for k, v in flags.items() if v is not None})
    values.setdefault("state_dir", default_state_dir())
    values.setdefault("node_id", default_node_id())
    for key in ("credentials_file", "cert_file", "key_file", "db_path", "state_dir"):
        if values.get(key) is not None:
            values[key] = Path(values[key]).expanduser()
    return ConsoleSettings(mqtt=mqtt_cfg, **values), enabled


def register(app: typer.Typer) -> None:
    @app.command("console")
    def console(
        config: Path | None = typer.Option(
            None, "--config", "-c", help="The daemon's config: broker, prefix, node id, state dir, `console:` section."
        ),
        broker: str | None = typer.Option(None, "--broker", help="mqtt://[user@]host:port or mqtts://... (default localhost)."),
        prefix: str | None = typer.Option(None, "--prefix", help="Topic prefix (default edge-asd)."),
        state_dir: Path | None = typer.Option(
            None, "--state-dir", help="The daemon's state directory (its evidence/ is served)."
        ),
        node: str | None = typer.Option(None, "--node", help="The node whose evidence is on this machine (default: hostname)."),
        host: str | None = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
        port: int | None = typer.Option(None, "--port", help="TCP port (default 8090)."),
        credentials: Path | None = typer.Option(
            None, "--credentials", help="Users file (edge-asd console-user); required for any --host but loopback."
        ),
        cert: Path | None = typer.Option(None, "--cert", help="PEM certificate: serve HTTPS."),
        key: Path | None = typer.Option(None, "--key", help="PEM private key of --cert."),
        db: Path | None = typer.Option(None, "--db", help="Event history database (default STATE_DIR/console/console.sqlite)."),
        public_url: str | None = typer.Option(
            None, "--public-url", help="URL other consoles link to for this node's evidence (announced over MQTT)."
        ),
        max_events: int | None = typer.Option(None, "--max-events", help="Events kept in the history (default 10000)."),
    ) -> None:
        """Web console: nodes and streams live, events with their audio, feedback, re-enrolment."""
        settings, enabled = build_settings(
            config=config, broker=broker, prefix=prefix, state_dir=state_dir, node=node,
            flags={"host": host, "port": port, "credentials_file": credentials, "cert_file": cert, "key_file": key,
                   "db_path": db, "public_url": public_url, "max_events": max_events},
        )
        if not enabled:
            error_console.print(f"the console is switched off in {config} (console.enabled: false)")
            return
        logging.getLogger("edge_asd").setLevel(logging.INFO)
        from edge_asd.console.server import run_console

        def ready(url: str) -> None:
            error_console.print(f"edge-asd console on [bold]{url}[/] (node {settings.node_id}, "
                                f"broker {settings.mqtt.host}:{settings.mqtt.effective_port}); Ctrl-C stops it")

        run_console(settings, on_ready=ready)

    @app.command("console-user")
    def console_user(
        name: str = typer.Argument(..., help="User name to add or change."),
        credentials: Path = typer.Option(..., "--credentials", help="The console's users file (created 0600)."),
        password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    ) -> None:
        """Add a console user (or change its password): stores a salted scrypt hash, never the password."""
        from edge_asd.console.auth import add_user

        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = typer.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
        new = add_user(credentials, name, password)
        error_console.print(f"{'added' if new else 'changed'} user {name} in {credentials}")
