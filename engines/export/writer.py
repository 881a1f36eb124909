"""``export_run``: a run directory -> a bundle, assembled in a staging folder and moved into place.

The reference embeddings and the thresholds in a bundle always belong to the exported weights:
the run's own files (made with ``model_best.pt`` by ``train``) are copied when their recorded
weights fingerprint matches the exported checkpoint, and recomputed from the training data
otherwise (``--checkpoint last`` after a run whose last epoch was not the kept one). Embeddings
of other weights would put every window far from its references: false alarms everywhere.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args

import numpy as np

from edge_asd import __version__ as EDGE_ASD_VERSION
from edge_asd.core.constants import EMBEDDING_DIM, SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.core.errors import UserError
from edge_asd.core.scoring import DEFAULT_KNN_K
from engines.bundle import (
    EMBEDDINGS_DIR,
    MODEL_CPU_LOGMEL_ONNX,
    MODEL_CPU_ONNX,
    MODEL_JSON,
    MODEL_ONNX,
    Bundle,
    BundleManifest,
    ModelInfo,
    OnnxInfo,
    ScoreConfig,
    ScoreMode,
    Thresholds,
    embeddings_name,
    file_entry,
    load_bundle,
    write_manifest,
)
from engines.errors import ExportError
from engines.export.graph import Precision
from engines.export.onnx_file import (
    DEFAULT_OPSET,
    LOGMEL_LOWERING,
    MAX_TRT_OPSET,
    MIN_STFT_OPSET,
    export_onnx,
)
from engines.export.run_info import (
    frontend_parameters,
    read_json,
    read_thresholds,
    summarise,
    training_figures,
)

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str], None]
"""Receives one line per export step (the CLI shows it beside a spinner)."""


def _copy_embeddings(ref_dir: Path, staging: Path, num_classes: int) -> list[str]:
    """Copy ``embeddings/class_NNN.npy`` (validated, re-saved as plain float32 arrays)."""
    written: list[str] = []
    if not (ref_dir / EMBEDDINGS_DIR).is_dir():
        return written
    for idx in range(num_classes):
        src = ref_dir / embeddings_name(idx)
        if not src.is_file():
            continue
        try:
            arr = np.load(src, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ExportError(f"cannot read {src} ({err}): re-run the training's embedding step") from err
        if arr.ndim != 2 or arr.shape[1] != EMBEDDING_DIM or arr.shape[0] == 0 or not np.all(np.isfinite(arr)):
            raise ExportError(f"{src} has shape {arr.shape} or non-finite values; expected float32 (N, {EMBEDDING_DIM})")
        dst = staging / embeddings_name(idx)
        dst.parent.mkdir(parents=True, exist_ok=True)
        np.save(dst, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        written.append(embeddings_name(idx))
    return written


def _references(run_dir: Path, which: str, work: Path, data: Sequence[str | Path] | None, say: ProgressFn) -> Path:
    """The folder whose embeddings and thresholds belong to the ``which`` weights (see module doc)."""
    from trainer.references import references_for

    say(f"checking that the run's references were made with model_{which}.pt")
    try:
        ref_dir = references_for(run_dir, which, work, roots=data, progress=False)
    except UserError as err:
        raise ExportError(
            f"{err}. Pass the training data with --data DIR, or export --checkpoint best"
        ) from err
    if ref_dir != run_dir:
        say(f"recomputed the knn references and thresholds with model_{which}.pt")
    return ref_dir


def _score_mode(score: str | None, thresholds: Thresholds | None, run_dir: Path) -> tuple[str, str | None]:
    """The bundle's score mode and a note for the manifest when the thresholds do not fit it."""
    mode = score or (thresholds.score if thresholds is not None else "ce")
    if mode not in get_args(ScoreMode):
        raise ExportError(f"score mode must be one of {', '.join(get_args(ScoreMode))}, got {mode!r}")
    note = None
    if thresholds is None:
        note = (
            f"{run_dir}/thresholds.json was absent at export: the bundle carries no thresholds; "
            "give each stream a threshold in the device config, or run `edge-asd calibrate-run` and export again"
        )
        logger.warning("%s", note)
    elif thresholds.score != mode:
        note = f"thresholds were calibrated for the {thresholds.score} score, not {mode}: calibrate again for {mode}"
        logger.warning("%s", note)
    return mode, note


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    precision: Precision = "fp16",
    opset: int = DEFAULT_OPSET,
    which: str = "best",
    score: str | None = None,
    data: Sequence[str | Path] | None = None,
    progress: ProgressFn | None = None,
) -> Bundle:
    """Export a run directory into a bundle; returns the loaded (verified) bundle.

    ``data``: the training data folders, needed only when the references must be recomputed
    for the exported weights (default: the roots recorded in the run's ``config.json``). The
    bundle is assembled in a temporary sibling directory and moved into place at the end, so
    an interrupted export never leaves a directory that looks like a bundle.
    """
    from trainer.checkpoint import load_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    say = progress or (lambda msg: logger.info("%s", msg))
    if not 9 <= opset <= MAX_TRT_OPSET:
        raise ExportError(f"opset {opset} is outside what TensorRT 10.3 parses (9..{MAX_TRT_OPSET})")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MODEL_JSON).is_file():
        raise ExportError(f"{out_dir} exists and is not a bundle: choose an empty or new directory")
    say(f"loading run {run_dir} ({which})")
    model, run_config = load_model(run_dir, which=which)
    model.eval()
    classes = [str(c) for c in run_config.get("classes", [])]
    num_classes = int(model.config.num_classes)
    if len(classes) != num_classes:
        raise ExportError(f"{run_dir}/config.json lists {len(classes)} classes but the model has {num_classes}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="edge-asd-export-refs-") as work:
            ref_dir = _references(run_dir, which, Path(work), data, say)
            thresholds = read_thresholds(ref_dir, classes)
            mode, note = _score_mode(score, thresholds, run_dir)
            embedded = _copy_embeddings(ref_dir, staging, num_classes)
        if mode != "ce" and len(embedded) != num_classes:
            raise ExportError(
                f"score mode {mode} needs {run_dir}/embeddings/class_NNN.npy for all {num_classes} classes "
                f"(found {len(embedded)}): run the training's embedding step or export with --score ce"
            )
        say(f"exporting {MODEL_ONNX} ({precision}, DFT-as-conv front end, opset {opset})")
        export_onnx(model, staging / MODEL_ONNX, precision=precision, lowering="conv", opset=opset)
        cpu_opset = max(opset, MIN_STFT_OPSET)
        say(f"exporting {MODEL_CPU_ONNX} (fp32, STFT front end, opset {cpu_opset})")
        export_onnx(
            model, staging / MODEL_CPU_ONNX, precision="fp32", lowering="stft", opset=cpu_opset, decompose_prelu=True
        )
        say(f"exporting {MODEL_CPU_LOGMEL_ONNX} (fp32, log-mel input for the streaming front end, opset {cpu_opset})")
        export_onnx(
            model, staging / MODEL_CPU_LOGMEL_ONNX, precision="fp32", lowering=LOGMEL_LOWERING, opset=cpu_opset,
            decompose_prelu=True,
        )
        graphs = (MODEL_ONNX, MODEL_CPU_ONNX, MODEL_CPU_LOGMEL_ONNX)
        files = {rel: file_entry(staging / rel) for rel in (*graphs, *embedded)}
        knn_k = int((thresholds.knn_k if thresholds is not None and thresholds.knn_k else None) or DEFAULT_KNN_K)
        write_manifest(staging, _manifest(run_dir, run_config, model, which, mode, knn_k, thresholds, note,
                                          ref_dir != run_dir, precision, opset, cpu_opset, files))
        load_bundle(staging)  # the bundle we hand out must pass the device's own checks
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"bundle written to {out_dir}")
    return load_bundle(out_dir)


