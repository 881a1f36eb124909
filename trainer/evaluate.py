"""Run a trained model over clips: knn references, threshold calibration and the DCASE evaluation.

Three jobs share one inference routine (``run_model``: batched scores for every class plus the
embedding of each clip):

* ``write_reference_embeddings``: the training normals of each class, embedded by the best
  model (L2-normalised, at most ``embeddings_per_class``), for the knn score;
* ``calibrate_run``: the held-out normals' ce and knn scores -> ``thresholds.json``;
* ``evaluate_run``: the test clips -> per-ID AUC/pAUC, per-type mean/min, the average rows,
  for the ce score, the knn score and their rank ensemble, side by side.

A clip's score is the minimum over its candidate classes: its own class when the file name
says which machine it is (DCASE dev data), else every class of its machine type (DCASE eval
data, or a stream that may come from any of several machines). The knn score and the
ensemble are computed by ``edge_asd.core.scoring``, the same code the device runs.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_asd.core import scoring
from edge_asd.core.atomic import atomic_write_bytes
from edge_asd.core.audio_io import AudioFileError, fit_length, read_audio
from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

SCORE_KINDS = ("ce", "knn", "ensemble")
EMBEDDINGS_DIR = "embeddings"


@dataclass
class ClipRef:
    """A clip to run: its file, the run's class index (or None) and candidate classes."""

    path: Path
    class_index: int | None
    candidates: list[int]
    machine_type: str
    machine_id: str
    label: int | None = None


class _FileDataset(torch.utils.data.Dataset):
    """Reads clips straight from their files (one pass: no cache needed); bad files flagged."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            audio = fit_length(read_audio(self.paths[i]))
            return torch.from_numpy(audio), True
        except AudioFileError as err:
            logger.warning("skipping %s", err)
            return torch.zeros(fit_length(np.zeros(1, np.float32)).shape), False


def pick_device(device: str | torch.device | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from trainer.distributed import resolve_device

    return resolve_device(device or "auto")


def prepare_model(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode on ``device``; the CPU uses the faster ``torch.stft`` front end (same numbers)."""
    net.eval()
    if device.type == "cpu":
        net.frontend.lowering = "stft"
    return net.to(device)


@torch.no_grad()
def run_model(
    net: torch.nn.Module,
    paths: Sequence[Path],
    device: torch.device,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
    description: str = "scoring",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores (N, C), embeddings (N, 128), ok (N,))`` for the clips at ``paths``.

    ``ok`` is False for files that could not be read (their rows are zeros); callers drop them.
    """
    from trainer.train import _progress

    n = len(paths)
    c = int(net.config.num_classes)
    scores = np.zeros((n, c), np.float32)
    embeddings = np.zeros((n, 128), np.float32)
    ok = np.zeros(n, bool)
    if n == 0:
        return scores, embeddings, ok
    loader = torch.utils.data.DataLoader(_FileDataset(paths), batch_size=batch_size, num_workers=workers)
    use_amp = device.type == "cuda"
    dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    i = 0
    with _progress(progress) as bar:
        task = bar.add_task(description, total=n, info="")
        for audio, good in loader:
            audio = audio.to(device)
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=use_amp):
                emb = net.embed(audio)
            sc = net.scores_from_cosine(net.head_cosine(emb))
            b = audio.shape[0]
            scores[i : i + b] = sc.float().cpu().numpy()
            embeddings[i : i + b] = emb.float().cpu().numpy()
            ok[i : i + b] = good.numpy()
            i += b
            bar.update(task, advance=b)
    return scores, embeddings, ok


# --------------------------------------------------------------------------------------------
# which clips


def _clip_type_and_id(clip: Any) -> tuple[str, str]:
    """Machine type and machine ID/section of a data-layer clip (class name ``type/id``)."""
    mtype = getattr(clip, "machine_type", None)
    mid = getattr(clip, "machine_id", None) or getattr(clip, "section", None)
    name = getattr(clip, "class_name", None) or ""
    if mtype is None and "/" in name:
        mtype = name.split("/", 1)[0]
    if mid is None and "/" in name:
        mid = name.split("/", 1)[1]
    return str(mtype or "unknown"), str(mid or "unknown")


def clip_refs(clips: Sequence[Any], classes: Sequence[str]) -> list[ClipRef]:
    """Map data-layer clips onto the run's classes; clips of unknown machine types are dropped."""
    class_of = {name: i for i, name in enumerate(classes)}
    by_type: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        by_type.setdefault(name.split("/", 1)[0], []).append(i)
    out: list[ClipRef] = []
    dropped: dict[str, int] = {}
    for clip in clips:
        mtype, mid = _clip_type_and_id(clip)
        idx = class_of.get(getattr(clip, "class_name", None) or "")
        if idx is not None:
            candidates = [idx]
        else:
            # Unknown attributes (DCASE 2022+) or an unknown ID: the clip's section, else its type.
            prefix = f"{mtype}/{mid}/"
            candidates = [i for i, name in enumerate(classes) if name.startswith(prefix)] or by_type.get(mtype, [])
        if not candidates:
            dropped[mtype] = dropped.get(mtype, 0) + 1
            continue
        out.append(ClipRef(Path(clip.path), idx, candidates, mtype, mid, getattr(clip, "label", None)))
    for mtype, count in dropped.items():
        logger.warning("%d clips of machine type %s match no class of the run: skipped", count, mtype)
    return out


