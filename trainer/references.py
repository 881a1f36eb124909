"""A run's references and thresholds: knn reference embeddings and ``thresholds.json``.

* ``write_reference_embeddings``: the training normals of each class (held-out clips
  excluded), embedded by a checkpoint's weights, L2-normalised, at most
  ``embeddings_per_class`` per class: the knn score's references;
* ``calibrate_run``: the held-out normals' ce and knn scores -> ``thresholds.json``.

Both belong to one set of weights: embeddings of ``model_best.pt`` compared against a clip
embedded by ``model_last.pt`` measure the difference between two models, not an anomaly. So
each records the fingerprint of the weights it was made with (``embeddings/weights.json``, and
``"weights_sha256"`` in ``thresholds.json``), and ``references_for`` recomputes both for any
other weights (``export --checkpoint last``, ``evaluate --checkpoint last``). Files without a
fingerprint (runs of older versions) count as made with ``model_best.pt``, as the run
directory contract always said.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_asd.core import scoring
from edge_asd.core.atomic import atomic_write_bytes, atomic_write_text
from edge_asd.core.constants import EMBEDDING_DIM
from edge_asd.core.errors import UserError
from trainer.checkpoint import load_model, weights_fingerprint
from trainer.clips import ClipRef, training_clip_sets
from trainer.config import DEFAULT_FALSE_ALARM_RATE, DEFAULT_SEED, EMBEDDINGS_PER_CLASS, TrainConfig
from trainer.inference import pick_device, prepare_model, run_model
from trainer.progress import Progress

logger = logging.getLogger(__name__)

EMBEDDINGS_DIR = "embeddings"
WEIGHTS_RECORD = "weights.json"
"""``embeddings/weights.json``: which checkpoint (and weights fingerprint) the embeddings came from."""
THRESHOLDS_FILE = "thresholds.json"


def _load_run(run_dir: Path, which: str, device: torch.device) -> tuple[torch.nn.Module, dict, str]:
    """The run's ``which`` weights in float32 eval mode on ``device``, its config and fingerprint."""
    net, config = load_model(run_dir, which, map_location="cpu")
    fingerprint = weights_fingerprint(net.state_dict())
    return prepare_model(net, device), config, fingerprint


def _npy_bytes(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, arr.astype(np.float32))
    return buffer.getvalue()


def write_reference_embeddings(
    run_dir: str | Path,
    roots: Sequence[str | Path] | None = None,
    device: str | torch.device | None = None,
    progress: bool | Progress = True,
    max_per_class: int | None = None,
    batch_size: int = 32,
    *,
    which: str = "best",
    out_dir: str | Path | None = None,
) -> dict[int, int]:
    """Embed a per-class subsample of the training normals with ``which`` weights; ``{class: n}``.

    Written to ``out_dir/embeddings`` (default: the run's own ``embeddings/``) together with the
    weights' fingerprint.
    """
    run_dir = Path(run_dir)
    dev = pick_device(device)
    net, config, fingerprint = _load_run(run_dir, which, dev)
    return _write_embeddings(run_dir, Path(out_dir) if out_dir else run_dir, net, config, which, fingerprint, roots, dev,
                             progress, max_per_class, batch_size)


def _write_embeddings(
    run_dir: Path,
    out_dir: Path,
    net: torch.nn.Module,
    config: dict,
    which: str,
    fingerprint: str,
    roots: Sequence[str | Path] | None,
    dev: torch.device,
    progress: bool | Progress,
    max_per_class: int | None,
    batch_size: int,
) -> dict[int, int]:
    train_cfg = config.get("train", {})
    cap = int(max_per_class or train_cfg.get("embeddings_per_class", EMBEDDINGS_PER_CLASS))
    rng = np.random.default_rng(int(train_cfg.get("seed", DEFAULT_SEED)))
    refs, _ = training_clip_sets(run_dir, config, roots)
    chosen: list[ClipRef] = []
    by_class: dict[int, list[ClipRef]] = {}
    for r in refs:
        by_class.setdefault(int(r.class_index), []).append(r)
    for c in sorted(by_class):
        items = by_class[c]
        if len(items) > cap:
            keep = np.sort(rng.choice(len(items), cap, replace=False))
            items = [items[int(k)] for k in keep]
        chosen.extend(items)
    _, emb, ok = run_model(net, [r.path for r in chosen], dev, batch_size, progress=progress, description="embedding references")
    emb_dir = out_dir / EMBEDDINGS_DIR
    emb_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[int, int] = {}
    labels = np.array([r.class_index for r in chosen])
    empty = np.zeros((0, EMBEDDING_DIM), np.float32)
    for c in range(len(config["classes"])):
        rows = emb[(labels == c) & ok] if len(chosen) else empty
        if rows.shape[0] == 0:
            logger.warning("class %s has no training clips: no knn references", config["classes"][c])
        arr = scoring.l2_normalise(rows) if rows.shape[0] else empty
        atomic_write_bytes(emb_dir / f"class_{c:03d}.npy", _npy_bytes(arr))
        counts[c] = int(arr.shape[0])
    record = {"checkpoint": which, "weights_sha256": fingerprint}
    atomic_write_text(emb_dir / WEIGHTS_RECORD, json.dumps(record, indent=1))
    return counts


