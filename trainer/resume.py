"""What a run leaves after every epoch, and how a resumed run picks it up again.

Every finished epoch writes ``model_last.pt``, ``model_best.pt`` (when the selection rule keeps
the epoch), its ``metrics.jsonl`` line and ``train_state.pt`` (optimizer, scheduler, epoch,
best epoch and loss, RNG states), each to a temporary name and then renamed. The state file
is written last and is the commit point, so a run killed by Ctrl-C, ``kill -9`` or a power
cut resumes with ``--resume`` and loses at most the epoch in progress.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_asd.core.atomic import atomic_write_text
from trainer.checkpoint import CHECKPOINTS, CONFIG_FILE, RunError, atomic_torch_save

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


def check_run_dir(run_dir: Path, resume: bool) -> dict | None:
    """Refuse to overwrite a run by accident; return the saved state when resuming."""
    state_path = run_dir / STATE_FILE
    if resume:
        if not state_path.is_file():
            if (run_dir / CONFIG_FILE).is_file():
                logger.warning("%s has no %s (killed before the first epoch ended): starting over", run_dir, STATE_FILE)
            return None
        return load_state(run_dir)
    if state_path.is_file() or (run_dir / CHECKPOINTS["last"]).is_file():
        raise RunError(
            f"{run_dir} already holds a training run: pass --resume to continue it, or choose another --out"
        )
    return None


def load_state(run_dir: Path) -> dict:
    """``train_state.pt`` (weights-only loadable: plain tensors, numbers and lists)."""
    return torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)


def classes_for_run(run_dir: Path, index: Any, resume: bool) -> list[str]:
    """The run's class list: from config.json when resuming (indices must not move)."""
    classes = list(index.classes)
    cfg_path = run_dir / CONFIG_FILE
    if resume and cfg_path.is_file():
        saved = json.loads(cfg_path.read_text()).get("classes")
        if saved and saved != classes:
            missing = sorted(set(classes) - set(saved))
            if missing:
                raise RunError(
                    f"the data now holds classes {missing[:5]} that the run {run_dir} was not trained on: "
                    "resume with the same data folders, or start a new run"
                )
            return list(saved)
    return classes


def read_metrics(path: Path) -> list[dict]:
    """The ``metrics.jsonl`` rows; a torn last line (a crash mid-write) is skipped with a warning."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("skipping a torn line in %s", path)
    return rows


def rewrite_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def keep_metrics_before(run_dir: Path, epoch: int) -> None:
    """Drop the lines of epochs >= ``epoch`` (a resumed run redoes them)."""
    path = run_dir / METRICS_FILE
    rewrite_metrics(path, [r for r in read_metrics(path) if r.get("epoch", 10**9) < epoch])


def save_epoch(
    run_dir: Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    best_loss: float,
    best_epoch: int,
    improved: bool,
    row: dict,
) -> None:
    """Weights, then the metrics line, then the state: the state file is the commit point.

    If a crash hits between the files, the state still names the previous epoch, so the
    resumed run redoes this epoch and the metrics line of the torn epoch is dropped on resume.
    """
    state_dict = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_torch_save(state_dict, run_dir / CHECKPOINTS["last"])
    if improved:
        atomic_torch_save(state_dict, run_dir / CHECKPOINTS["best"])
    path = run_dir / METRICS_FILE
    rewrite_metrics(path, [r for r in read_metrics(path) if r.get("epoch") != epoch] + [row])
    state = {
        "epoch": epoch,
        "best_val_loss": best_loss,
        "best_epoch": best_epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": _python_rng_state(),
        "numpy_rng": _numpy_rng_state(),
    }
    atomic_torch_save(state, run_dir / STATE_FILE)


def _python_rng_state() -> list[int]:
    version, internal, gauss = random.getstate()
    return [int(version), *[int(v) for v in internal], -1 if gauss is None else 0]


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def restore_rng(state: dict) -> None:
    """Put ``random``, numpy and torch (CPU and CUDA) back where the saved epoch left them."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    py = state.get("python_rng")
    if py:
        random.setstate((py[0], tuple(py[1:-1]), None))
    npst = state.get("numpy_rng")
    if npst:
        np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached"]))


__all__ = [
    "METRICS_FILE",
    "STATE_FILE",
    "check_run_dir",
    "classes_for_run",
    "keep_metrics_before",
    "load_state",
    "read_metrics",
    "restore_rng",
    "rewrite_metrics",
    "save_epoch",
]
