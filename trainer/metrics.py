"""DCASE 2020 Task 2 metrics: per-ID AUC and pAUC, per-type mean and minimum, average rows.

numpy only. The AUC and the partial AUC follow scikit-learn's ``roc_auc_score`` (and
``max_fpr=0.1``, McClish-standardised) step by step, so the numbers equal those of the official
DCASE 2020 evaluator; ``tests/trainer/test_metrics.py`` checks them against sklearn. Keeping sklearn
out makes the module importable wherever ``edge_asd.core.scoring`` is.

Aggregation (the DCASE 2020 / STgram-MFN protocol behind the paper's table, not the released
``eval.py``, which pools a type's IDs and cannot give mAUC): AUC and pAUC per machine ID; per
machine type the arithmetic mean over its IDs and mAUC = the minimum AUC over its IDs; then two
"average" rows over types: the arithmetic mean (the paper's table: 94.65 / 89.31 / 89.78) and
the harmonic mean (DCASE 2021 and later).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

MAX_FPR = 0.1


def roc_curve(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold, starting at (0, 0).

    Ties in ``scores`` form one step (a diagonal segment), exactly as in sklearn.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size != s.size:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs both normal (0) and anomalous (1) clips")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_group = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[last_of_group]
    fps = (last_of_group + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return fpr, tpr


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, max_fpr: float | None = None) -> float:
    """Area under the ROC curve; with ``max_fpr`` the McClish-standardised partial AUC.

    Same definition as ``sklearn.metrics.roc_auc_score(labels, scores, max_fpr=max_fpr)``:
    the curve is cut at ``max_fpr`` (linear interpolation), its area ``A`` is mapped to
    ``0.5 * (1 + (A - max_fpr**2 / 2) / (max_fpr - max_fpr**2 / 2))`` so that chance is 0.5
    and perfect is 1.
    """
    fpr, tpr = roc_curve(labels, scores)
    if max_fpr is None or max_fpr >= 1:
        return _trapezoid(fpr, tpr)
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))
    x_interp = [fpr[stop - 1], fpr[stop]]
    y_interp = [tpr[stop - 1], tpr[stop]]
    tpr_cut = np.append(tpr[:stop], np.interp(max_fpr, x_interp, y_interp))
    fpr_cut = np.append(fpr[:stop], max_fpr)
    area = _trapezoid(fpr_cut, tpr_cut)
    min_area = 0.5 * max_fpr**2
    return float(0.5 * (1 + (area - min_area) / (max_fpr - min_area)))


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Area under the polyline (x, y); written out because numpy renamed ``trapz``."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


@dataclass
class IdResult:
    """AUC and pAUC of one machine ID (one "section" in DCASE 2021+)."""

    machine_type: str
    machine_id: str
    auc: float
    pauc: float
    n_normal: int
    n_anomaly: int


@dataclass
class TypeResult:
    """One row of the paper's table: mean AUC and pAUC over the type's IDs and mAUC = min AUC."""

    machine_type: str
    auc: float
    pauc: float
    mauc: float
    ids: list[IdResult] = field(default_factory=list)


@dataclass
class EvaluationResult:
    """Per-type rows plus the arithmetic-mean (paper) and harmonic-mean (DCASE 2021+) rows."""

    types: list[TypeResult]
    arithmetic: dict[str, float]
    harmonic: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "types": [asdict(t) for t in self.types],
            "average_arithmetic": dict(self.arithmetic),
            "average_harmonic": dict(self.harmonic),
        }


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (the limit), as DCASE's ``scipy.stats.hmean`` gives."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return float("nan")
    if np.any(v <= 0):
        return 0.0
    return float(v.size / np.sum(1.0 / v))


def evaluate_scores(
    machine_types: Sequence[str],
    machine_ids: Sequence[str],
    labels: Sequence[int],
    scores: Sequence[float],
    max_fpr: float = MAX_FPR,
) -> EvaluationResult:
    """Aggregate clip scores into the DCASE table.

    One entry per test clip: its machine type, machine ID (or section), label (0 normal,
    1 anomalous) and anomaly score (higher = more anomalous). IDs without both normal and
    anomalous clips cannot have an AUC and are skipped with a warning.
    """
    n = len(scores)
    if not (len(machine_types) == len(machine_ids) == len(labels) == n):
        raise ValueError("machine_types, machine_ids, labels and scores must have one entry per clip")
    mt = np.asarray(machine_types, dtype=object)
    mid = np.asarray(machine_ids, dtype=object)
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    types: list[TypeResult] = []
    for t in sorted(set(mt.tolist()), key=_type_sort_key):
        id_results: list[IdResult] = []
        for i in sorted(set(mid[mt == t].tolist())):
            sel = (mt == t) & (mid == i)
            n_anom = int(y[sel].sum())
            n_norm = int(sel.sum() - n_anom)
            if n_anom == 0 or n_norm == 0:
                logger.warning("%s %s has %d normal and %d anomalous test clips: no AUC", t, i, n_norm, n_anom)
                continue
            id_results.append(
                IdResult(t, i, roc_auc(y[sel], s[sel]), roc_auc(y[sel], s[sel], max_fpr), n_norm, n_anom)
            )
        if not id_results:
            continue
        aucs = [r.auc for r in id_results]
        paucs = [r.pauc for r in id_results]
        types.append(TypeResult(t, float(np.mean(aucs)), float(np.mean(paucs)), float(np.min(aucs)), id_results))
    if not types:
        raise ValueError("no machine ID has both normal and anomalous test clips: nothing to evaluate")
    arithmetic = {k: float(np.mean([getattr(t, k) for t in types])) for k in ("auc", "pauc", "mauc")}
    harmonic = {k: harmonic_mean(getattr(t, k) for t in types) for k in ("auc", "pauc", "mauc")}
    return EvaluationResult(types, arithmetic, harmonic)


# The paper's row order; other types (own data, DCASE 2021+) follow alphabetically.
PAPER_TYPE_ORDER = ("fan", "pump", "slider", "valve", "ToyCar", "ToyConveyor")


def _type_sort_key(t: str) -> tuple[int, str]:
    return (PAPER_TYPE_ORDER.index(t), t) if t in PAPER_TYPE_ORDER else (len(PAPER_TYPE_ORDER), t)


__all__ = [
    "MAX_FPR",
    "PAPER_TYPE_ORDER",
    "EvaluationResult",
    "IdResult",
    "TypeResult",
    "evaluate_scores",
    "harmonic_mean",
    "roc_auc",
    "roc_curve",
]