def _index_for_run(config: dict, roots: Sequence[str | Path] | None) -> Any:
    from trainer import data

    data_cfg = config.get("data", {})
    roots = list(roots) if roots else list(data_cfg.get("roots", []))
    if not roots:
        raise UserError("no data folders given and the run's config.json names none: pass DATA")
    for r in roots:
        if not Path(r).exists():
            raise UserError(f"data folder {r} does not exist: pass the folder(s) the run was trained on")
    return data.build_index(
        [str(r) for r in roots], layout=data_cfg.get("layout", "auto"), class_by=data_cfg.get("class_by", "section")
    )


def training_clip_sets(run_dir: Path, config: dict, roots: Sequence[str | Path] | None = None) -> tuple[list[ClipRef], list[ClipRef]]:
    """``(reference clips, held-out clips)`` of the run: its train split minus / only ``split.json``."""
    index = _index_for_run(config, roots)
    classes = config["classes"]
    train_clips = [c for c in index.clips if c.split == "train" and c.class_name in set(classes)]
    split_path = run_dir / "split.json"
    held = set(json.loads(split_path.read_text()).get("val", [])) if split_path.is_file() else set()
    if not split_path.is_file():
        logger.warning("%s has no split.json: every training clip is used as a reference, none held out", run_dir)
    refs = clip_refs([c for c in train_clips if str(c.path) not in held], classes)
    heldout = clip_refs([c for c in train_clips if str(c.path) in held], classes)
    if held and not heldout:
        # The data moved (other roots): match held-out clips by their path below the root.
        tails = {"/".join(Path(p).parts[-3:]) for p in held}
        refs = clip_refs([c for c in train_clips if "/".join(Path(c.path).parts[-3:]) not in tails], classes)
        heldout = clip_refs([c for c in train_clips if "/".join(Path(c.path).parts[-3:]) in tails], classes)
    return refs, heldout


# --------------------------------------------------------------------------------------------
# references and thresholds


