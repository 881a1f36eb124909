"""``edge-asd demo``: synthesise, train, export, stream, alert - on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from edge_asd.cli.output import console


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-out"), "--out", help="Working folder (data, run, bundle, recording)."),
        broker: str | None = typer.Option(None, "--broker", help="Use this MQTT broker instead of starting mosquitto."),
        fresh: bool = typer.Option(False, "--fresh", help="Start from scratch instead of reusing earlier steps."),
    ) -> None:
        """The whole system end to end: synth -> train -> evaluate -> export -> listen -> MQTT alerts."""
        from edge_asd.demo import run_demo

        result = run_demo(out, broker=broker, fresh=fresh, console=console)
        if not any(e["type"] == "new" for e in result.alerts):
            raise typer.Exit(1)
