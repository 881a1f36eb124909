"""``edge-asd version`` and ``edge-asd info BUNDLE``.

``info`` answers what an installer or a technician asks before writing a config: which class
names may go into ``streams[].classes``, which score and thresholds the bundle brings, whether
it was copied completely (every file is checked against its sha256), which TensorRT engines
were built for it, and which runtimes (``runtime: {type: ...}``) can run on this machine, with
the reason for those that cannot. A missing or corrupt bundle is one line and exit code 2.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any

import typer

from edge_asd import __version__
from edge_asd.cli.output import console

logger = logging.getLogger(__name__)


def _engines(bundle: Any) -> list[dict[str, Any]]:
    """The TensorRT plans under ``BUNDLE/engines/``, and whether each can run here."""
    from engines.build import ENGINE_JSON, PLAN_NAME, current_device, read_engine_json, stale_reason
    from engines.bundle import MODEL_ONNX
    from engines.runtime import backend_status

    folder = bundle.engines_dir
    if not folder.is_dir():
        return []
    device = None
    if backend_status().get("tensorrt") is None:
        try:
            device = current_device()
        except Exception as err:  # a driver that fails here must not hide the listing
            logger.warning("cannot query the GPU: %s", err)
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        plan = sub / PLAN_NAME
        meta = read_engine_json(sub / ENGINE_JSON) or {}
        entry: dict[str, Any] = {
            "dir": sub.name,
            "plan_bytes": plan.stat().st_size if plan.is_file() else None,
            **{k: meta.get(k) for k in ("tensorrt_version", "gpu_name", "compute_capability", "precision", "max_batch", "built")},
        }
        if not plan.is_file():
            entry["here"] = "no model.plan"
        elif device is None:
            entry["here"] = None  # unknown: TensorRT cannot run on this machine
        else:
            reason = stale_reason(meta or None, device, bundle.sha256(MODEL_ONNX), 1)
            entry["here"] = "usable" if reason is None else reason
        found.append(entry)
    return found


def bundle_report(path: Path) -> dict[str, Any]:
    """Everything ``info`` prints, as plain data (``--json``). Raises ``BundleError`` for a bad bundle."""
    from engines.bundle import MODEL_JSON, load_bundle
    from engines.runtime import backend_status, resolve_backend

    bundle = load_bundle(path)  # checks every file's size and sha256
    manifest = bundle.manifest
    calibration = manifest.thresholds.classes if manifest.thresholds is not None else {}
    classes = []
    for index, name in enumerate(manifest.classes):
        cal = calibration.get(name)
        classes.append({
            "index": index,
            "name": name,
            "threshold": None if cal is None else cal.threshold,
            "normal_clips": None if cal is None else cal.n,
        })
    files = [{"path": MODEL_JSON, "bytes": (bundle.path / MODEL_JSON).stat().st_size}]
    files += [{"path": rel, "bytes": entry.bytes} for rel, entry in sorted(manifest.files.items())]
    status = backend_status()
    if status.get("torch") is None:
        from engines.errors import BundleError
        from engines.runtime.torch_entry import resolve_run_dir

        try:
            resolve_run_dir(bundle.path)
        except BundleError as err:  # torch runs the training run, which stays on the workstation
            status["torch"] = f"the training run is not on this machine ({err})"
    return {
        "bundle": str(bundle.path),
        "edge_asd_version": manifest.edge_asd_version,
        "created": manifest.created,
        "model": {"arch": manifest.model.arch, "num_classes": manifest.model.num_classes,
                  "precision": manifest.onnx.precision, "opset": manifest.onnx.opset},
        "score": {
            "mode": manifest.score.mode,
            "knn_k": manifest.score.knn_k,
            "false_alarm_rate": None if manifest.thresholds is None else manifest.thresholds.false_alarm_rate,
        },
        "thresholds_note": manifest.thresholds_note,
        "classes": classes,
        "files": files,
        "engines": _engines(bundle),
        "runtimes": {name: {"available": reason is None, "reason": reason} for name, reason in status.items()},
        "auto": resolve_backend("auto"),
    }


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:.1f} MiB"


def print_report(report: dict[str, Any]) -> None:
    """The report as tables on stdout."""
    from rich.markup import escape
    from rich.table import Table

    score = report["score"]
    console.print(
        f"bundle [bold]{escape(report['bundle'])}[/]: {report['model']['arch']}, {report['model']['num_classes']} classes, "
        f"{report['model']['precision']} model.onnx, exported by edge-asd {report['edge_asd_version']} on {report['created']}",
        highlight=False,
    )
    rate = f", false-alarm rate {score['false_alarm_rate']:g} per window" if score["false_alarm_rate"] is not None else ""
    knn = f" (k={score['knn_k']})" if score["mode"] != "ce" else ""
    console.print(f"score mode: {score['mode']}{knn}{rate}", highlight=False)
    if report["thresholds_note"]:
        console.print(f"[yellow]note:[/] {escape(report['thresholds_note'])}")

    classes = Table(title="classes (use these names in streams[].classes)", title_justify="left")
    for col in ("#", "class", "threshold", "normal clips"):
        classes.add_column(col, justify="right" if col != "class" else "left")
    for c in report["classes"]:
        thr = "-" if c["threshold"] is None else f"{c['threshold']:.4g}"
        n = "-" if c["normal_clips"] is None else str(c["normal_clips"])
        classes.add_row(str(c["index"]), escape(c["name"]), thr, n)
    console.print(classes)

    files = Table(title="files (sizes and sha256 checked)", title_justify="left")
    files.add_column("file")
    files.add_column("size", justify="right")
    for f in report["files"]:
        files.add_row(escape(f["path"]), _size(f["bytes"]))
    console.print(files)

    if report["engines"]:
        engines = Table(title="TensorRT engines built (engines/)", title_justify="left")
        for col in ("engine", "TensorRT", "GPU", "sm", "precision", "max batch", "plan", "here"):
            engines.add_column(col)
        for e in report["engines"]:
            engines.add_row(
                escape(e["dir"]), str(e["tensorrt_version"] or "-"), escape(str(e["gpu_name"] or "-")),
                str(e["compute_capability"] or "-"), str(e["precision"] or "-"), str(e["max_batch"] or "-"),
                _size(e["plan_bytes"]), escape(e["here"] or "TensorRT cannot run here"),
            )
        console.print(engines)
    else:
        console.print("TensorRT engines: none built (`edge-asd build-engine BUNDLE` on the Jetson)")

    console.print("runtimes on this machine (config `runtime: {type: ...}`):")
    for name, state in report["runtimes"].items():
        mark = "[green]yes[/]" if state["available"] else "[red]no[/]"
        why = "" if state["available"] else f": {escape(state['reason'])}"
        console.print(f"  {name:<12} {mark}{why}", highlight=False)
    console.print(f"  {'auto':<12} -> {report['auto']}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print the edge-asd version and the Python it runs on."""
        console.print(f"edge-asd {__version__} (Python {platform.python_version()})")

    @app.command("info")
    def info(
        bundle: Path = typer.Argument(..., help="Bundle directory (from `edge-asd export`)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
    ) -> None:
        """Show a bundle: classes, score mode, thresholds, files, engines built, runtimes usable here."""
        report = bundle_report(bundle)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        print_report(report)
