"""``export``, ``build-engine`` and ``score``: from a trained run to verdicts on WAV files.

Heavy modules (torch for the export, TensorRT, onnxruntime) are imported inside the commands
so ``edge-asd --help`` works on a Jetson without them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from edge_asd.cli.output import console
from edge_asd.config.runtime import TensorRTRuntimeConfig
from engines.export.onnx_file import DEFAULT_OPSET, MAX_TRT_OPSET  # torch-free: for the option defaults

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}


def collect_audio(paths: list[Path]) -> list[Path]:
    """Files as given, directories walked recursively for sound files (sorted, deduplicated)."""
    from edge_asd.core.errors import UserError

    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist: give WAV files or directories holding them")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError(f"no sound files ({', '.join(sorted(AUDIO_SUFFIXES))}) found in {', '.join(map(str, paths))}")
    return unique


def _score_site(
    bundle_dir: Path, files: list[Path], stream: str, state_dir: Path | None, class_names: list[str],
    backend: str, as_json: bool,
) -> None:
    """``score --stream``: the enrolled stream's fused score of every file."""
    from rich.table import Table

    from edge_asd.config import default_state_dir
    from edge_asd.core import jsonsafe
    from edge_asd.site.evaluate import score_clips
    from edge_asd.site.storage import bundle_sha, load_stream_enrolment
    from engines.bundle import load_bundle
    from engines.runtime import open_runtime

    bundle = load_bundle(bundle_dir)
    enrolment = load_stream_enrolment(state_dir or default_state_dir(), stream, bundle_sha(bundle))
    class_names = class_names or list(enrolment.meta.get("classes") or [])  # the classes it was enrolled with
    classes = [bundle.class_index(name) for name in class_names] or None
    with open_runtime(bundle, backend=backend) as runtime:
        results = score_clips(enrolment, [(f, 0) for f in files], runtime, class_indices=classes)
    for r in results:
        r.pop("label", None)
    if as_json:
        typer.echo(jsonsafe.dumps({"bundle": str(bundle_dir), "stream": stream, "threshold": enrolment.threshold,
                                   "results": results}, indent=2))  # fmt: skip
        return
    table = Table(title=f"{len(results)} files, fused site score of {stream} (threshold {enrolment.threshold:.3f})")
    for col in ("file", "score", "verdict", "what moved"):
        table.add_column(col, overflow="fold")
    for r in results:
        verdict = "ANOMALY" if r["anomalous"] else "normal"
        table.add_row("/".join(Path(r["file"]).parts[-2:]), f"{r['fused']:.3f}", verdict,
                      r["explanation"] if r["anomalous"] else "", style="bold red" if r["anomalous"] else None)  # fmt: skip
    console.print(table)


