"""The score components of site learning, each "higher = more anomalous".

* ``indicators``: how far a window's condition indicators lie from the enrolled normal. Each
  indicator is standardised robustly (median, 1.4826 x MAD, so an odd forklift in the
  enrolment audio does not widen "normal"; the scale has a floor so an indicator that was
  constant during enrolment cannot explode), then the window's Mahalanobis distance is taken
  with a Ledoit-Wolf shrunk covariance of the standardised enrolment windows (indicators are
  correlated: level and band levels move together; the distance counts a joint move once).
  Windows the operator marked normal (feedback) are kept as exemplars, and the score is
  ``min(Mahalanobis distance, min over exemplars of the whitened distance / sqrt(2))``. Why
  ``sqrt(2)``: a window and an exemplar that are two independent draws of the same Gaussian
  mode differ by a vector of covariance ``2 Sigma``, so their whitened distance is ``sqrt(2)``
  times that of one draw from the mode's centre; dividing puts both terms on one scale.
* ``knn``: the mean cosine distance to the ``k`` nearest enrolled embeddings
  (``edge_asd.core.scoring.knn_scores``); with exemplars, ``min(knn, cosine distance to the
  nearest exemplar embedding)``: an operator-confirmed window is one point of a normal mode,
  so its single nearest distance is the evidence (k of them cannot be asked for).
* ``spectrum``: the distance of the window's fine power spectrum (``edge_asd.core.spectra``,
  dB re the window's total, 23 Hz .. 8 kHz in 7.8 Hz bins) to its **nearest enrolled spectrum**,
  ``min over enrolled windows r of D(x, r)``, where ``D`` is the mean of the ``TOP_BINS`` (5)
  largest dB deviations of ``x`` outside ``r``'s tolerance band (``r``'s maximum and minimum
  over ``SPECTRUM_TOLERANCE_BINS`` = 2 bins on either side: a line that drifts within its own
  main lobe is the same line; see that constant for the false alarms the plain absolute
  difference gave). Condition monitoring compares a narrowband spectrum with a
  baseline of the same operating condition: a machine with several speeds moves its harmonics
  with the speed, so a per-bin normal range over all windows is as wide as the modes are apart
  and hides a new line; the nearest enrolled spectrum is the baseline of the window's own mode,
  and a new tone (bearing, gear mesh, whine) of a few dB stands out against it. The five largest
  differences, not the largest one: a narrow line covers 2-4 bins of a Hann-windowed spectrum,
  and one noisy bin alone does not make an alarm. For speed, the ``SPECTRUM_CANDIDATES`` (16)
  nearest references by Euclidean distance on a coarse copy of the spectra (one matrix
  product) are found first and ``D`` is computed for them only. Many enrolled windows of one
  mode are about equally near, so the exhaustive minimum is often another of them, but rarely
  more than a few tenths of a dB lower (part of it the luck of the noise); cross-fitting uses
  the same search, so the normal distribution is fitted to what is scored. Feedback exemplars
  simply join the candidates: ``D`` is already a window-to-window distance.
* ``envelope``: per-bin robust median and scale (``robust_location_scale``, floor
  ``ENVELOPE_SCALE_FLOOR_DB``) of the window's envelope spectrum (1 Hz bins, 1-64 Hz, dB re
  the window's mean square) over the enrolled windows; the score is the mean of the ``TOP_BINS``
  largest ``|z|``. Envelope analysis is the classic bearing and belt diagnostic: a modulation
  whose *rate* changes inside one modulation band leaves the band power (an indicator) where it
  was and moves a line of the envelope spectrum. A per-bin range here, not a nearest
  baseline: one window's envelope spectrum is noisy (each bin is a mean of only ten
  periodograms, see ``ENVELOPE_SCALE_FLOOR_DB``), so the distance to the nearest enrolled
  window mostly measures that noise, while at 1 Hz resolution the operating modes move a
  modulation line by a bin or so, which the per-bin range absorbs.
  With exemplars, ``min(score, min over exemplars of the same statistic of |x - e| / scale /
  sqrt(2))`` (two draws of one mode differ by ``sqrt(2)`` of one draw's spread, as above).
* ``ce``: the model's own cross-entropy score for the stream's classes (no references; feedback
  cannot move it, only the threshold it is fused under).
"""

