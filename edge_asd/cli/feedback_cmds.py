"""``edge-asd feedback`` (an operator's verdict on an event) and ``edge-asd labels export``.

``feedback`` sends the verdict the way the console does, as ``<stream>/feedback/set`` to the
running daemon over the config's broker, and prints the daemon's answer (the new threshold
after ``normal``). With ``--local`` it applies the verdict directly to the state directory,
for a node whose daemon is stopped (the daemon reads the enrolment at its next start).
``labels export`` writes every clip an operator labelled as a data folder that ``train``,
``evaluate`` and ``evaluate-site`` read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from edge_asd.cli.output import console

LABELS = ("normal", "anomaly")


def _fail(message: str) -> Exception:
    from edge_asd.core.errors import UserError

    return UserError(message)


def _send_over_mqtt(cfg: object, stream: str, event: str, label: str, by: str, wait_s: float) -> dict:
    """Publish the feedback command and wait for the daemon's ``feedback/result`` for it."""
    from edge_asd.comms.topics import Topics
    from edge_asd.comms.watcher import Watcher

    mqtt = cfg.mqtt  # type: ignore[attr-defined]
    topics = Topics(mqtt.prefix, cfg.node_id)  # type: ignore[attr-defined]
    watcher = Watcher(mqtt)
    watcher.start()
    try:
        deadline = time.monotonic() + wait_s
        body = json.dumps({"event": event, "label": label, "by": by})
        # The node's retained state arriving means the subscription to <prefix>/# is in place,
        # so the daemon's answer cannot be missed.
        watcher.get(min(5.0, wait_s))
        watcher.client.publish(topics.stream(stream, "feedback/set"), body, qos=1)
        while time.monotonic() < deadline:
            msg = watcher.get(deadline - time.monotonic())
            if msg is None or msg.topic != topics.feedback_result(stream):
                continue
            result = msg.parsed()
            if isinstance(result, dict) and result.get("event") == event:
                return result
    finally:
        watcher.stop()
    raise _fail(
        f"no answer from node {cfg.node_id} within {wait_s:g} s: is `edge-asd listen` running there with "  # type: ignore[attr-defined]
        f"stream {stream}? (--local applies the feedback to a stopped node's state directory)"
    )


def _apply_locally(cfg: object, stream: str, event: str, label: str, by: str) -> dict:
    """Apply the verdict to the state directory of a stopped daemon, as the daemon would."""
    from edge_asd.daemon.site import StreamSite
    from edge_asd.evidence import EvidenceStore
    from edge_asd.site.storage import bundle_sha
    from engines.bundle import load_bundle

    streams = {s.name: s for s in cfg.streams}  # type: ignore[attr-defined]
    if stream not in streams:
        raise _fail(f"stream {stream!r} is not in the config (its streams: {', '.join(streams) or 'none'})")
    if cfg.bundle is None:  # type: ignore[attr-defined]
        raise _fail("the config names no bundle: set `bundle:`")
    bundle = load_bundle(cfg.bundle)  # type: ignore[attr-defined]
    site = StreamSite(
        stream, state_dir=cfg.state_dir, bundle=bundle, bundle_sha=bundle_sha(bundle),  # type: ignore[attr-defined]
        class_names=list(streams[stream].classes), hop_s=cfg.hop_s,  # type: ignore[attr-defined]
        false_alarms_per_day=cfg.site.false_alarms_per_day,  # type: ignore[attr-defined]
    )  # fmt: skip
    evidence = EvidenceStore(Path(cfg.state_dir) / "evidence").wav_path(stream, event)  # type: ignore[attr-defined]
    return site.feedback(event, label, str(evidence), by).to_dict()


def register(app: typer.Typer) -> None:
    @app.command("feedback")
    def feedback(
        config: Path = typer.Option(..., "--config", "-c", help="The node's daemon config (broker, node id, state dir)."),
        stream: str = typer.Option(..., "--stream", help="Stream the event belongs to."),
        event: str = typer.Option(..., "--event", help="Event id (from the event payload, `watch` or the console)."),
        label: str = typer.Option(..., "--label", help="normal (a false alarm: learn it) | anomaly (confirm and keep it)"),
        by: str = typer.Option("cli", "--by", help="Who gives the verdict (kept in the log)."),
        local: bool = typer.Option(False, "--local", help="Apply to the state directory of a stopped daemon."),
        wait: float = typer.Option(15.0, "--wait", min=1.0, help="Seconds to wait for the daemon's answer."),
    ) -> None:
        """Tell a node that an event was a false alarm (normal) or a real anomaly."""
        from edge_asd.config import load_config

        if label not in LABELS:
            raise _fail(f"--label {label!r}: give normal (a false alarm) or anomaly (a real fault)")
        cfg = load_config(config)
        if local:
            result = _apply_locally(cfg, stream, event, label, by)
        else:
            if cfg.mqtt is None:
                raise _fail(f"{config} has no mqtt: section: use --local on the node itself")
            result = _send_over_mqtt(cfg, stream, event, label, by, wait)
        if not result.get("ok"):
            raise _fail(f"feedback not applied: {result.get('message')}")
        threshold = result.get("threshold")
        extra = f"; threshold now {threshold:.4g}" if isinstance(threshold, (int, float)) else ""
        console.print(f"[green]{stream}: {result.get('message')}{extra}[/]")

    labels_app = typer.Typer(help="Clips operators labelled through feedback.", no_args_is_help=True)
    app.add_typer(labels_app, name="labels")

    @labels_app.command("export")
    def labels_export(
        out: Path = typer.Argument(..., help="Folder to write (a data folder for train / evaluate / evaluate-site)."),
        config: Path | None = typer.Option(None, "--config", "-c", help="Take the state directory from this config."),
        state_dir: Path | None = typer.Option(None, "--state-dir", help="State directory of the node."),
    ) -> None:
        """Copy every labelled clip into OUT (per stream: normal/ and anomaly/, plus manifest.csv)."""
        from edge_asd.config import default_state_dir, load_config
        from edge_asd.site.store import export_labels

        root = state_dir or (load_config(config).state_dir if config is not None else default_state_dir())
        result = export_labels(root, out)
        if result.total == 0:
            raise _fail(f"no labelled clips under {root}/labels: label events first (edge-asd feedback)")
        console.print(f"[green]{result.total} labelled clip(s) written to {out}[/]")
