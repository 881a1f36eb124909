"""Putting every score component on one scale: surprise against its own normal distribution.

Why: the components live on unrelated scales (a Mahalanobis distance, a cosine distance, a
cross-entropy), and what makes a value alarming is how rarely normal audio reaches it. So each
component's out-of-fold normal scores (``holdout``) are fitted with the project's one gamma fit
(``edge_asd.core.thresholds.fit_gamma``), and a score ``s`` becomes

    surprise(s) = -log10 P_normal(S >= s), clipped to [0, SURPRISE_MAX]

(1 = one normal window in ten gets there, 5 = one in 100 000). When the gamma fit is impossible
(fewer than ``MIN_FIT_CLIPS`` scores, or all equal) the empirical tail stands in:
``1 - rank_normalise(s, references)`` of ``edge_asd.core.scoring``, which continues beyond the
largest reference with a hyperbolic tail so that two values above every normal keep their order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_asd.core.scoring import RankTable
from edge_asd.core.thresholds import fit_gamma, gamma_sf

logger = logging.getLogger(__name__)

SURPRISE_MAX = 50.0
"""Surprise is clipped here (P = 1e-50): far beyond any false-alarm rate, and it keeps every
value finite for strict JSON."""

_P_MIN = 10.0**-SURPRISE_MAX
"""The smallest tail probability a surprise is taken of (its log is SURPRISE_MAX)."""


def _clipped_surprise(p: float) -> float:
    """``-log10 p`` clipped to [0, SURPRISE_MAX] (a non-finite score's p is 0: SURPRISE_MAX)."""
    return min(max(-math.log10(max(p, _P_MIN)), 0.0), SURPRISE_MAX) + 0.0  # + 0.0: no -0.0 in payloads


@dataclass
class SurpriseFit:
    """How one component's normal scores are distributed: a gamma fit, or the sorted scores only."""

    reference: np.ndarray
    """Sorted out-of-fold normal scores the fit was made on (float64)."""
    fit: dict[str, Any] | None = None
    """``{"dist": "gamma", "shape", "loc", "scale"}``, or None for the empirical tail."""
    extra: dict[str, Any] = field(default_factory=dict)
    _rank: RankTable | None = field(default=None, init=False, repr=False, compare=False)
    """The empirical tail's lookup table of ``reference``, made at the first window scored."""

    @property
    def method(self) -> str:
        return "gamma" if self.fit is not None else "empirical"

    def p_exceed(self, scores: np.ndarray | float) -> np.ndarray:
        """P_normal(S >= s) for every score (float64, same shape as ``scores``, 1-D at least)."""
        s = np.atleast_1d(np.asarray(scores, dtype=np.float64))
        if self.fit is None:
            if self._rank is None:
                self._rank = RankTable.of(self.reference)
            return np.minimum(np.maximum(1.0 - self._rank.normalise(s), 0.0), 1.0)
        return np.array(self._gamma_tail(s), dtype=np.float64).reshape(s.shape)

    def _gamma_tail(self, scores: np.ndarray) -> list[float]:
        """The gamma fit's P(S >= s) of every score in Python floats (0 for a non-finite one):
        ``gamma_sf`` is a Python loop, run once per window and component."""
        assert self.fit is not None
        shape, loc, scale = float(self.fit["shape"]), float(self.fit["loc"]), float(self.fit["scale"])
        return [gamma_sf((v - loc) / scale, shape) if math.isfinite(v) else 0.0 for v in scores.reshape(-1).tolist()]

    def surprise(self, scores: np.ndarray | float) -> np.ndarray:
        """``-log10 P_normal(S >= s)`` clipped to [0, SURPRISE_MAX], float64."""
        if self.fit is not None:
            # In Python floats, one score at a time: gamma_sf is a Python loop anyway, and the
            # daemon asks for one window's score of each component per hop, where the numpy
            # calls around it cost more than the tail probability itself. The batch takes the
            # same steps, so one window and a batch get the same numbers.
            s = np.atleast_1d(np.asarray(scores, dtype=np.float64))
            return np.array([_clipped_surprise(p) for p in self._gamma_tail(s)], dtype=np.float64).reshape(s.shape)
        # np.maximum/np.minimum rather than np.clip (the same numbers, NaN kept, without
        # np.clip's Python layers).
        out = -np.log10(np.maximum(self.p_exceed(scores), _P_MIN))  # > 0: no log of 0
        return np.minimum(np.maximum(out, 0.0), SURPRISE_MAX) + 0.0  # + 0.0: no -0.0 in payloads

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "fit": self.fit, "n": int(self.reference.size)}


def fit_surprise(scores: np.ndarray, what: str = "") -> SurpriseFit:
    """Fit the normal distribution of one component from its out-of-fold normal scores."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    x = np.sort(x[np.isfinite(x)])
    if x.size == 0:
        raise ValueError(f"{what or 'component'}: no finite normal score to fit")
    fit = fit_gamma(x)
    if fit is None:
        logger.info("%s: gamma fit impossible on %d scores: empirical tail", what or "component", x.size)
    return SurpriseFit(reference=x, fit=fit)


__all__ = ["SURPRISE_MAX", "SurpriseFit", "fit_surprise"]