from __future__ import annotations

import logging
import math
from dataclasses import InitVar, dataclass, field

import numpy as np

from edge_asd.core.scoring import DEFAULT_KNN_K, knn_scores, l2_normalise
from edge_asd.core.site.covariance import ledoit_wolf, stable_inverse

logger = logging.getLogger(__name__)

INDICATORS = "indicators"
SPECTRUM = "spectrum"
ENVELOPE = "envelope"
KNN = "knn"
CE = "ce"
COMPONENTS = (INDICATORS, SPECTRUM, ENVELOPE, KNN, CE)
"""Every component, in report order: the numpy ones from the window's audio, then the model's."""

PROFILE_COMPONENTS = (SPECTRUM, ENVELOPE)
"""Components built from spectral profiles (``edge_asd.core.spectra``): present when given."""

MAD_TO_SIGMA = 1.4826
"""MAD x this = the standard deviation of a Gaussian."""

Z_CLIP = 5.0
"""Robust z-scores are clipped to +/- this before the covariance is fitted, so a stretch of
odd audio in the enrolment cannot inflate the covariance (Gaussian data passes it 6e-7 of the
time); scoring never clips."""

RELATIVE_SCALE_FLOOR = 1e-3
"""Smallest scale as a fraction of the indicator's median magnitude."""

ABSOLUTE_SCALE_FLOOR = 1e-6
"""Smallest scale of any indicator (for indicators whose median is 0)."""

EXEMPLAR_SCALE = math.sqrt(2.0)
"""Whitened distance between two draws of one Gaussian / distance of one draw to its mean."""

TOP_BINS = 5
"""``spectrum`` and ``envelope`` average the 5 largest per-bin deviations: a narrow line covers
2-4 bins of a Hann-windowed spectrum, and one noisy bin alone cannot raise the score."""

SPECTRUM_CANDIDATES = 16
"""Nearest references (Euclidean on the coarse spectrum, one matrix product) for which the
``spectrum`` distance is computed: the cost of ``D`` stays flat in the bank size (0.2 ms per
window against 600 references, where the exhaustive search takes 7 ms)."""

ENVELOPE_SCALE_FLOOR_DB = 0.5
"""Smallest per-bin scale of the ``envelope`` component. A bin of the envelope spectrum is a
mean of 10 block periodograms; for a noise-like envelope each is exponential, so the mean is
Gamma(10) / 10 and its dB value has a standard deviation of 4.34 x sqrt(trigamma(10)) = 1.4 dB
(1.35 dB measured on white noise).
A scale far below that can only come from a bin a steady modulation line dominates, where
the scatter is the line's repeatability (speed jitter, microphone); 0.5 dB, about a third of
the noise scatter, keeps such a bin from turning a 1 dB drift into a 10-sigma alarm while
leaving noise-like bins to their measured scale."""

SPECTRUM_TOLERANCE_BINS = 2
"""A line that moves by less than its Hann main lobe's half-width (2.05 bins of the 2048-point
spectrum, 16 Hz) is the same line: the ``spectrum`` distance counts only what lies outside the
reference's range over +/- 2 bins. Without it, the small speed drift of a machine within one
operating mode (and the sweep of a mode change, placed a little differently in two windows)
moves the steep flanks of its harmonics by several dB; on a continuous synthetic stream with
harmonic lines (family ``tone``, 10 min enrolled, 20 min scored) the plain per-bin difference
gave normal windows surprises up to 12.8 (threshold 6.3), the +/- 2 bin band at most 3.4. On a
noise-like bin the band costs about 0.4 dB of sensitivity (the maximum of 5 bins that each
scatter by 0.35 dB, measured on white noise)."""

_COARSE_BINS = 4
"""The ``spectrum`` candidates are searched on the mean of every 4 bins (31 Hz): as good a
pre-selection as the fine spectrum on the synthetic streams, at a quarter of the cost."""

