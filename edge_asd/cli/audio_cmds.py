"""``edge-asd devices`` (list inputs) and ``edge-asd record`` (collect normal clips).

sounddevice and the capture modules are imported inside the commands: ``import
sounddevice`` fails without the PortAudio library, and only these commands need it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import typer

from edge_asd.cli.output import console

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    @app.command("devices")
    def devices(
        as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
    ) -> None:
        """List audio inputs with their stable ids (use one as --device or in the config)."""
        from edge_asd.audio.devices import list_inputs

        inputs = list_inputs()
        if as_json:
            console.print_json(json.dumps([d.to_dict() for d in inputs]))
            return
        if not inputs:
            console.print("no input devices found (check `arecord -l`, the cable, and membership of the audio group)")
            return
        from rich.table import Table

        table = Table(title="audio inputs")
        for col in ("index", "stable id", "name", "host API", "channels", "default rate"):
            table.add_column(col)
        for d in inputs:
            table.add_row(str(d.index), d.stable_id, d.name, d.hostapi, str(d.channels), f"{d.default_samplerate:.0f}")
        console.print(table)

    @app.command("record")
    def record(
        out: Path = typer.Option(..., "--out", help="Data folder; clips go to OUT/<machine>/[<id>/]."),
        machine: str = typer.Option(..., "--machine", help="Machine name (the class folder)."),
        minutes: float = typer.Option(10.0, "--minutes", min=0.0, help="How much audio to record."),
        device: str | None = typer.Option(None, "--device", help="Input: index, stable id or name substring."),
        source: str | None = typer.Option(None, "--source", help="Instead of --device: file:PATH or synth[:TYPE[:ID]]."),
        machine_id: str | None = typer.Option(None, "--id", help="Machine id (sub-folder), e.g. id_00."),
        channel: int = typer.Option(0, "--channel", min=0, help="Input channel to record."),
        realtime: bool = typer.Option(
            False, "--realtime/--fast", help="Pace file/synth sources at real time (devices always are)."
        ),
    ) -> None:
        """Record normal operation as 10 s 16 kHz WAV clips for training."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from edge_asd.audio.capture import Capture
        from edge_asd.audio.recorder import clip_folder, record_clips
        from edge_asd.audio.sources import AudioSourceError, open_source
        from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES

        if (device is None) == (source is None):
            raise AudioSourceError("give exactly one of --device DEV or --source file:PATH|synth")
        spec = source if source is not None else device
        n_clips = max(1, math.ceil(minutes * 60.0 * SAMPLE_RATE / WINDOW_SAMPLES))
        is_device = not (spec.startswith("file:") or spec == "synth" or spec.startswith("synth:"))
        src = open_source(
            spec,
            realtime=realtime,
            channels=None if is_device else (channel + 1 if spec.startswith("synth") else None),
            synth_seconds=n_clips * WINDOW_SAMPLES / SAMPLE_RATE + 1.0,
        )
        if channel >= src.channels:
            raise AudioSourceError(f"{src.name} has {src.channels} channel(s); --channel {channel} does not exist")
        folder = clip_folder(out, machine, machine_id)
        capture = Capture(src, channels=[channel])
        try:
            with Progress(
                TextColumn("[bold]recording[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("dropped {task.fields[dropped]}"),
                TimeRemainingColumn(),
                console=console,
            ) as progress:
                task = progress.add_task(src.name, total=n_clips, dropped=0)
                result = record_clips(
                    capture,
                    folder,
                    n_clips,
                    on_progress=lambda r: progress.update(task, completed=len(r.saved) + r.dropped, dropped=r.dropped),
                )
        finally:
            capture.stop()
        if result.interrupted:
            console.print("interrupted: every finished clip was kept")
        console.print(
            f"saved {len(result.saved)} clip(s) to {folder}"
            + (f", dropped {result.dropped} that spanned a gap" if result.dropped else "")
            + (f" (planned {n_clips}; the source ended early)" if len(result.saved) + result.dropped < n_clips
               and not result.interrupted else "")
        )
