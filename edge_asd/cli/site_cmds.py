"""``edge-asd enrol`` and ``edge-asd evaluate-site``: learn a stream's normal from its own audio.

``enrol`` measures a stream's normal from a WAV, a folder of clips, or the stream's configured
source (live device, file or synth, through the capture path ``listen`` uses), fits the
enrolment (``edge_asd.core.site``: hold-out, components, max-surprise fusion, threshold) and
stores it under ``<state_dir>/enrolment/<stream>/`` with the bundle's sha and the audio's
provenance. ``evaluate-site`` enrols from a folder of normal clips and reports AUC/pAUC per
component and fused on a labelled test folder. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edge_asd.cli.output import console, error_console

if TYPE_CHECKING:
    from edge_asd.core.site.enrolment import Enrolment

logger = logging.getLogger(__name__)

_BUNDLE = typer.Option(None, "--bundle", help="Model bundle folder (default: the config's `bundle:`).")
_CLASS = typer.Option(
    None, "--class", help="Bundle class(es) of the machine, for the ce component (repeatable; default: none)."
)
_BACKEND = typer.Option("auto", "--backend", help="auto | tensorrt | onnxruntime")
_FAPD = typer.Option(
    None, "--false-alarms-per-day", min=1e-6,
    help="Target windows over the threshold per day of normal operation (default 1).",
)  # fmt: skip
_HOP = typer.Option(None, "--hop", min=0.1, max=10.0, help="Seconds between two enrolment windows (default: config's hop_s, else 1).")


def _user_error(message: str) -> Exception:
    from edge_asd.core.errors import UserError

    return UserError(message)


def _class_indices(bundle: Any, names: list[str] | None, where: str) -> list[int]:
    indices = []
    for name in names or []:
        if name not in bundle.classes:
            shown = ", ".join(bundle.classes[:20]) + (" ..." if len(bundle.classes) > 20 else "")
            raise _user_error(f"{where}: class {name!r} is not in the bundle {bundle.path} (its classes: {shown})")
        indices.append(bundle.classes.index(name))
    return indices


def _print_enrolment(stream: str, enrolment: Enrolment, path: Path | None) -> None:
    from rich.table import Table

    s = enrolment.summary()
    src = enrolment.meta.get("source") or {}
    console.print(
        f"[bold]{stream}[/]: {s['windows']} windows from {src.get('minutes', 0):.1f} min of {src.get('kind', '?')} audio "
        f"({s['segments']} segment(s), {s['folds']} folds); threshold [bold]{s['threshold']:.3f}[/] "
        f"({s['threshold_method']}, false-alarm rate {s['false_alarm_rate']:.3g} per window)",
        highlight=False,
    )
    console.print(f"hold-out: {s['holdout_rule']}", highlight=False, style="dim")
    console.print(f"fusion: {s['fusion']}", highlight=False, style="dim")
    table = Table(title=f"{stream}: components (out-of-fold normal scores)")
    for col in ("component", "fit", "median", "p99", "max"):
        table.add_column(col, justify="left" if col in ("component", "fit") else "right")
    for name, comp in s["components"].items():
        table.add_row(name, comp["method"], f"{comp['median']:.4g}", f"{comp['p99']:.4g}", f"{comp['max']:.4g}")
    console.print(table)
    if path is not None:
        console.print(f"enrolment stored in {path}", highlight=False)


def _with_feedback(enrolment: Any, state_dir: Path, stream: str, bundle: Any, forget: bool) -> Any:
    """The new enrolment plus what operators taught the stream's previous one (same bundle)."""
    from edge_asd.site.enrol import keep_feedback
    from edge_asd.site.storage import bundle_sha, stored_enrolment

    if forget:
        return enrolment
    previous = stored_enrolment(state_dir, stream, bundle_sha(bundle))
    kept = keep_feedback(enrolment, previous)
    if previous is not None and kept is not enrolment:
        console.print(f"{stream}: kept the {len(previous.exemplars)} windows operators taught as normal "
                      "(--forget-feedback drops them)", highlight=False)  # fmt: skip
    return kept


def _enrol_files(
    paths: list[Path], kind: str, stream: str, bundle: Any, class_names: list[str] | None, backend: str,
    far: float, hop_s: float, minutes: float | None, state_dir: Path, forget_feedback: bool = False,
) -> None:  # fmt: skip
    from edge_asd.site.enrol import enrol_files
    from edge_asd.site.storage import check_stream_name, save_stream_enrolment
    from engines.runtime import open_runtime

    check_stream_name(stream)
    indices = _class_indices(bundle, class_names, "--class")
    with open_runtime(bundle, backend=backend, max_batch=8) as runtime, console.status(f"enrolling {stream}"):
        enrolment = enrol_files(
            paths, bundle, runtime, stream=stream, kind=kind, false_alarm_rate=far, class_indices=indices,
            hop_s=hop_s, max_minutes=minutes,
        )  # fmt: skip
    enrolment = _with_feedback(enrolment, state_dir, stream, bundle, forget_feedback)
    path = save_stream_enrolment(enrolment, state_dir, stream)
    _print_enrolment(stream, enrolment, path)


