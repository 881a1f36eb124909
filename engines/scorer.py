"""One anomaly score per window from the model outputs, for the bundle's score mode.

A stream may be allowed several classes (a microphone next to two fans): its score is the
minimum over those classes, because the window is normal if it sounds like *any* of them.
The three modes (``ce``: the network's cross-entropy output; ``knn``: cosine distance to the
class's training-normal embeddings; ``ensemble``: rank-normalised mean of both) use
``edge_asd.core.scoring``, the same numpy code ``evaluate`` uses, so device and report agree.

numpy only (device side).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asd.core import scoring
from engines.bundle import Bundle, as_bundle
from engines.errors import BundleError
from engines.runtime.base import Inference

logger = logging.getLogger(__name__)

_ID_PATTERN = re.compile(r"(?:^|_)((?:id|section)_\d+)(?:_|\.|$)")


@dataclass(frozen=True)
class RowScore:
    """The score of one window, the class that gave the minimum and that class's threshold."""

    score: float
    class_index: int
    threshold: float | None

    @property
    def anomalous(self) -> bool | None:
        return None if self.threshold is None else bool(self.score > self.threshold)


class Scorer:
    """Turns an ``Inference`` plus per-row candidate classes into per-row anomaly scores."""

    def __init__(self, bundle: Bundle | str | Path) -> None:
        self.bundle = as_bundle(bundle)
        manifest = self.bundle.manifest
        self.mode = manifest.score.mode
        self.knn_k = manifest.score.knn_k
        self.classes = manifest.classes
        self._thresholds: dict[int, float] = {}
        self._refs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if manifest.thresholds is not None:
            for name, cal in manifest.thresholds.classes.items():
                idx = self.classes.index(name)
                self._thresholds[idx] = float(cal.threshold)
                if "ce" in cal.reference and "knn" in cal.reference:
                    self._refs[idx] = (
                        np.sort(np.asarray(cal.reference["ce"], dtype=np.float64)),
                        np.sort(np.asarray(cal.reference["knn"], dtype=np.float64)),
                    )
        if self.mode != "ce":
            for idx in range(len(self.classes)):
                self.bundle.embeddings(idx)  # load (and validate) now, not on the first window

    def threshold(self, class_index: int) -> float | None:
        """The calibrated threshold of a class, or None when the bundle carries none for it."""
        self._check_index(class_index)
        return self._thresholds.get(class_index)

    def _check_index(self, class_index: int) -> None:
        if not 0 <= class_index < len(self.classes):
            raise BundleError(f"class index {class_index} is outside the bundle's {len(self.classes)} classes")

    def class_scores(self, out: Inference, class_index: int, rows: Sequence[int] | None = None) -> np.ndarray:
        """Scores of ``rows`` (default all) of ``out`` for one class, shape (len(rows),)."""
        self._check_index(class_index)
        rows_arr = np.arange(len(out)) if rows is None else np.asarray(rows, dtype=np.int64)
        ce = out.scores[rows_arr, class_index].astype(np.float64)
        if self.mode == "ce":
            return ce
        knn = scoring.knn_scores(out.embedding[rows_arr], self.bundle.embeddings(class_index), self.knn_k).astype(
            np.float64
        )
        if self.mode == "knn":
            return knn
        refs = self._refs.get(class_index)
        if refs is None:
            raise BundleError(
                f"bundle {self.bundle.path}: class {self.classes[class_index]} has no ce/knn references for the "
                "ensemble score; calibrate the run (`edge-asd calibrate-run`) and export again"
            )
        return np.asarray(scoring.ensemble(ce, knn, refs[0], refs[1]), dtype=np.float64)

    def score_rows(self, out: Inference, class_indices_per_row: Sequence[Sequence[int]]) -> list[RowScore]:
        """Per row: the minimum score over the row's classes, with its class and threshold."""
        if len(class_indices_per_row) != len(out):
            raise ValueError(f"{len(class_indices_per_row)} class lists for {len(out)} windows")
        # Score each class once for all rows that list it: knn costs one matrix product per class.
        wanted: dict[int, list[int]] = {}
        for row, classes in enumerate(class_indices_per_row):
            if len(classes) == 0:
                raise ValueError(f"row {row} has no candidate classes")
            for c in classes:
                wanted.setdefault(int(c), []).append(row)
        table: dict[tuple[int, int], float] = {}
        for c, rows in wanted.items():
            values = self.class_scores(out, c, rows)
            table.update({(row, c): float(v) for row, v in zip(rows, values)})
        result = []
        for row, classes in enumerate(class_indices_per_row):
            best = min((int(c) for c in classes), key=lambda c: table[(row, c)])
            result.append(RowScore(score=table[(row, best)], class_index=best, threshold=self._thresholds.get(best)))
        return result

    def score(self, out: Inference, class_indices_per_row: Sequence[Sequence[int]]) -> np.ndarray:
        """One anomaly score per row (float64), the minimum over the row's classes."""
        return np.array([r.score for r in self.score_rows(out, class_indices_per_row)], dtype=np.float64)


def classes_for_file(path: str | Path, classes: Sequence[str]) -> list[int]:
    """Class indices a file's DCASE name points at, else every class.

    ``.../ToyCar/test/normal_id_01_00000000.wav`` -> ``ToyCar/id_01``;
    ``.../fan/train/section_00_source_train_normal_0001.wav`` -> ``fan/section_00``. The
    machine type is the nearest parent folder that, with the file's id, names a class; failing
    that, an id that names exactly one class is enough.
    """
    path = Path(path)
    match = _ID_PATTERN.search(path.stem)
    if match is not None:
        ident = match.group(1)
        for parent in path.parents:
            name = f"{parent.name}/{ident}"
            if name in classes:
                return [list(classes).index(name)]
        by_id = [i for i, c in enumerate(classes) if c.endswith(f"/{ident}") or c == ident]
        if len(by_id) == 1:
            return by_id
    return list(range(len(classes)))


__all__ = ["RowScore", "Scorer", "classes_for_file"]