def _manifest(
    run_dir: Path,
    run_config: dict,
    model: Any,
    which: str,
    mode: str,
    knn_k: int,
    thresholds: Thresholds | None,
    note: str | None,
    recomputed: bool,
    precision: Precision,
    opset: int,
    cpu_opset: int,
    files: dict,
) -> BundleManifest:
    """``model.json``: classes, front end, model, score, thresholds, training figures, files."""
    report = read_json(run_dir / "report.json")
    training = {
        "run": str(run_dir.resolve()),
        "checkpoint": which,
        "references": f"recomputed with model_{which}.pt at export" if recomputed else "the run's",
        **training_figures(run_dir),
    }
    return BundleManifest(
        edge_asd_version=EDGE_ASD_VERSION,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        classes=[str(c) for c in run_config.get("classes", [])],
        sample_rate=SAMPLE_RATE,
        window_samples=WINDOW_SAMPLES,
        frontend=frontend_parameters(),
        model=ModelInfo(
            arch=model.config.arch,
            num_classes=int(model.config.num_classes),
            s=float(model.config.s),
            m=float(model.config.m),
            loss=str(run_config.get("loss", "noisy-arcmix")),
        ),
        score=ScoreConfig(mode=mode, knn_k=knn_k),  # type: ignore[arg-type]
        thresholds=thresholds,
        thresholds_note=note,
        training=training,
        evaluation=summarise(report) if isinstance(report, dict) else None,
        onnx=OnnxInfo(opset=opset, precision=precision, cpu_opset=cpu_opset),
        files=files,
    )


__all__ = ["ProgressFn", "export_run"]