def _enrol_config(
    config: Path, stream: str | None, bundle_dir: Path | None, backend: str | None, fapd: float,
    hop: float | None, minutes: float, state_dir: Path | None, forget_feedback: bool = False,
) -> None:  # fmt: skip
    """Enrol the configured streams (or one) from their sources through the capture path."""
    from edge_asd.audio.capture import Capture
    from edge_asd.config import load_config
    from edge_asd.core.site.enrolment import false_alarm_rate_for
    from edge_asd.daemon.listen import make_source
    from edge_asd.site.capture import capture_segments
    from edge_asd.site.enrol import enrol_features, provenance
    from edge_asd.site.features import extract
    from edge_asd.site.storage import save_stream_enrolment
    from engines.bundle import load_bundle
    from engines.runtime import open_runtime

    cfg = load_config(config)
    streams = [s for s in cfg.streams if stream is None or s.name == stream]
    if not streams:
        raise _user_error(
            f"stream {stream!r} is not in {config} (streams: {', '.join(s.name for s in cfg.streams)}): check --stream"
        )
    bundle_path = bundle_dir or cfg.bundle
    if bundle_path is None:
        raise _user_error(f"no model bundle: pass --bundle DIR or set `bundle:` in {config}")
    bundle = load_bundle(bundle_path)
    hop_s = float(hop or cfg.hop_s)
    far = false_alarm_rate_for(fapd, hop_s)
    state = Path(state_dir) if state_dir is not None else Path(cfg.state_dir)
    sources = {s.name: s for s in cfg.sources}
    by_source: dict[str, list[Any]] = {}
    for sc in streams:
        by_source.setdefault(sc.source, []).append(sc)
    with open_runtime(bundle, backend=backend or "auto", max_batch=8) as runtime:
        for source_name, members in by_source.items():
            src_cfg = sources[source_name]
            if src_cfg.type == "file":  # as fast as the engine goes, once through
                src_cfg = src_cfg.model_copy(update={"realtime": False, "loop": False})
            channels = sorted({sc.channel for sc in members})
            source = make_source(src_cfg, max(channels) + 1)
            if src_cfg.type == "synth":
                source.realtime = False  # type: ignore[attr-defined]
            capture = Capture(source, channels=channels)
            console.print(
                f"capturing {minutes:g} min from {source.name} for {', '.join(s.name for s in members)}",
                highlight=False,
            )
            try:
                per_stream = capture_segments(
                    capture, seconds=minutes * 60.0, stream_indices=[channels.index(sc.channel) for sc in members],
                    labels=[sc.name for sc in members],
                    progress=lambda sec: error_console.print(f"  {sec / 60:.1f} / {minutes:g} min", highlight=False),
                )  # fmt: skip
            finally:
                capture.stop()
            for sc, segments in zip(members, per_stream):
                names = list(getattr(sc, "classes", None) or [])
                indices = _class_indices(bundle, names, f"stream {sc.name}")
                features = extract(segments, runtime, hop_s=hop_s, class_indices=indices)
                kind = {"device": "device", "file": "file", "synth": "synth"}.get(src_cfg.type, str(src_cfg.type))
                prov = provenance(
                    kind, features, paths=[Path(src_cfg.path)] if src_cfg.type == "file" else [],
                    device=str(getattr(src_cfg, "device", None)) if src_cfg.type == "device" else None,
                    source=source_name, channel=sc.channel,
                )  # fmt: skip
                enrolment = enrol_features(
                    features, bundle, stream=sc.name, false_alarm_rate=far, source=prov, class_names=names,
                    hop_s=hop_s,
                )  # fmt: skip
                enrolment = _with_feedback(enrolment, state, sc.name, bundle, forget_feedback)
                path = save_stream_enrolment(enrolment, state, sc.name)
                _print_enrolment(sc.name, enrolment, path)