def _load_run(run_dir: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    from trainer.checkpoint import load_model

    net, config = load_model(run_dir, "best", map_location="cpu")
    return prepare_model(net, device), config


def write_reference_embeddings(
    run_dir: str | Path,
    roots: Sequence[str | Path] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_per_class: int | None = None,
    batch_size: int = 32,
) -> dict[int, int]:
    """Embed a per-class subsample of the training normals; returns ``{class: n}``."""
    run_dir = Path(run_dir)
    dev = pick_device(device)
    net, config = _load_run(run_dir, dev)
    train_cfg = config.get("train", {})
    cap = int(max_per_class or train_cfg.get("embeddings_per_class", 512))
    rng = np.random.default_rng(int(train_cfg.get("seed", 2023)))
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
    out_dir = run_dir / EMBEDDINGS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[int, int] = {}
    labels = np.array([r.class_index for r in chosen])
    for c in range(len(config["classes"])):
        rows = emb[(labels == c) & ok] if len(chosen) else np.zeros((0, 128), np.float32)
        if rows.shape[0] == 0:
            logger.warning("class %s has no training clips: no knn references", config["classes"][c])
        arr = scoring.l2_normalise(rows) if rows.shape[0] else np.zeros((0, 128), np.float32)
        path = out_dir / f"class_{c:03d}.npy"
        buffer = io.BytesIO()
        np.save(buffer, arr.astype(np.float32))
        atomic_write_bytes(path, buffer.getvalue())
        counts[c] = int(arr.shape[0])
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
    if class_index not in refs:
        return np.full(emb.shape[0], np.nan, np.float32)
    return scoring.knn_scores(emb, refs[class_index], k)


def calibrate_run(
    run_dir: str | Path,
    roots: Sequence[str | Path] | None = None,
    score: str | None = None,
    false_alarm_rate: float | None = None,
    knn_k: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    batch_size: int = 32,
) -> dict:
    """Score the held-out normals and write ``RUN/thresholds.json``; returns the document."""
    from trainer.calibrate import calibrate, write_thresholds

    run_dir = Path(run_dir)
    dev = pick_device(device)
    net, config = _load_run(run_dir, dev)
    train_cfg = config.get("train", {})
    score = score or train_cfg.get("score", "ce")
    false_alarm_rate = float(false_alarm_rate or train_cfg.get("false_alarm_rate", 1e-3))
    knn_k = int(knn_k or train_cfg.get("knn_k", scoring.DEFAULT_KNN_K))
    classes = config["classes"]
    refs = load_reference_embeddings(run_dir, len(classes))
    if not refs:
        write_reference_embeddings(run_dir, roots, dev, progress, batch_size=batch_size)
        refs = load_reference_embeddings(run_dir, len(classes))
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
    doc = calibrate(
        classes,
        {c: np.asarray(v) for c, v in ce.items()},
        {c: np.asarray(v) for c, v in kn.items()},
        score=score,
        false_alarm_rate=false_alarm_rate,
        knn_k=knn_k,
    )
    write_thresholds(run_dir, doc)
    return doc


# --------------------------------------------------------------------------------------------
# evaluation


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
    progress: bool = True,
    plots: bool = True,
    batch_size: int = 32,
    which: str = "best",
) -> dict:
    """Evaluate a run on the labelled test clips; writes report.json, report.md and PNGs."""
    from trainer import report as report_mod
    from trainer.checkpoint import load_model
    from trainer.metrics import evaluate_scores

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    net, config = load_model(run_dir, which, map_location="cpu")
    net = prepare_model(net, dev)
    classes = config["classes"]
    index = _index_for_run(config, roots)
    test = clip_refs([c for c in index.clips if c.split == "test" and c.label is not None], classes)
    if not test:
        raise UserError(
            "no labelled test clips (test/normal_* and test/anomaly_*) of the run's machine types were found "
            f"under {', '.join(map(str, roots or config.get('data', {}).get('roots', [])))}"
        )
    thr_path = run_dir / "thresholds.json"
    thresholds = json.loads(thr_path.read_text()) if thr_path.is_file() else None
    knn_k = int((thresholds or {}).get("knn_k") or config.get("train", {}).get("knn_k", scoring.DEFAULT_KNN_K))
    refs = load_reference_embeddings(run_dir, len(classes))
    sc, emb, ok = run_model(net, [t.path for t in test], dev, batch_size, progress=progress, description="evaluating")
    test = [t for t, good in zip(test, ok) if good]
    sc, emb = sc[ok], emb[ok]
    per_clip = clip_scores(sc, emb, test, refs, thresholds, classes, knn_k)
    results: dict[str, Any] = {}
    wanted = [s for s in scores if s in SCORE_KINDS]
    for kind in wanted:
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
    doc = {
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
    markdown = report_mod.markdown_report(results, compare_paper=compare_paper)
    doc["markdown"] = markdown
    (out / "report.json").write_text(json.dumps(doc, indent=1))
    (out / "report.md").write_text(markdown)
    if plots:
        from trainer import plots as plots_mod

        doc["plots"] = [str(p) for p in plots_mod.plot_types(doc, out)]
    return doc


__all__ = [
    "SCORE_KINDS",
    "ClipRef",
    "calibrate_run",
    "clip_refs",
    "clip_scores",
    "evaluate_run",
    "load_reference_embeddings",
    "pick_device",
    "prepare_model",
    "run_model",
    "training_clip_sets",
    "write_reference_embeddings",
]
