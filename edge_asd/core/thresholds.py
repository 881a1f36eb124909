"""The one threshold fit: a gamma distribution over normal scores, numpy only.

A threshold is needed per class or per stream because the score scale differs per machine: a
noisy pump's normal windows score higher than a quiet valve's. A few dozen normal scores tell
nothing beyond their own maximum, so they are fitted with a gamma distribution, the usual model
for a positive, right-skewed anomaly score (the DCASE 2021+ baselines do the same), and the
threshold is its ``ppf(1 - false_alarm_rate)``.

Both the trainer (``calibrate-run``, held-out clips) and the device (``calibrate``/``enrol``,
windows of the site's own audio) call this module, so a threshold means the same everywhere.
The device has no scipy, hence the maximum-likelihood fit and the quantile are written here
with the textbook numerics (digamma by recurrence and asymptotic series, Newton on the shape
equation, the regularised incomplete gamma by series or continued fraction, the quantile by
bisection). Tests compare them with scipy where scipy is installed.

Loc handling: scores are >= 0 by construction (cross-entropy, cosine distance, fused score),
so the fit fixes ``loc`` just below the smallest observed score (a free 3-parameter MLE is
unstable on a few dozen points and can put ``loc`` far below the data, bloating the tail).
With fewer than ``MIN_FIT_CLIPS`` scores or a degenerate spread the threshold falls back to an
empirical quantile, with a warning, because a gamma fit to a handful of points is a guess.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MIN_FIT_CLIPS = 8
"""Fewer normal scores than this: no gamma fit, empirical quantile instead."""

QUANTILES = (0.5, 0.9, 0.95, 0.99)
"""Empirical quantiles stored beside the fit, so a user can see what the tail was fitted to."""

LOC_MARGIN = 0.05
"""``loc`` sits this fraction of the score spread below the smallest score."""


def digamma(x: float) -> float:
    """psi(x) for x > 0: recurrence up to x >= 6, then the asymptotic series (error < 1e-12)."""
    acc = 0.0
    while x < 6.0:
        acc -= 1.0 / x
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    series = inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 * (1 / 240 - inv2 * (1 / 132)))))
    return acc + math.log(x) - 0.5 * inv - series


def trigamma(x: float) -> float:
    """psi'(x) for x > 0, by the same recurrence and its asymptotic series."""
    acc = 0.0
    while x < 6.0:
        acc += 1.0 / (x * x)
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    return acc + inv + 0.5 * inv2 + inv * inv2 * (1 / 6 - inv2 * (1 / 30 - inv2 * (1 / 42 - inv2 * (1 / 30))))


def gamma_sf(x: float, shape: float) -> float:
    """Upper regularised incomplete gamma Q(shape, x) = P(X > x) for a unit-scale gamma."""
    if x <= 0:
        return 1.0
    log_front = shape * math.log(x) - x - math.lgamma(shape)
    if x < shape + 1.0:  # series for P converges fast here
        term = total = 1.0 / shape
        a = shape
        for _ in range(10000):
            a += 1.0
            term *= x / a
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - math.exp(log_front) * total)
    # Continued fraction for Q (modified Lentz).
    tiny = 1e-300
    b = x + 1.0 - shape
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - shape)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return math.exp(log_front) * h


def gamma_isf(p_exceed: float, shape: float, loc: float = 0.0, scale: float = 1.0) -> float:
    """The value exceeded with probability ``p_exceed``: ``ppf(1 - p_exceed)``.

    Solved on the upper tail directly (Q, not 1 - P) so a 1e-6 false-alarm rate keeps its
    precision; bisection, because Q is monotone and 200 halvings reach float resolution.
    """
    if not 0.0 < p_exceed < 1.0:
        raise ValueError(f"p_exceed must be in (0, 1), got {p_exceed}")
    lo, hi = 0.0, max(1.0, shape)
    while gamma_sf(hi, shape) > p_exceed:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if gamma_sf(mid, shape) > p_exceed:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return loc + scale * 0.5 * (lo + hi)


def gamma_mle_shape(y: np.ndarray) -> float:
    """Maximum-likelihood gamma shape of positive samples ``y`` (loc already removed).

    Solves ``log(a) - psi(a) = log(mean y) - mean(log y)`` by Newton from the Choi-Wette
    starting point, which is within a few per cent of the root.
    """
    s = math.log(float(np.mean(y))) - float(np.mean(np.log(y)))
    if not s > 0:
        return math.inf
    a = (3.0 - s + math.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
    for _ in range(100):
        f = math.log(a) - digamma(a) - s
        step = f / (1.0 / a - trigamma(a))
        a_next = a - step
        if a_next <= 0:
            a_next = a / 2.0
        if abs(a_next - a) <= 1e-12 * a:
            return a_next
        a = a_next
    return a


def fit_gamma(scores: Sequence[float] | np.ndarray) -> dict[str, Any] | None:
    """Gamma fit of ``scores`` with loc fixed just below their minimum; None if impossible.

    Returns ``{"dist": "gamma", "shape": a, "loc": l, "scale": s}``. The offset below the
    minimum (``LOC_MARGIN`` of the spread) keeps the smallest score inside the support, where
    the gamma log-likelihood is finite for any shape.
    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < MIN_FIT_CLIPS:
        return None
    spread = float(np.ptp(x))
    if spread <= 0:
        return None
    loc = float(x.min()) - LOC_MARGIN * spread
    if float(x.min()) > 0:
        loc = max(loc, 0.0)  # scores are non-negative: never put support below 0
    y = x - loc
    a = gamma_mle_shape(y)
    if not (math.isfinite(a) and a > 0):
        return None
    scale = float(np.mean(y)) / a
    if not (math.isfinite(scale) and scale > 0):
        return None
    return {"dist": "gamma", "shape": float(a), "loc": float(loc), "scale": float(scale)}


def gamma_threshold(fit: Mapping[str, Any], false_alarm_rate: float) -> float:
    """The score exceeded by a normal window with probability ``false_alarm_rate``."""
    return gamma_isf(false_alarm_rate, float(fit["shape"]), float(fit["loc"]), float(fit["scale"]))


def empirical_quantiles(scores: np.ndarray) -> dict[str, float]:
    x = np.asarray(scores, dtype=np.float64)
    return {str(q): float(np.quantile(x, q)) for q in QUANTILES}


def threshold_for(scores: np.ndarray, false_alarm_rate: float, what: str = "") -> tuple[float, dict | None]:
    """Threshold and fit for one set of normal scores.

    Falls back (with a warning) to the empirical ``1 - p`` quantile, which for few scores is
    close to their maximum: an optimistic threshold that will raise more false alarms than
    asked for, hence the warning that says to provide more normal audio.
    """
    x = np.asarray(scores, dtype=np.float64)
    fit = fit_gamma(x)
    if fit is not None:
        thr = gamma_threshold(fit, false_alarm_rate)
        if math.isfinite(thr):
            return thr, fit
    logger.warning(
        "%s: only %d normal scores (or a degenerate score spread): threshold is the empirical "
        "%.4g quantile instead of a gamma fit; provide more normal audio for a reliable one",
        what or "scores",
        x.size,
        1 - false_alarm_rate,
    )
    return float(np.quantile(x, 1.0 - false_alarm_rate)), None


__all__ = [
    "MIN_FIT_CLIPS",
    "QUANTILES",
    "digamma",
    "empirical_quantiles",
    "fit_gamma",
    "gamma_isf",
    "gamma_sf",
    "gamma_threshold",
    "threshold_for",
    "trigamma",
]