_BLAS_MIN_BATCH = 8
"""Smaller batches multiply without BLAS (see ``SpectrumBank.nearest``)."""

_SCORE_CHUNK = 256
"""Windows scored at a time by the profile components (bounds the (B, m, bins) temporaries)."""

_VECTORISED_SORT = np.lib.NumpyVersion(np.__version__) >= "2.0.0"
"""numpy >= 2 sorts with SIMD (x86-simd-sort, Highway on ARM): ``top_mean`` sorts then."""


def robust_location_scale(x: np.ndarray, floor: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and ``1.4826 x MAD`` of ``x`` (n, K), the scale floored.

    When more than half the values are equal (MAD = 0) but the rest differ, the mean absolute
    deviation from the median (x 1.2533, also a Gaussian sigma) stands in before the floor.
    The floor is ``max(floor, RELATIVE_SCALE_FLOOR x |median|, ABSOLUTE_SCALE_FLOOR)``.
    """
    x = np.asarray(x, dtype=np.float64)
    med = np.median(x, axis=0)
    dev = np.abs(x - med)
    mad = MAD_TO_SIGMA * np.median(dev, axis=0)
    mean_dev = 1.2533 * dev.mean(axis=0)
    scale = np.where(mad > 0, mad, mean_dev)
    lower = np.maximum(RELATIVE_SCALE_FLOOR * np.abs(med), ABSOLUTE_SCALE_FLOOR)
    if floor is not None:
        lower = np.maximum(lower, np.broadcast_to(np.asarray(floor, dtype=np.float64), lower.shape))
    return med, np.maximum(scale, lower)


@dataclass
class IndicatorModel:
    """Robust standardisation plus a shrunk-covariance Mahalanobis distance, fitted on normal."""

    median: np.ndarray
    scale: np.ndarray
    center: np.ndarray
    """Mean of the (clipped) standardised enrolment windows."""
    precision: np.ndarray
    """Inverse of the Ledoit-Wolf covariance of the (clipped) standardised enrolment windows."""
    shrinkage: float

    @property
    def n_indicators(self) -> int:
        return int(self.median.size)

    def robust_z(self, x: np.ndarray) -> np.ndarray:
        """``(x - median) / scale`` per indicator, shape (B, K)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != self.n_indicators:
            raise ValueError(f"got {x.shape[1]} indicators per window, the enrolment has {self.n_indicators}")
        return (x - self.median) / self.scale

    def mahalanobis(self, x: np.ndarray) -> np.ndarray:
        """Distance of each window from the enrolled normal, shape (B,)."""
        d = self.robust_z(x) - self.center
        return np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", d, self.precision, d), 0.0))

    def exemplar_distance(self, x: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
        """Whitened distance to the nearest exemplar / sqrt(2), shape (B,) (inf without exemplars)."""
        z = self.robust_z(x)
        if exemplars is None or len(exemplars) == 0:
            return np.full(z.shape[0], np.inf)
        ze = self.robust_z(exemplars)
        # (a - b)' P (a - b) = a'Pa - 2 a'Pb + b'Pb, for all pairs at once.
        za = np.einsum("bi,ij,bj->b", z, self.precision, z)
        zb = np.einsum("ei,ij,ej->e", ze, self.precision, ze)
        cross = z @ self.precision @ ze.T
        d2 = np.maximum(za[:, None] - 2.0 * cross + zb[None, :], 0.0)
        return np.sqrt(d2.min(axis=1)) / EXEMPLAR_SCALE

    def score(self, x: np.ndarray, exemplars: np.ndarray | None = None) -> np.ndarray:
        """The ``indicators`` component: Mahalanobis distance, or less next to an exemplar."""
        dist = self.mahalanobis(x)
        if exemplars is not None and len(exemplars):
            dist = np.minimum(dist, self.exemplar_distance(x, exemplars))
        return dist


def fit_indicator_model(x: np.ndarray, scale_floor: np.ndarray | None = None) -> IndicatorModel:
    """Fit the ``indicators`` component on normal windows ``x`` (n, K)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"indicator matrix must be (n >= 1, K), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("indicator values must be finite")
    median, scale = robust_location_scale(x, scale_floor)
    z = np.clip((x - median) / scale, -Z_CLIP, Z_CLIP)
    center = z.mean(axis=0)
    cov, shrinkage = ledoit_wolf(z) if z.shape[0] > 1 else (np.eye(z.shape[1]), 1.0)
    # The scale floors say how small a change is worth an alarm; without this, an indicator
    # that hardly moved during enrolment would get its tiny variance back from the covariance.
    cov = cov + np.diag(np.maximum(0.0, 1.0 - np.diag(cov)))
    return IndicatorModel(median, scale, center, stable_inverse(cov), shrinkage)


def knn_component(
    embeddings: np.ndarray, bank: np.ndarray, exemplars: np.ndarray | None = None, k: int = DEFAULT_KNN_K,
    *, normalised: bool = False,
) -> np.ndarray:
    """The ``knn`` component: mean cosine distance to the k nearest of ``bank``, or less next
    to an exemplar embedding. Shape (B,), float64. ``normalised``: ``bank`` and ``exemplars``
    are already ``l2_normalise``d (an enrolment keeps them so)."""
    score = knn_scores(embeddings, bank, k, references_normalised=normalised).astype(np.float64)
    if exemplars is not None and len(exemplars):
        unit = exemplars if normalised else l2_normalise(exemplars)
        nearest = 1.0 - (l2_normalise(embeddings) @ unit.T).max(axis=1)
        score = np.minimum(score, np.clip(nearest.astype(np.float64), 0.0, 2.0))
    return score


def top_mean(values: np.ndarray, k: int = TOP_BINS) -> np.ndarray:
    """Mean of the ``k`` largest values along the last axis.

    ``spectrum``'s deviations (16 candidates x 1022 bins per window) are mostly exact zeros
    (bins inside the tolerance band), and numpy's introselect (``np.partition``) slows down
    several-fold on such runs of equal values. numpy 2's vectorised sort does not, and with it
    the fused score of an enrolled window cost 11-28 % less on the x86 development VM
    (``bench/hop_overhead.py --enrolled``, docs/performance.md, "Issue 13, fifth pass"). With
    numpy 1 (the Jetson's pinned 1.26), whose sort is not vectorised everywhere and was not
    measured here, the partition stays. Both take the same k values (summed in another order).
    """
    n = values.shape[-1]
    k = min(int(k), n)
    top = np.sort(values, axis=-1) if _VECTORISED_SORT else np.partition(values, n - k, axis=-1)
    # sum / k: np.mean's numbers without its Python layers (this runs three times per window)
    return top[..., n - k :].sum(axis=-1) / k


@dataclass
class SpectrumBank:
    """References of the ``spectrum`` component: power parts of profiles, ready for search.

    ``references`` (n, P) float32 in dB is kept as what ``D`` compares with: each reference's
    tolerance band (``upper``, ``lower``: ``tolerance_band``), made once here. Why: it is a
    property of the reference alone, and building the 16 candidates' bands on every window
    took half of the component's time (twelve passes over 16 x 1022 values; docs/performance.md,
    issue 13, sixth pass). It costs twice the memory of the references (8 KB per enrolled
    window instead of 4); float16 edges would have kept it at 4, but converting the candidates'
    edges back to float32 took as long as building them.
    The candidates are found on a coarse copy (the mean dB of every ``_COARSE_BINS`` adjacent
    bins, 31 Hz: the overall shape that tells the operating mode, and a quarter of the cost),
    centred on the bank's mean so that the squared norms in ``|q|^2 - 2 q.r + |r|^2`` stay
    small and float32 keeps the ordering; ``D`` is then computed on the fine spectra of the
    candidates.
    """

    references: InitVar[np.ndarray]
    tolerance: int = SPECTRUM_TOLERANCE_BINS
    upper: np.ndarray = field(init=False, repr=False)
    lower: np.ndarray = field(init=False, repr=False)
    center: np.ndarray = field(init=False, repr=False)
    _coarse: np.ndarray = field(init=False, repr=False)
    _sq: np.ndarray = field(init=False, repr=False)

    def __post_init__(self, references: np.ndarray) -> None:
        refs = np.ascontiguousarray(np.atleast_2d(np.asarray(references, dtype=np.float32)))
        self.upper, self.lower = tolerance_band(refs, self.tolerance)
        coarse = _coarsen(refs)
        self.center = coarse.mean(axis=0) if refs.shape[0] else np.zeros(coarse.shape[1], np.float32)
        self._coarse = np.ascontiguousarray(coarse - self.center)
        self._sq = np.einsum("ij,ij->i", self._coarse, self._coarse)

    def __len__(self) -> int:
        return int(self.upper.shape[0])

    def nearest(self, x: np.ndarray, candidates: int = SPECTRUM_CANDIDATES, k: int = TOP_BINS) -> np.ndarray:
        """``min over references r of D(x, r)`` for each row of ``x`` (B, P), among the
        ``candidates`` nearest references on the coarse spectrum; inf for an empty bank."""
        q_all = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if q_all.shape[1] != self.upper.shape[1]:
            raise ValueError(f"got spectra of {q_all.shape[1]} bins, the references have {self.upper.shape[1]}")
        out = np.full(q_all.shape[0], np.inf)
        n = len(self)
        if n == 0:
            return out
        m = min(int(candidates), n)
        for lo in range(0, q_all.shape[0], _SCORE_CHUNK):
            q = q_all[lo : lo + _SCORE_CHUNK]
            qc = _coarsen(q) - self.center
            # A live window (b = 1) takes einsum's own loop: BLAS would spread a matrix-vector
            # product over threads that stall when the CPU is busy. Enrolment batches take BLAS.
            cross = np.einsum("bj,nj->bn", qc, self._coarse) if q.shape[0] < _BLAS_MIN_BATCH else qc @ self._coarse.T
            # Ranking only: |q|^2 is the same for every reference of a row, so it is left out.
            d2 = self._sq[None, :] - 2.0 * cross
            idx = np.argpartition(d2, m - 1, axis=1)[:, :m] if m < n else np.broadcast_to(np.arange(n), d2.shape)
            # Fancy indexing copies: band_deviation works in those copies.
            deviation = band_deviation(q, self.upper[idx], self.lower[idx])
            out[lo : lo + q.shape[0]] = top_mean(deviation, k).min(axis=1)
        return out


def _coarsen(spectra_db: np.ndarray) -> np.ndarray:
    """Mean dB of every ``_COARSE_BINS`` adjacent bins (a trailing remainder is dropped), float32."""
    n, p = spectra_db.shape
    g = p // _COARSE_BINS
    return spectra_db[:, : g * _COARSE_BINS].reshape(n, g, _COARSE_BINS).mean(axis=2, dtype=np.float32)


def tolerance_band(refs: np.ndarray, tolerance: int = SPECTRUM_TOLERANCE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower): each reference spectrum's maximum and minimum over the ``tolerance``
    bins on either side of every bin, same shape as ``refs`` (a new pair of arrays)."""
    upper = refs.copy()
    lower = refs.copy()
    for s in range(1, int(tolerance) + 1):  # shifted extremes: cheaper than a strided window reduction
        np.maximum(upper[..., s:], refs[..., :-s], out=upper[..., s:])
        np.maximum(upper[..., :-s], refs[..., s:], out=upper[..., :-s])
        np.minimum(lower[..., s:], refs[..., :-s], out=lower[..., s:])
        np.minimum(lower[..., :-s], refs[..., s:], out=lower[..., :-s])
    return upper, lower


def band_deviation(q: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Per-bin dB by which each query spectrum ``q`` (b, P) lies outside the tolerance bands
    ``upper``/``lower`` (b, m, P) of its m references: above the maximum or below the minimum.
    Shape (b, m, P), float32, >= 0; computed in ``upper`` and ``lower`` (pass copies)."""
    qb = q[:, None, :]
    np.subtract(qb, upper, out=upper)  # > 0 above the band
    np.subtract(lower, qb, out=lower)  # > 0 below the band
    np.maximum(upper, lower, out=upper)
    return np.maximum(upper, 0.0, out=upper)


def outside_band(q: np.ndarray, refs: np.ndarray, tolerance: int = SPECTRUM_TOLERANCE_BINS) -> np.ndarray:
    """Per-bin dB by which each query spectrum ``q`` (b, P) lies outside the tolerance band of
    each of its references ``refs`` (b, m, P): above the reference's maximum, or below its
    minimum, over the ``tolerance`` bins on either side. Shape (b, m, P), float32, >= 0."""
    return band_deviation(q, *tolerance_band(refs, tolerance))


def spectrum_component(
    x: np.ndarray, bank: SpectrumBank, exemplars: SpectrumBank | None = None
) -> np.ndarray:
    """The ``spectrum`` component of power parts ``x`` (B, P): the distance ``D`` to the nearest
    enrolled spectrum, or to the nearest exemplar where that is nearer. Shape (B,), float64."""
    score = bank.nearest(x)
    if exemplars is not None and len(exemplars):
        score = np.minimum(score, exemplars.nearest(x))
    return score


@dataclass
class EnvelopeModel:
    """Per-bin robust normal range of the envelope spectrum (``envelope`` component)."""

    median: np.ndarray
    scale: np.ndarray

    def z(self, x: np.ndarray) -> np.ndarray:
        """``(x - median) / scale`` per bin, shape (B, E)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != self.median.size:
            raise ValueError(f"got {x.shape[1]} envelope bins per window, the enrolment has {self.median.size}")
        return (x - self.median) / self.scale

    def exemplar_distance(self, x: np.ndarray, exemplars: np.ndarray | None) -> np.ndarray:
        """Mean of the 5 largest ``|x - e| / scale`` to the nearest exemplar, / sqrt(2) (inf without)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        out = np.full(x.shape[0], np.inf)
        if exemplars is None or len(exemplars) == 0:
            return out
        # float32: half the memory traffic of the (b, exemplars, bins) differences (up to 2000 exemplars)
        inv = (1.0 / self.scale).astype(np.float32)
        e = np.atleast_2d(np.asarray(exemplars, dtype=np.float32)) * inv
        xs = x.astype(np.float32) * inv
        step = max(1, _SCORE_CHUNK * 16 // max(1, e.shape[0]))
        for lo in range(0, xs.shape[0], step):
            diff = np.abs(xs[lo : lo + step, None, :] - e[None, :, :])
            out[lo : lo + step] = top_mean(diff).min(axis=1)
        return out / EXEMPLAR_SCALE

    def score(self, x: np.ndarray, exemplars: np.ndarray | None = None) -> np.ndarray:
        """The ``envelope`` component: mean of the 5 largest ``|z|``, or less next to an exemplar."""
        score = top_mean(np.abs(self.z(x)))
        if exemplars is not None and len(exemplars):
            score = np.minimum(score, self.exemplar_distance(x, exemplars))
        return score


def fit_envelope_model(x: np.ndarray) -> EnvelopeModel:
    """Fit the ``envelope`` component on the envelope parts ``x`` (n, E) of normal windows."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"envelope matrix must be (n >= 1, E), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("envelope spectra must be finite")
    median, scale = robust_location_scale(x, ENVELOPE_SCALE_FLOOR_DB)
    return EnvelopeModel(median, scale)


__all__ = [
    "CE",
    "COMPONENTS",
    "ENVELOPE",
    "ENVELOPE_SCALE_FLOOR_DB",
    "EXEMPLAR_SCALE",
    "INDICATORS",
    "KNN",
    "MAD_TO_SIGMA",
    "PROFILE_COMPONENTS",
    "SPECTRUM",
    "SPECTRUM_CANDIDATES",
    "SPECTRUM_TOLERANCE_BINS",
    "TOP_BINS",
    "Z_CLIP",
    "EnvelopeModel",
    "IndicatorModel",
    "SpectrumBank",
    "fit_envelope_model",
    "fit_indicator_model",
    "knn_component",
    "outside_band",
    "robust_location_scale",
    "spectrum_component",
    "top_mean",
]
