"""``edge-asd watch`` (an operator's live view of the MQTT topics) and ``edge-asd config check``."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from edge_asd.cli.output import console, error_console
from edge_asd.core.constants import ONLINE

if TYPE_CHECKING:
    from rich.console import RenderableType

    from edge_asd.comms.watcher import WatchState

logger = logging.getLogger(__name__)


def _render(state: WatchState) -> RenderableType:
    """Nodes/streams table, open events and the recent event log."""
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    # Everything below comes from the broker: any publisher under the prefix could send "[/]",
    # which rich would read as markup and crash every operator's view on.
    table = Table(title=f"edge-asd nodes under '{state.prefix}/'", expand=False)
    for col in ("node", "available", "stream", "status", "anomaly", "score", "threshold", "enabled"):
        table.add_column(col)
    if not state.nodes:
        table.add_row("(no node seen yet)", "", "", "", "", "", "", "")
    for node_name, node in sorted(state.nodes.items()):
        shown = escape(node.available)
        avail = f"[green]{shown}[/]" if node.available == ONLINE else f"[red]{shown}[/]"
        if node.status == "fault":  # the node's own health: outbox, delivery, state-dir lock
            avail += f" [red]fault[/] ({escape(node.message)})" if node.message else " [red]fault[/]"
        if not node.streams:
            table.add_row(Text(node_name), avail, "", "", "", "", "", "")
        for i, (name, view) in enumerate(sorted(node.streams.items())):
            status = escape(view.status) if view.status == ONLINE else f"[yellow]{escape(view.status)}[/]"
            if view.message:
                status += f" ({escape(view.message)})"
            anomaly = "[bold red]ON[/]" if view.anomaly == "ON" else escape(str(view.anomaly))
            over = view.score is not None and view.threshold is not None and view.score >= view.threshold
            score = "" if view.score is None else (f"[red]{view.score:.3f}[/]" if over else f"{view.score:.3f}")
            threshold = "" if view.threshold is None else f"{view.threshold:.3f}"
            table.add_row(
                Text(node_name) if i == 0 else "", avail if i == 0 else "", Text(name), status, anomaly, score,
                threshold, Text(str(view.enabled)),
            )
    events = Table(title="open events", expand=False)
    for col in ("node", "id", "stream", "start", "peak"):
        events.add_column(col)
    for node_name, node in sorted(state.nodes.items()):
        for eid, ev in node.open_events.items():
            peak = ev.get("peak_score")
            events.add_row(
                Text(node_name), Text(eid), Text(str(ev.get("stream") or ev.get("mic") or "")),
                Text(str(ev.get("start_time", ""))),
                f"{peak:.3f}" if isinstance(peak, (int, float)) else "",
            )
    log = "\n".join(state.log) or "(no events yet)"
    return Group(table, events, Panel(Text(log), title="event log", expand=False))


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(help="Check a daemon configuration file.", no_args_is_help=True)
    app.add_typer(config_app, name="config")

    @config_app.command("check")
    def config_check(
        file: Path = typer.Argument(..., help="YAML config file of the daemon (edge-asd listen --config)."),
    ) -> None:
        """Validate FILE and print the effective configuration (defaults filled in, password masked)."""
        from edge_asd.config import ConfigError, effective_config_yaml, load_config

        try:
            cfg = load_config(file)
        except ConfigError as err:
            from rich.markup import escape

            error_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        console.print(effective_config_yaml(cfg), markup=False, highlight=False, soft_wrap=True, end="")
        error_console.print(f"[green]{file}: OK[/] ({len(cfg.streams)} stream(s), {len(cfg.sources)} source(s))")

    @app.command("watch")
    def watch(
        broker: str = typer.Option("mqtt://localhost:1883", "--broker", help="mqtt://[user@]host:port or mqtts://..."),
        prefix: str | None = typer.Option(None, "--prefix", help="Topic prefix (default edge-asd)."),
        config: Path | None = typer.Option(
            None, "--config", help="Take broker, TLS, credentials and prefix from this daemon config."
        ),
        ca_file: Path | None = typer.Option(None, "--ca-file", help="CA file for mqtts:// brokers."),
        once: bool = typer.Option(False, "--once", help="Print the retained state once and exit."),
        duration: float | None = typer.Option(None, "--duration", help="Exit after this many seconds."),
        json_lines: bool = typer.Option(False, "--json", help="Print every message as a JSON line."),
    ) -> None:
        """Live view of nodes, streams, open events and the event log published by edge-asd daemons."""
        from edge_asd.comms.watcher import Watcher, WatchState
        from edge_asd.config import ConfigError, MqttConfig, load_config

        try:
            if config is not None:
                cfg = load_config(config).mqtt
                if cfg is None:
                    raise ConfigError(f"config {config} has no mqtt: section")
            else:
                tls = {"ca_file": str(ca_file.absolute())} if ca_file else {}
                cfg = MqttConfig.model_validate({"url": broker, "tls": tls})
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            raise ConfigError(f"--broker {broker!r}: {err}") from None
        state = WatchState(prefix or cfg.prefix)
        watcher = Watcher(cfg, state.prefix)
        watcher.start()
        settle = 1.0
        end = time.monotonic() + (settle if once and duration is None else duration or float("inf"))
        try:
            if json_lines or once:
                while time.monotonic() < end:
                    msg = watcher.get(min(0.2, max(0.0, end - time.monotonic())))
                    if msg is None:
                        continue
                    if json_lines:
                        sys.stdout.write(msg.as_json_line() + "\n")
                        sys.stdout.flush()
                    state.apply(msg)
                if once and not json_lines:
                    console.print(_render(state))
                return
            from rich.live import Live

            with Live(_render(state), console=console, refresh_per_second=4) as live:
                while time.monotonic() < end:
                    msg = watcher.get(min(0.25, max(0.0, end - time.monotonic())))
                    if msg is None:
                        continue
                    state.apply(msg)
                    live.update(_render(state))
        except KeyboardInterrupt:
            pass
        finally:
            watcher.stop()
