"""The held-out split of a run's training clips, per class, and its record ``RUN/split.json``.

The held-out clips do two jobs: their loss selects the checkpoint (``trainer.selection``) and
their scores calibrate the thresholds. The split is stratified so that every class keeps
held-out normals, which a plain random 5 % split of 41 classes (the released code's
``random_split``) would not guarantee for small classes. It is stored as file paths so that a
resumed run and ``calibrate-run`` hold out exactly the same clips. numpy only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.core.atomic import atomic_write_text

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.json"


@dataclass
class Split:
    """Which training clips are used for gradient steps and which are held out (per class)."""

    train: list[int]
    val: list[int]


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> Split:
    """Hold out ``fraction`` of each class (at least one clip when the class has two or more)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = 0
        if fraction > 0 and idx.size >= 2:
            n_val = min(max(1, round(fraction * idx.size)), idx.size - 1)
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return Split(sorted(train), sorted(val))


def load_or_make_split(
    run_dir: Path, clips: Sequence[Any], labels: Sequence[int], fraction: float, seed: int, resume: bool, write: bool
) -> Split:
    """The run's split: read from ``split.json`` when resuming, else drawn (and written if ``write``)."""
    path = run_dir / SPLIT_FILE
    paths = [str(c.path) for c in clips]
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        val_set = set(saved.get("val", []))
        val = [i for i, p in enumerate(paths) if p in val_set]
        train = [i for i, p in enumerate(paths) if p not in val_set]
        return Split(train, val)
    split = stratified_split(labels, fraction, seed)
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        doc = {"seed": seed, "val_fraction": fraction, "val": [paths[i] for i in split.val]}
        atomic_write_text(path, json.dumps(doc, indent=1))
    return split


__all__ = ["SPLIT_FILE", "Split", "load_or_make_split", "stratified_split"]
