"""A covariance estimate that stays usable with few independent windows: Ledoit-Wolf shrinkage.

Why: the indicator score is a Mahalanobis distance over a few dozen correlated indicators, fitted
on enrolment windows that overlap by 90 % (a few minutes hold only a few dozen independent
stretches). The sample covariance is then ill-conditioned and its inverse amplifies noise in the
smallest directions; shrinking it towards a scaled identity with the Ledoit-Wolf (2004) optimal
intensity keeps the inverse stable without a tuning knob. numpy only (the device has no
sklearn); ``tests/core/test_site_covariance.py`` compares it with sklearn where installed.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

EIGEN_FLOOR = 1e-9
"""Eigenvalues of a covariance below this fraction of the largest are raised to it before
inverting (only reachable with no shrinkage and collinear indicators)."""


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrunk covariance of the rows of ``x`` (n, p) and the shrinkage intensity in [0, 1].

    With ``S`` the (mean-centred, 1/n) sample covariance and ``m = tr(S) / p``, the estimate is
    ``(1 - a) S + a m I`` with ``a = min(b2, d2) / d2``, where, in the Frobenius norm scaled by
    ``1/p``, ``d2 = ||S - m I||^2`` (how far S is from the target) and
    ``b2 = (1/n^2) sum_k ||x_k x_k' - S||^2`` (how noisy S is), which expands to
    ``(mean_k ||x_k||^4 - ||S||^2) / (n p)``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"ledoit_wolf needs an (n >= 1, p) array, got shape {x.shape}")
    n, p = x.shape
    xc = x - x.mean(axis=0, keepdims=True)
    s = xc.T @ xc / n
    m = float(np.trace(s)) / p
    s_norm2 = float(np.sum(s * s))
    d2 = (s_norm2 - 2.0 * m * float(np.trace(s)) + p * m * m) / p
    row4 = np.sum(xc * xc, axis=1) ** 2
    b2_bar = (float(row4.mean()) - s_norm2) / (n * p)
    b2 = min(max(b2_bar, 0.0), d2)
    shrinkage = 0.0 if d2 <= 0 else b2 / d2
    cov = (1.0 - shrinkage) * s + shrinkage * m * np.eye(p)
    return cov, float(shrinkage)


def stable_inverse(cov: np.ndarray) -> np.ndarray:
    """Symmetric inverse through the eigendecomposition, small eigenvalues floored."""
    cov = np.asarray(cov, dtype=np.float64)
    cov = 0.5 * (cov + cov.T)
    vals, vecs = np.linalg.eigh(cov)
    top = float(vals.max()) if vals.size else 0.0
    if not top > 0:
        return np.eye(cov.shape[0])
    vals = np.maximum(vals, EIGEN_FLOOR * top)
    return (vecs / vals) @ vecs.T


__all__ = ["EIGEN_FLOOR", "ledoit_wolf", "stable_inverse"]
