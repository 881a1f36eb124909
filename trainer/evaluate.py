"""``edge-asd evaluate``: a trained run on labelled test clips -> the DCASE evaluation table.

Per-ID AUC/pAUC, per-type mean and mAUC, and the average rows, for the ce score, the knn score
and their rank ensemble side by side. A clip's score is the minimum over its candidate classes
(``trainer.clips``). The knn score and the ensemble are computed by ``edge_asd.core.scoring``,
the same code the device runs; the references and thresholds they need come from the weights
being evaluated (``trainer.references.references_for``).

The jobs that share its inference routine live next to it: ``trainer.inference`` (running the
model), ``trainer.references`` (knn references and ``calibrate_run``); their names are
re-exported here for the callers that import them from this module.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_asd.core import scoring
from edge_asd.core.atomic import atomic_write_text
from edge_asd.core.errors import UserError
from trainer.clips import ClipRef, clip_refs, index_for_run, training_clip_sets
from trainer.config import SCORES
from trainer.inference import pick_device, prepare_model, run_model
from trainer.progress import Progress
from trainer.references import (
    THRESHOLDS_FILE,
    calibrate_run,
    knn_for,
    load_reference_embeddings,
    references_for,
    write_reference_embeddings,
)

logger = logging.getLogger(__name__)

SCORE_KINDS = SCORES


def clip_scores(
    sc: np.ndarray,
    emb: np.ndarray,
    refs_clips: Sequence[ClipRef],
    refs: dict[int, np.ndarray],
    thresholds: dict | None,
    classes: Sequence[str],
    knn_k: int,
) -> dict[str, np.ndarray]:
    """Per clip: min over candidate classes of the ce, knn and ensemble scores."""
    n = len(refs_clips)
    out = {k: np.full(n, np.nan) for k in SCORE_KINDS}
    per_class = (thresholds or {}).get("classes", {})
    for i, r in enumerate(refs_clips):
        ce_c, kn_c, en_c = [], [], []
        for c in r.candidates:
            ce_v = float(sc[i, c])
            kn_v = float(knn_for(emb[i : i + 1], c, refs, knn_k)[0])
            ce_c.append(ce_v)
            kn_c.append(kn_v)
            ref = per_class.get(classes[c], {}).get("reference")
            if ref and ref.get("ce") and ref.get("knn") and np.isfinite(kn_v):
                en_c.append(float(scoring.ensemble(ce_v, kn_v, np.asarray(ref["ce"]), np.asarray(ref["knn"]))))
        out["ce"][i] = min(ce_c)
        finite_kn = [v for v in kn_c if np.isfinite(v)]
        if finite_kn:
            out["knn"][i] = min(finite_kn)
        if en_c:
            out["ensemble"][i] = min(en_c)
    return out


def evaluate_run(
    run_dir: str | Path,
    roots: Sequence[str | Path] | None = None,
    out_dir: str | Path | None = None,
    scores: Sequence[str] = SCORE_KINDS,
    compare_paper: bool = False,
    device: str | torch.device | None = None,
    progress: bool | Progress = True,
    plots: bool = True,
    batch_size: int = 32,
    which: str = "best",
) -> dict:
    """Evaluate a run on the labelled test clips; writes report.json, report.md and PNGs.

    The knn references and the ensemble's reference scores are those of the ``which`` weights:
    the run's own files when they were made with them, else recomputed in a temporary folder.
    """
    from trainer.checkpoint import load_model

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    net, config = load_model(run_dir, which, map_location="cpu")
    net = prepare_model(net, dev)
    classes = config["classes"]
    index = index_for_run(config, roots)
    test = clip_refs([c for c in index.clips if c.split == "test" and c.label is not None], classes)
    if not test:
        raise UserError(
            "no labelled test clips (test/normal_* and test/anomaly_*) of the run's machine types were found "
            f"under {', '.join(map(str, roots or config.get('data', {}).get('roots', [])))}"
        )
    with tempfile.TemporaryDirectory(prefix="edge-asd-refs-") as work:
        ref_dir = references_for(run_dir, which, work, device=dev, progress=progress)
        thr_path = ref_dir / THRESHOLDS_FILE
        thresholds = json.loads(thr_path.read_text()) if thr_path.is_file() else None
        refs = load_reference_embeddings(ref_dir, len(classes))
    knn_k = int((thresholds or {}).get("knn_k") or config.get("train", {}).get("knn_k", scoring.DEFAULT_KNN_K))
    sc, emb, ok = run_model(net, [t.path for t in test], dev, batch_size, progress=progress, description="evaluating")
    test = [t for t, good in zip(test, ok) if good]
    sc, emb = sc[ok], emb[ok]
    per_clip = clip_scores(sc, emb, test, refs, thresholds, classes, knn_k)
    results = _evaluate_kinds(per_clip, test, scores)
    doc: dict[str, Any] = {
        "run": str(run_dir),
        "checkpoint": which,
        "n_clips": len(test),
        "knn_k": knn_k,
        "scores": {k: r.to_dict() for k, r in results.items()},
        "clips": [
            {"path": str(t.path), "type": t.machine_type, "id": t.machine_id, "label": int(t.label),
             **{k: float(per_clip[k][i]) for k in results}}
            for i, t in enumerate(test)
        ],
    }
    _write_report(doc, results, out, compare_paper, plots)
    return doc


def _evaluate_kinds(per_clip: dict[str, np.ndarray], test: Sequence[ClipRef], scores: Sequence[str]) -> dict[str, Any]:
    """The metrics of every requested score that every clip has (others are skipped with a warning)."""
    from trainer.metrics import evaluate_scores

    results: dict[str, Any] = {}
    for kind in [s for s in scores if s in SCORE_KINDS]:
        vals = per_clip[kind]
        if not np.all(np.isfinite(vals)):
            why = "no knn references (RUN/embeddings)" if kind == "knn" else "no thresholds.json references"
            logger.warning("%s score not evaluated: %s; run `edge-asd calibrate-run`", kind, why)
            continue
        results[kind] = evaluate_scores(
            [t.machine_type for t in test], [t.machine_id for t in test], [int(t.label) for t in test], vals
        )
    if not results:
        raise UserError("no score could be evaluated")
    return results


def _write_report(doc: dict[str, Any], results: dict[str, Any], out: Path, compare_paper: bool, plots: bool) -> None:
    """report.json, report.md and (with ``plots``) a ROC PNG per machine type into ``out``."""
    from trainer import report as report_mod

    markdown = report_mod.markdown_report(results, compare_paper=compare_paper)
    doc["markdown"] = markdown
    atomic_write_text(out / "report.json", json.dumps(doc, indent=1))
    atomic_write_text(out / "report.md", markdown)
    if plots:
        from trainer import plots as plots_mod

        doc["plots"] = [str(p) for p in plots_mod.plot_types(doc, out)]


__all__ = [
    "SCORE_KINDS",
    "ClipRef",
    "calibrate_run",
    "clip_refs",
    "clip_scores",
    "evaluate_run",
    "knn_for",
    "load_reference_embeddings",
    "pick_device",
    "prepare_model",
    "references_for",
    "run_model",
    "training_clip_sets",
    "write_reference_embeddings",
]