def register(app: typer.Typer) -> None:
    @app.command("enrol")
    def enrol(
        bundle: Path | None = _BUNDLE,
        wav: list[Path] | None = typer.Option(None, "--wav", help="A recording of normal operation (repeatable)."),
        folder: Path | None = typer.Option(None, "--folder", help="A folder of normal clips (walked recursively)."),
        config: Path | None = typer.Option(None, "--config", "-c", help="Enrol the config's streams from their sources."),
        stream: str | None = typer.Option(
            None, "--stream", help="Stream name (default: the WAV's or folder's name; with --config: every stream)."
        ),
        minutes: float | None = typer.Option(
            None, "--minutes", min=0.1, help="Minutes of audio to use (--config: to capture, default 10; files: all)."
        ),
        state_dir: Path | None = typer.Option(
            None, "--state-dir", help="State directory (default: the config's, else $STATE_DIRECTORY or /var/lib/edge-asd)."
        ),
        false_alarms_per_day: float | None = _FAPD,
        classes: list[str] | None = _CLASS,
        hop: float | None = _HOP,
        backend: str | None = typer.Option(None, "--backend", help="auto | tensorrt | onnxruntime (default auto)"),
        forget_feedback: bool = typer.Option(
            False, "--forget-feedback",
            help="Drop what operators taught the stream's previous enrolment (events marked normal); kept by default.",
        ),
    ) -> None:
        """Learn a stream's normal sound from its own audio (indicators, embeddings, threshold).

        A re-enrolment keeps the false alarms operators already marked normal, unless
        --forget-feedback."""
        from edge_asd.config import default_state_dir, sanitize_id
        from edge_asd.core.site.enrolment import DEFAULT_FALSE_ALARMS_PER_DAY, false_alarm_rate_for
        from edge_asd.site.enrol import normal_files
        from engines.bundle import load_bundle

        given = [name for name, value in (("--wav", wav), ("--folder", folder), ("--config", config)) if value]
        if len(given) != 1:
            raise _user_error("give exactly one audio source: --wav FILE, --folder DIR or --config FILE")
        fapd = false_alarms_per_day or DEFAULT_FALSE_ALARMS_PER_DAY
        if config is not None:
            if classes:
                raise _user_error("--class is taken from the config's streams with --config; set `classes:` there")
            _enrol_config(config, stream, bundle, backend, fapd, hop, minutes or 10.0, state_dir, forget_feedback)
            return
        if bundle is None:
            raise _user_error("no model bundle: pass --bundle DIR (made by `edge-asd export`)")
        hop_s = float(hop or 1.0)
        if wav:
            for path in wav:
                if not path.is_file():
                    raise _user_error(f"audio file {path} does not exist: check the path")
            paths, kind = list(wav), "wav"
            name = stream or sanitize_id(wav[0].stem)
        else:
            assert folder is not None
            if not folder.is_dir():
                raise _user_error(f"folder {folder} does not exist: check the path")
            paths, kind = normal_files(folder), "folder"
            name = stream or sanitize_id(folder.resolve().name)
        _enrol_files(
            paths, kind, name, load_bundle(bundle), classes, backend or "auto", false_alarm_rate_for(fapd, hop_s),
            hop_s, minutes, state_dir or default_state_dir(), forget_feedback,
        )  # fmt: skip

    @app.command("evaluate-site")
    def evaluate_site_cmd(
        normal_dir: Path = typer.Argument(..., help="Folder of normal clips of the site (enrolment audio)."),
        test_dir: Path = typer.Argument(..., help="Folder of labelled test clips (DCASE names or normal/ anomaly/)."),
        bundle: Path = typer.Option(..., "--bundle", help="Model bundle folder."),
        out: Path = typer.Option(..., "--out", help="Folder for report.json and the enrolment."),
        classes: list[str] | None = _CLASS,
        backend: str = _BACKEND,
        false_alarms_per_day: float | None = _FAPD,
        hop: float | None = _HOP,
        as_json: bool = typer.Option(False, "--json", help="Print report.json instead of the table."),
    ) -> None:
        """Enrol from a site's normal clips and report AUC/pAUC per component and fused on test clips."""
        from rich.table import Table

        from edge_asd.core.site.enrolment import DEFAULT_FALSE_ALARMS_PER_DAY, false_alarm_rate_for
        from edge_asd.site.evaluate import REPORT, evaluate_site
        from engines.bundle import load_bundle
        from engines.runtime import open_runtime

        for label, path in (("NORMAL_DIR", normal_dir), ("TEST_DIR", test_dir)):
            if not path.is_dir():
                raise _user_error(f"{label} {path} is not a folder: check the path")
        loaded = load_bundle(bundle)
        indices = _class_indices(loaded, classes, "--class")
        hop_s = float(hop or 1.0)
        far = false_alarm_rate_for(false_alarms_per_day or DEFAULT_FALSE_ALARMS_PER_DAY, hop_s)
        status = console.status(f"enrolling from {normal_dir}, scoring {test_dir}")
        with open_runtime(loaded, backend=backend, max_batch=8) as runtime, status:
            report = evaluate_site(
                normal_dir, test_dir, loaded, runtime, out_dir=out, class_indices=indices or None,
                false_alarm_rate=far, hop_s=hop_s,
            )  # fmt: skip
        doc = report.to_dict()
        if as_json:
            typer.echo(json.dumps(doc, indent=2))
            return
        counts = doc["test_clips"]
        table = Table(
            title=f"site evaluation: {doc['normal_clips']} normal clips enrolled, "
            f"{counts['normal']} normal + {counts['anomaly']} anomalous test clips"
        )
        for col in ("score", "AUC", "pAUC (0.1)"):
            table.add_column(col, justify="left" if col == "score" else "right")
        table.add_row("[bold]fused[/]", f"[bold]{doc['fused']['auc']:.3f}[/]", f"[bold]{doc['fused']['pauc']:.3f}[/]")
        for name, m in doc["components"].items():
            table.add_row(name, f"{m['auc']:.3f}", f"{m['pauc']:.3f}")
        console.print(table)
        console.print(f"clip score: {doc['pooling']}", highlight=False, style="dim")
        console.print(f"report: {out / REPORT}", highlight=False)


__all__ = ["register"]