def load_reference_embeddings(run_dir: str | Path, num_classes: int) -> dict[int, np.ndarray]:
    """``{class: (N, 128)}`` from ``RUN/embeddings``; classes without references are absent."""
    out: dict[int, np.ndarray] = {}
    for c in range(num_classes):
        path = Path(run_dir) / EMBEDDINGS_DIR / f"class_{c:03d}.npy"
        if path.is_file():
            arr = np.load(path)
            if arr.shape[0]:
                out[c] = arr
    return out


def knn_for(emb: np.ndarray, class_index: int, refs: dict[int, np.ndarray], k: int) -> np.ndarray:
    """The knn score of each row against class ``class_index``'s references (NaN without any)."""
    if class_index not in refs:
        return np.full(emb.shape[0], np.nan, np.float32)
    return scoring.knn_scores(emb, refs[class_index], k)


# --------------------------------------------------------------------------------------------
# which weights the references were made with


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("%s is unreadable: treated as absent", path)
        return None
    return doc if isinstance(doc, dict) else None


def _best_fingerprint(run_dir: Path) -> str:
    net, _ = load_model(run_dir, "best", map_location="cpu")
    return weights_fingerprint(net.state_dict())


def embeddings_fingerprint(ref_dir: Path, run_dir: Path) -> str | None:
    """The fingerprint of the weights ``ref_dir/embeddings`` were made with (None: no embeddings)."""
    if not any((ref_dir / EMBEDDINGS_DIR).glob("class_*.npy")):
        return None
    record = _read_json(ref_dir / EMBEDDINGS_DIR / WEIGHTS_RECORD)
    if record and record.get("weights_sha256"):
        return str(record["weights_sha256"])
    return _best_fingerprint(run_dir)


def thresholds_fingerprint(ref_dir: Path, run_dir: Path) -> str | None:
    """The fingerprint of the weights ``ref_dir/thresholds.json`` was calibrated with (None: no file)."""
    doc = _read_json(ref_dir / THRESHOLDS_FILE)
    if doc is None:
        return None
    return str(doc["weights_sha256"]) if doc.get("weights_sha256") else _best_fingerprint(run_dir)


# --------------------------------------------------------------------------------------------
# thresholds