def score_files(
    bundle_dir: Path,
    files: list[Path],
    class_names: list[str] | None = None,
    backend: str = "auto",
    max_batch: int = 8,
) -> list[dict]:
    """Score each file (first 10 s) and return one result dict per file."""
    import numpy as np

    from edge_asd.core.audio_io import fit_length, read_audio
    from engines.bundle import load_bundle
    from engines.runtime import open_runtime
    from engines.scorer import Scorer, classes_for_file

    bundle = load_bundle(bundle_dir)
    scorer = Scorer(bundle)
    fixed = [bundle.class_index(name) for name in class_names] if class_names else None
    results: list[dict] = []
    with open_runtime(bundle, backend=backend, max_batch=max_batch) as runtime:
        for lo in range(0, len(files), max_batch):
            chunk = files[lo : lo + max_batch]
            audio = np.stack([fit_length(read_audio(f), bundle.manifest.window_samples) for f in chunk])
            rows = [fixed or classes_for_file(f, bundle.classes) for f in chunk]
            out = runtime.infer(audio)
            for path, candidates, row in zip(chunk, rows, scorer.score_rows(out, rows)):
                verdict = "unknown" if row.anomalous is None else ("ANOMALY" if row.anomalous else "normal")
                results.append(
                    {
                        "file": str(path),
                        "classes": [bundle.classes[c] for c in candidates],
                        "class": bundle.classes[row.class_index],
                        "score": row.score,
                        "threshold": row.threshold,
                        "verdict": verdict,
                        "score_mode": scorer.mode,
                        "backend": runtime.type_key,
                    }
                )
    return results


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        run: Path = typer.Argument(..., help="Training run directory (config.json, model_best.pt)."),
        out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
        precision: str = typer.Option("fp16", "--precision", help="model.onnx backbone precision: fp16 or fp32."),
        opset: int = typer.Option(DEFAULT_OPSET, "--opset", help=f"ONNX opset (TensorRT 10.3 parses 9..{MAX_TRT_OPSET})."),
        which: str = typer.Option(
            "best", "--checkpoint", help="best or last weights; the knn references and thresholds always match them."
        ),
        score: str | None = typer.Option(None, "--score", help="ce, knn or ensemble (default: thresholds.json's)."),
        data: list[Path] | None = typer.Option(
            None,
            "--data",
            help="Training data folder(s), needed only when the knn references must be recomputed for the exported "
            "weights, e.g. with --checkpoint last (default: the run's).",
        ),
    ) -> None:
        """Export a run to a bundle: model.onnx (TensorRT), model_cpu.onnx (onnxruntime), model.json, embeddings."""
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from engines.errors import ExportError
        from engines.export import export_run

        if precision not in ("fp16", "fp32"):
            raise ExportError(f"--precision must be fp16 or fp32, got {precision!r}")
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("export", total=None)
            bundle = export_run(
                run, out, precision=precision, opset=opset, which=which, score=score, data=data or None,  # type: ignore[arg-type]
                progress=lambda msg: bar.update(task, description=msg),
            )
        m = bundle.manifest
        console.print(f"bundle [bold]{out}[/]: {m.model.num_classes} classes, score {m.score.mode}, {precision} model.onnx")
        if m.thresholds_note:
            console.print(f"[yellow]note:[/] {m.thresholds_note}")

    @app.command("build-engine")
    def build_engine_cmd(
        bundle: Path = typer.Argument(..., help="Bundle directory (from `edge-asd export`)."),
        max_batch: int = typer.Option(
            TensorRTRuntimeConfig().max_batch, "--max-batch", min=1, help="Largest batch the engine accepts."
        ),
        workspace_mib: int = typer.Option(
            TensorRTRuntimeConfig().workspace_mib, "--workspace-mib", min=64, help="TensorRT builder workspace."
        ),
        no_build: bool = typer.Option(False, "--no-build", help="Only check the existing engine; never build."),
        force: bool = typer.Option(False, "--force", help="Rebuild even if the engine is current."),
    ) -> None:
        """Build (or check) the TensorRT engine of a bundle for this GPU and TensorRT version."""
        from engines.build import build_engine, read_engine_json

        files = build_engine(
            bundle,
            max_batch=max_batch,
            workspace_mib=workspace_mib,
            allow_build=not no_build,
            force=force,
            progress=lambda msg: console.print(msg),
        )
        meta = read_engine_json(files.meta) or {}
        state = "built" if files.built else "up to date"
        console.print(
            f"engine {files.plan} {state}: TensorRT {meta.get('tensorrt_version')}, {meta.get('gpu_name')} "
            f"sm {meta.get('compute_capability')}, max batch {meta.get('max_batch')}, {meta.get('precision')}"
        )

    @app.command("score")
    def score_cmd(
        bundle: Path = typer.Argument(..., help="Bundle directory."),
        wavs: list[Path] = typer.Argument(..., help="Sound files or directories (walked recursively)."),
        class_names: list[str] = typer.Option(
            None, "--class", help="Class to score against (repeatable; default: from the DCASE file name, else all)."
        ),
        backend: str = typer.Option("auto", "--backend", help="auto, tensorrt, onnxruntime or torch."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
        max_batch: int = typer.Option(8, "--max-batch", min=1),
        stream: str | None = typer.Option(
            None, "--stream", help="Score with this stream's enrolment (the fused site score `listen` uses)."
        ),
        state_dir: Path | None = typer.Option(
            None, "--state-dir", help="State directory holding the enrolment (default: $STATE_DIRECTORY or /var/lib/edge-asd)."
        ),
    ) -> None:
        """Score sound files with a bundle: per file the score, threshold and verdict (min over classes).

        With ``--stream``, the stream's enrolment scores them as ``listen`` does (the fused site
        score, the maximum over each file's 10 s windows, with the indicators that moved)."""
        from rich.table import Table

        files = collect_audio(wavs)
        if stream is not None:
            _score_site(bundle, files, stream, state_dir, class_names or [], backend, as_json)
            return
        results = score_files(bundle, files, class_names or None, backend, max_batch)
        if as_json:
            typer.echo(json.dumps({"bundle": str(bundle), "results": results}, indent=2))
            return
        table = Table(title=f"{len(results)} files, {results[0]['score_mode']} score, {results[0]['backend']}")
        table.add_column("file", overflow="fold")
        for col in ("class", "score", "threshold", "verdict"):
            table.add_column(col, justify="right" if col in ("score", "threshold") else "left", no_wrap=True)
        for r in results:
            thr = "-" if r["threshold"] is None else f"{r['threshold']:.4g}"
            style = "bold red" if r["verdict"] == "ANOMALY" else None
            short = "/".join(Path(r["file"]).parts[-3:])  # machine/split/name; --json has full paths
            table.add_row(short, r["class"], f"{r['score']:.4g}", thr, r["verdict"], style=style)
        console.print(table)
        if any(r["threshold"] is None for r in results):
            console.print("[yellow]note:[/] the bundle has no threshold for some classes: verdict 'unknown'")
