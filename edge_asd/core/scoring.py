"""Anomaly scores built from embeddings: the k-nearest-neighbour score and the rank ensemble.

numpy only: the device (a Jetson without PyTorch, scipy or sklearn) imports this module, and
``evaluate`` calls the very same functions, so the numbers in a report are the numbers the
device computes.

Two scores exist for a clip of class ``c``:

* ``ce``: the model's cross-entropy score (ArcFace logits with the margin on ``c``), computed
  by the network itself;
* ``knn``: how far the clip's embedding lies from the training-normal embeddings of ``c``.
  It is the **mean** cosine distance to the ``k`` nearest references (not the k-th distance):
  the mean of k is smoother when one reference happens to be a near-duplicate of the clip,
  and with k = 1 both definitions agree.

The two live on unrelated scales, so the ensemble first maps each onto [0, 1] with the
empirical CDF of held-out normal scores of the same class (``rank_normalise``) and averages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_KNN_K = 4
"""Neighbours averaged by the knn score. Small, because a class may keep only a few hundred
references; 4 averages out a single near-duplicate without blurring the local density."""

_EPS = 1e-12


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (float32); all-zero rows stay zero.

    Cosine distance is only a dot product once both sides are unit length; doing it here once
    keeps the per-window cost on the device at one matrix product.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, _EPS)).astype(np.float32, copy=False)


def knn_scores(
    embeddings: np.ndarray, references: np.ndarray, k: int = DEFAULT_KNN_K, *, references_normalised: bool = False
) -> np.ndarray:
    """Mean cosine distance of each embedding to its ``k`` nearest references, shape ``(B,)``.

    ``embeddings`` is ``(B, D)`` (or ``(D,)``), ``references`` ``(N, D)``; both are
    L2-normalised here, so callers may pass raw embeddings. The distance is ``1 - cos`` and
    lies in [0, 2]; larger means further from anything normal, i.e. more anomalous. ``k`` is
    clipped to ``N`` so a class with few references still gets a score.
    ``references_normalised``: the references are already ``l2_normalise``d (float32 rows).
    """
    emb = l2_normalise(embeddings)
    ref = np.asarray(references, dtype=np.float32)
    if ref.ndim != 2 or ref.shape[0] == 0:
        raise ValueError(f"knn_scores needs a non-empty (N, D) reference array, got shape {ref.shape}")
    if ref.shape[1] != emb.shape[1]:
        raise ValueError(f"embedding width {emb.shape[1]} != reference width {ref.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not references_normalised:  # a caller scoring many windows against one bank normalises it once
        ref = l2_normalise(ref)
    k = min(int(k), ref.shape[0])
    dist = 1.0 - emb @ ref.T  # (B, N)
    if k < ref.shape[0]:
        nearest = np.partition(dist, k - 1, axis=1)[:, :k]
    else:
        nearest = dist
    return np.clip(nearest.mean(axis=1), 0.0, 2.0).astype(np.float32)


def rank_normalise(values: np.ndarray | float, reference_sorted: np.ndarray) -> np.ndarray:
    """Empirical CDF of ``reference_sorted`` evaluated at ``values``, in [0, 1].

    The i-th of n sorted references sits at ``(i + 0.5) / n`` and values in between are
    linearly interpolated (ties share their mean position). Outside the reference range the
    CDF continues with a hyperbolic tail, ``1 - (0.5/n) / (1 + d / scale)`` at a distance ``d``
    above the largest reference (mirrored below), scale = the references' standard deviation.
    It approaches 0 or 1 without reaching them in float64 (an exponential tail would round to
    1 a few dozen scales out): two clips far above every normal score keep their order, which
    the ensemble (and an AUC) needs.
    """
    return RankTable.of(reference_sorted).normalise(values)


@dataclass(frozen=True)
class RankTable:
    """What ``rank_normalise`` needs of its references, computed once: the distinct values,
    their mean positions and the tail scale.

    Why apart: the site scores normalise every window's components against the same
    references, and finding the tie groups (a sort and ``np.unique``) cost more than the
    lookup; ``SurpriseFit`` keeps one table per component.
    """

    uniq: np.ndarray
    pos: np.ndarray
    scale: float

    @classmethod
    def of(cls, reference_sorted: np.ndarray) -> RankTable:
        ref = np.asarray(reference_sorted, dtype=np.float64).ravel()
        if ref.size == 0:
            raise ValueError("rank_normalise needs at least one reference value")
        if np.any(np.diff(ref) < 0):
            ref = np.sort(ref)
        n = ref.size
        uniq, first, counts = np.unique(ref, return_index=True, return_counts=True)
        pos = (first + (counts - 1) / 2.0 + 0.5) / n  # mean position of each tie group
        scale = float(np.std(ref))
        if not np.isfinite(scale) or scale <= 0:
            scale = max(abs(float(uniq[-1])), 1.0) * 1e-3
        return cls(uniq, pos, scale)

    def normalise(self, values: np.ndarray | float) -> np.ndarray:
        """``rank_normalise(values, references)`` of the references this table was made of."""
        uniq, pos, scale = self.uniq, self.pos, self.scale
        vals = np.asarray(values, dtype=np.float64)
        out = np.interp(vals, uniq, pos)
        lo, hi = float(uniq[0]), float(uniq[-1])
        below = vals < lo
        above = vals > hi
        if np.any(below):
            out = np.where(below, pos[0] / (1.0 + np.maximum(lo - vals, 0.0) / scale), out)
        if np.any(above):
            out = np.where(above, 1.0 - (1.0 - pos[-1]) / (1.0 + np.maximum(vals - hi, 0.0) / scale), out)
        return np.clip(out, 0.0, 1.0)


def ensemble(
    ce: np.ndarray | float,
    knn: np.ndarray | float,
    ref_ce: np.ndarray,
    ref_knn: np.ndarray,
) -> np.ndarray:
    """Mean of the rank-normalised ce and knn scores, in [0, 1].

    ``ref_ce`` and ``ref_knn`` are the held-out normal scores of the clip's class (stored
    sorted in ``thresholds.json``); rank normalisation puts both scores on one scale where
    0.5 means "a typical normal clip".
    """
    return 0.5 * (rank_normalise(ce, ref_ce) + rank_normalise(knn, ref_knn))


__all__ = ["DEFAULT_KNN_K", "ensemble", "knn_scores", "l2_normalise", "rank_normalise"]