def calibrate_run(
    run_dir: str | Path,
    roots: Sequence[str | Path] | None = None,
    score: str | None = None,
    false_alarm_rate: float | None = None,
    knn_k: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | Progress = True,
    batch_size: int = 32,
    *,
    which: str = "best",
    out_dir: str | Path | None = None,
) -> dict:
    """Score the held-out normals with ``which`` weights and write ``thresholds.json``; returns it.

    Written to ``out_dir`` (default: the run). The knn references in ``out_dir/embeddings`` are
    (re)computed first when they are missing or were made with other weights.
    """
    from trainer.calibrate import calibrate, write_thresholds

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir
    dev = pick_device(device)
    net, config, fingerprint = _load_run(run_dir, which, dev)
    train_cfg = config.get("train", {})
    score = score or train_cfg.get("score", "ce")
    false_alarm_rate = float(false_alarm_rate or train_cfg.get("false_alarm_rate", DEFAULT_FALSE_ALARM_RATE))
    knn_k = int(knn_k or train_cfg.get("knn_k", scoring.DEFAULT_KNN_K))
    classes = config["classes"]
    refs = load_reference_embeddings(out, len(classes))
    if not refs or embeddings_fingerprint(out, run_dir) != fingerprint:
        if refs:
            logger.info("the knn references in %s were made with other weights: embedding them again", out)
        _write_embeddings(run_dir, out, net, config, which, fingerprint, roots, dev, progress, None, batch_size)
        refs = load_reference_embeddings(out, len(classes))
    _, heldout = training_clip_sets(run_dir, config, roots)
    if not heldout:
        raise UserError(
            f"{run_dir} has no held-out normal clips to calibrate on (split.json empty or missing): "
            "train with --val-fraction > 0"
        )
    sc, emb, ok = run_model(net, [h.path for h in heldout], dev, batch_size, progress=progress, description="calibrating")
    ce: dict[int, list[float]] = {}
    kn: dict[int, list[float]] = {}
    for i, h in enumerate(heldout):
        if not ok[i]:
            continue
        c = int(h.class_index)
        ce.setdefault(c, []).append(float(sc[i, c]))
        if c in refs:
            kn.setdefault(c, []).append(float(knn_for(emb[i : i + 1], c, refs, knn_k)[0]))
    doc: dict[str, Any] = calibrate(
        classes,
        {c: np.asarray(v) for c, v in ce.items()},
        {c: np.asarray(v) for c, v in kn.items()},
        score=score,
        false_alarm_rate=false_alarm_rate,
        knn_k=knn_k,
    )
    doc["checkpoint"] = which
    doc["weights_sha256"] = fingerprint
    write_thresholds(out, doc)
    return doc


def references_for(
    run_dir: str | Path,
    which: str,
    work_dir: str | Path,
    roots: Sequence[str | Path] | None = None,
    device: str | torch.device | None = None,
    progress: bool | Progress = False,
) -> Path:
    """A folder whose ``embeddings/`` and ``thresholds.json`` were made with ``which`` weights.

    The run itself when its files match those weights (or it has none); otherwise both are
    recomputed into ``work_dir`` (with the run's score mode, false-alarm rate and k), which
    needs the training data (``roots``, default: the run's).
    """
    run_dir, work = Path(run_dir), Path(work_dir)
    net, _ = load_model(run_dir, which, map_location="cpu")
    fingerprint = weights_fingerprint(net.state_dict())
    has_emb = embeddings_fingerprint(run_dir, run_dir)
    has_thr = thresholds_fingerprint(run_dir, run_dir)
    if has_emb in (None, fingerprint) and has_thr in (None, fingerprint):
        return run_dir
    logger.info("the run's references were made with other weights than %s: recomputing them", which)
    try:
        if has_thr is None:
            write_reference_embeddings(run_dir, roots, device, progress, which=which, out_dir=work)
        else:
            doc = json.loads((run_dir / THRESHOLDS_FILE).read_text())
            calibrate_run(
                run_dir, roots, doc.get("score"), doc.get("false_alarm_rate"), doc.get("knn_k"), device, progress,
                which=which, out_dir=work,
            )
    except UserError as err:
        raise UserError(
            f"the reference embeddings and thresholds of {run_dir} were made with other weights than "
            f"model_{which}.pt and must be recomputed from the training data, which failed: {err}"
        ) from err
    return work


def finalize_run(run_dir: Path, cfg: TrainConfig, device: torch.device, progress: bool | Progress = True) -> dict:
    """After training: knn references and thresholds, both with the kept (``model_best.pt``) weights."""
    write_reference_embeddings(run_dir, device=device, progress=progress, max_per_class=cfg.embeddings_per_class)
    return calibrate_run(
        run_dir, score=cfg.score, false_alarm_rate=cfg.false_alarm_rate, knn_k=cfg.knn_k, device=device, progress=progress
    )


__all__ = [
    "EMBEDDINGS_DIR",
    "THRESHOLDS_FILE",
    "WEIGHTS_RECORD",
    "calibrate_run",
    "embeddings_fingerprint",
    "finalize_run",
    "knn_for",
    "load_reference_embeddings",
    "references_for",
    "thresholds_fingerprint",
    "write_reference_embeddings",
]
