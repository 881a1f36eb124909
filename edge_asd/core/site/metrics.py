"""AUC and partial AUC of a score against normal/anomaly labels, numpy only.

``evaluate-site`` runs on the device side (no sklearn, and the trainer's metrics module may
not be imported there), so the two numbers it reports are computed here:

* AUC: the probability that a random anomalous clip scores above a random normal clip, ties
  counted one half (the Mann-Whitney statistic, which equals the trapezoidal area under the
  ROC curve);
* pAUC: the DCASE definition, ``roc_auc_score(y, s, max_fpr=p)`` with ``p = 0.1``: the ROC
  area for false-positive rates up to ``p`` (the curve cut at ``p`` by linear interpolation),
  McClish-standardised so that chance gives 0.5 and a perfect score 1.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

PAUC_MAX_FPR = 0.1
"""DCASE's pAUC range: false-positive rates up to 10 %."""


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size != s.size:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    if y.all() or not y.any():
        raise ValueError("AUC needs normal (0) and anomalous (1) clips")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y, s


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr) from (0, 0) to (1, 1), one point per distinct score (ties: one step)."""
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    ends = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.size - 1]
    tp = np.cumsum(y_sorted)[ends].astype(np.float64)
    fp = (ends + 1) - tp
    return np.r_[0.0, fp / (~y).sum()], np.r_[0.0, tp / y.sum()]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half)."""
    y, s = _check(labels, scores)
    order = np.argsort(s, kind="stable")
    ranks = np.empty(s.size, dtype=np.float64)
    s_sorted = s[order]
    # Average rank (1-based) over each run of equal scores.
    boundaries = np.r_[0, np.flatnonzero(s_sorted[1:] != s_sorted[:-1]) + 1, s.size]
    for a, b in zip(boundaries[:-1], boundaries[1:]):
        ranks[order[a:b]] = 0.5 * (a + 1 + b)
    n_pos = float(y.sum())
    n_neg = float(y.size - y.sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pauc(labels: np.ndarray, scores: np.ndarray, max_fpr: float = PAUC_MAX_FPR) -> float:
    """McClish-standardised partial AUC over false-positive rates [0, ``max_fpr``] (DCASE)."""
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, tpr = roc_points(labels, scores)
    if max_fpr == 1.0:
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    cut = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr[cut - 1] <= max_fpr < fpr[cut]
    x0, x1 = fpr[cut - 1], fpr[cut]
    y0, y1 = tpr[cut - 1], tpr[cut]
    tpr_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0) if x1 > x0 else y1
    xs = np.r_[fpr[:cut], max_fpr]
    ys = np.r_[tpr[:cut], tpr_at]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))
    lo = 0.5 * max_fpr * max_fpr  # the diagonal's area
    hi = max_fpr  # a perfect score's area
    return float(0.5 * (1.0 + (area - lo) / (hi - lo)))


__all__ = ["PAUC_MAX_FPR", "auc", "pauc", "roc_points"]
