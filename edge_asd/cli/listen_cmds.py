"""``edge-asd listen`` (the daemon) and ``edge-asd calibrate`` (thresholds from site audio)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from edge_asd.cli.output import console

logger = logging.getLogger(__name__)

_DEVICE = typer.Option(None, "--device", help="Audio input: index, stable id (see `edge-asd devices`) or name substring.")
_SOURCE = typer.Option(None, "--source", help="Instead of a device: file:PATH (a WAV replayed) or synth[:TYPE[:ID]].")
_CONFIG = typer.Option(None, "--config", "-c", help="YAML config (several streams, MQTT, thresholds); flags override it.")
_BUNDLE = typer.Option(None, "--bundle", help="Model bundle folder from `edge-asd export`.")
_CLASS = typer.Option(None, "--class", help="Bundle class(es) of the machine; repeat for several operating modes.")
_BROKER = typer.Option(None, "--broker", help="MQTT broker: mqtt://[user@]host:port or mqtts://...")
_HOP = typer.Option(None, "--hop", help="Seconds between two scored 10 s windows (default 1).")
_BACKEND = typer.Option(None, "--backend", help="auto | tensorrt | onnxruntime")
_STATE = typer.Option(None, "--state-dir", help="Outbox, evidence and engine cache (default $STATE_DIRECTORY or /var/lib/edge-asd).")


def _load(config, device, source, bundle, classes, broker, hop, backend, state_dir, node_id=None, fast=False):
    """Config from file and flags; without --class and without a config, all bundle classes."""
    from edge_asd.config import config_from_cli

    if not classes and config is None and bundle is not None and (device or source):
        from engines.bundle import load_bundle

        classes = load_bundle(bundle).classes
    cfg = config_from_cli(
        config, device=device, source=source, bundle=bundle, classes=classes, broker=broker, hop=hop,
        backend=backend, state_dir=state_dir, node_id=node_id,
    )
    if fast:
        for src in cfg.sources:
            if src.type == "file":
                src.realtime = False
    return cfg


def register(app: typer.Typer) -> None:
    @app.command("listen")
    def listen(
        config: Path | None = _CONFIG,
        device: str | None = _DEVICE,
        source: str | None = _SOURCE,
        bundle: Path | None = _BUNDLE,
        classes: list[str] | None = _CLASS,
        broker: str | None = _BROKER,
        hop: float | None = _HOP,
        backend: str | None = _BACKEND,
        state_dir: Path | None = _STATE,
        node_id: str | None = typer.Option(None, "--node-id", help="Node id in MQTT topics (default: host name)."),
        fast: bool = typer.Option(False, "--fast", help="Replay file sources as fast as the engine scores (no real-time pacing)."),
    ) -> None:
        """Listen to the machines and publish anomaly alerts over MQTT (the daemon)."""
        import contextlib
        import faulthandler

        from edge_asd.daemon.listen import build_daemon, run_daemon

        # A crash in native code (PortAudio, a sound driver, an inference runtime) ends the
        # process without a Python traceback; this prints every thread's stack to stderr first,
        # so the report names the call that crashed (the systemd unit sets PYTHONFAULTHANDLER
        # too; this covers `listen` run by hand, in a container or in the tests).
        with contextlib.suppress(Exception):  # no usable stderr (started with 2>&-): run without it
            faulthandler.enable()

        cfg = _load(config, device, source, bundle, classes, broker, hop, backend, state_dir, node_id, fast)
        logging.getLogger().setLevel(cfg.logging.level)
        daemon = build_daemon(cfg)
        names = ", ".join(f"{s.name} ({'/'.join(s.class_names)})" for s in daemon.pipeline.streams)
        console.print(f"listening: {names} - engine {daemon.runtime.describe()} - hop {cfg.hop_s:g} s", highlight=False)
        raise typer.Exit(run_daemon(daemon))

    @app.command("calibrate")
    def calibrate(
        minutes: float = typer.Option(10.0, "--minutes", min=0.1, help="Minutes of normal operation to score."),
        false_alarms_per_day: float = typer.Option(
            1.0, "--false-alarms-per-day", min=1e-6, help="Target rate of windows over the threshold during normal operation."
        ),
        out: Path | None = typer.Option(None, "--out", help="Config file to write (default: update --config in place)."),
        config: Path | None = _CONFIG,
        device: str | None = _DEVICE,
        source: str | None = _SOURCE,
        bundle: Path | None = _BUNDLE,
        classes: list[str] | None = _CLASS,
        hop: float | None = _HOP,
        backend: str | None = _BACKEND,
        state_dir: Path | None = _STATE,
        fast: bool = typer.Option(False, "--fast", help="Replay file sources as fast as possible."),
    ) -> None:
        """Record normal operation on site and set each stream's threshold, written to the config."""
        from edge_asd.daemon.calibrate import calibrate_streams, write_thresholds

        cfg = _load(config, device, source, bundle, classes, None, hop, backend, state_dir, fast=fast)
        if out is None and config is None:
            raise typer.BadParameter("give --out FILE (or --config FILE to update in place)", param_hint="--out")
        result = calibrate_streams(cfg, minutes=minutes, false_alarms_per_day=false_alarms_per_day, progress=console)
        target = write_thresholds(cfg, result, config_path=config, out=out)
        for name, cal in result.items():
            console.print(
                f"{name}: {cal.windows} windows, threshold {cal.threshold:.4f} "
                f"(gamma fit {cal.gamma_threshold:.4f}, max seen {cal.max_score:.4f})",
                highlight=False,
            )
        console.print(f"thresholds written to {target}")
