"""Classic machine-condition indicators of one 10 s window, computed from 1 s blocks.

Why this module exists: on a site with only minutes of normal audio, a learned score trained
on those clips is near chance, while the statistics that vibration and acoustic condition
monitoring has used for decades (level, crest factor, kurtosis, spectral shape, tones,
modulation) separate normal from faulty sound well. This module computes one fixed, documented
set of them for every machine, with no per-dataset choice, so that enrolment, scoring and the
explanations of an event all read the same numbers. numpy only: it runs on the device.

**Why blocks.** The live daemon scores a 10 s window every 1 s, so 90 % of each window was
already seen. Every indicator is therefore built from sufficient statistics of 1 s blocks
(``block_stats``) that ``combine`` merges exactly: the daemon computes the statistics of the new
block only and combines the last ten. ``compute(window)`` is, by definition, ``combine`` of the
ten blocks of the window, so the offline path (enrolment, ``evaluate-site``) and the live path
give bit-identical numbers. The daemon scores every stream in one tick, so each step also
has a batched form that is its one implementation: ``block_stats_many`` (S blocks),
``combine_many`` (W windows; most of a single window's cost is numpy's per-call overhead,
shared here) and ``spectra.profile_many``; a row never depends on the rest of its batch.
What a block holds (about 7 KB):

* central power sums (orders 2-4; order 1 is in the frame sums) about the block mean, in
  float64, and the block's extremes: shifted to the window mean in ``combine`` (binomial
  expansion), they give the mean-removed RMS, peak and kurtosis of the whole window exactly;
* per 100-sample frame (6.25 ms), the sum and the sum of squares about the block mean: the
  short-frame energies (impulsiveness, pairs of frames = 12.5 ms) and the amplitude envelope
  (160 Hz rate) of the window, again mean-removed with the window mean;
* the mean one-sided power spectrum of 15 periodic-Hann frames of 2000 samples (hop 1000, 50 %
  overlap, all inside the block), zero-padded to 2048 points (7.8125 Hz bins); each frame is
  detrended by its Hann-weighted mean, so the DC bin is exactly zero. The window's spectrum is
  the mean of the ten block spectra (150 frames, Welch's method);
* the sum of the spectral flux between consecutive frames of the block (flux never spans two
  blocks, so it decomposes).

**Floors.** Silence, or a DC-only input, must not give NaN or inf. Every power is floored as if
white Gaussian noise of mean square ``POWER_FLOOR`` = 1e-12 (-120 dBFS) were added to the
window: the variance gains ``POWER_FLOOR``, the fourth moment gains ``6 var F + 3 F^2`` (so
silence has kurtosis 3), every spectrum bin gains its share of ``POWER_FLOOR`` (about 1e-15 per
7.8 Hz bin, so silence has a white spectrum: flatness 0 dB, no tones), every frame energy and
the squared peak gain ``POWER_FLOOR``. Ratios in dB (modulation bands) are floored at -120 dB.
The floor is far below any real microphone's noise (16-bit audio's quantisation noise is near
-101 dBFS), so it changes no real reading.

**Units.** ``dBFS`` is ``20 log10`` of an RMS or peak amplitude relative to 1.0 (full scale),
so a full-scale sine has an RMS level of -3.01 dBFS and a peak level of 0 dBFS; ``dB`` is a
level difference or a power ratio; ``Hz`` a frequency; ``""`` a dimensionless ratio (see
``UNITS``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Fixed analysis parameters (one default set for every machine)
# --------------------------------------------------------------------------------------------

BLOCK_SAMPLES = 16000
"""One block: 1 s at 16 kHz, the hop of the live path."""

BLOCKS_PER_WINDOW = WINDOW_SAMPLES // BLOCK_SAMPLES
"""Ten blocks make one model window; the indicators are defined (and calibrated) on ten."""

POWER_FLOOR = 1e-12
"""Mean-square floor (-120 dBFS): notional white noise added so that silence stays finite."""

RATIO_FLOOR_DB = -120.0
"""Lowest value of a power ratio in dB (modulation bands of a perfectly steady envelope)."""

FRAME_SAMPLES = 2000
"""Spectral frame: 125 ms, long enough for 8 Hz resolution, short enough that 15 fit a block."""

FRAME_HOP = 1000
"""50 % overlap: periodic Hann frames at this hop weight every sample of a block's middle equally."""

FRAMES_PER_BLOCK = (BLOCK_SAMPLES - FRAME_SAMPLES) // FRAME_HOP + 1
"""15 spectral frames per block, none crossing a block boundary (so blocks stay independent)."""

N_FFT = 2048
"""FFT length (frames zero-padded): bins of 7.8125 Hz."""

BIN_HZ = SAMPLE_RATE / N_FFT
"""Width of one spectrum bin in Hz."""

N_BINS = N_FFT // 2
"""Spectrum bins kept: 1 .. N_FFT/2 (7.8 Hz .. 8 kHz); the DC bin is zero after detrending."""

ENV_FRAME_SAMPLES = 100
"""Envelope frame: 6.25 ms, so the envelope runs at 160 Hz and resolves modulation up to 80 Hz."""

ENV_RATE = SAMPLE_RATE / ENV_FRAME_SAMPLES
"""Sample rate of the amplitude envelope (160 Hz)."""

ENV_FRAMES_PER_BLOCK = BLOCK_SAMPLES // ENV_FRAME_SAMPLES
"""160 envelope frames per block."""

ENERGY_FRAME_SAMPLES = 200
"""Short-frame energy for impulsiveness: 12.5 ms (two envelope frames), about one impact."""

ROLLOFF_FRACTION = 0.85
"""Spectral roll-off: the frequency below which this fraction of the power lies."""

TONAL_NEIGHBOURHOOD_BINS = 32
"""Local spectral floor of a tonal peak: median of +/- 32 bins (+/- 250 Hz) around it."""

TONAL_PEAK_HALFWIDTH_BINS = 3
"""A tonal peak is the maximum within +/- 3 bins: wider than a Hann main lobe (+/- 2.05 bins),
so the samples of one tone's lobes never count as a second tone."""

TONAL_MIN_HZ = 20.0
"""Tonal peaks are searched from 20 Hz up: below, a 125 ms frame resolves too little and slow
drift of the DC offset dominates."""

TONAL_COUNT_DB = 10.0
"""Prominence above the local floor for a peak to count as a tone."""

MODULATION_BANDS_HZ: tuple[tuple[float, float], ...] = ((0.5, 4.0), (4.0, 16.0), (16.0, 64.0))
"""Envelope-spectrum bands: slow (cycles, belt slap), medium (rotation, knocks), fast
(bearing defect frequencies of small machines)."""

_BAND_EXPONENTS = tuple(range(-16, 10))
"""IEC 61260 base-ten third-octave band numbers: 1000 * 10**(n/10) Hz, 25 Hz .. 8 kHz."""

BAND_NOMINAL_HZ: tuple[float, ...] = (
    25.0, 31.5, 40.0, 50.0, 63.0, 80.0, 100.0, 125.0, 160.0, 200.0, 250.0, 315.0, 400.0,
    500.0, 630.0, 800.0, 1000.0, 1250.0, 1600.0, 2000.0, 2500.0, 3150.0, 4000.0, 5000.0,
    6300.0, 8000.0,
)  # fmt: skip
"""Nominal third-octave centres (the names operators know)."""

BAND_CENTRES_HZ: tuple[float, ...] = tuple(1000.0 * 10.0 ** (n / 10.0) for n in _BAND_EXPONENTS)
"""Exact base-ten centres; edges are centre * 10**(+/-1/20); the 8 kHz band stops at Nyquist."""

BATCH_BLOCKS = 256
"""Most blocks per ``block_stats_many`` call in the offline paths (``block_stats_of``): a long
recording goes through in bounded slices (16 MB of float32 samples, copied when the recording
is strided), and one warning covers at most this many blocks."""

GROUP_WINDOWS = 32
"""Windows that ``combine_many`` and ``spectra.profile_many`` process together: enough to share
numpy's per-call overhead, few enough that the temporaries stay small (a few MB)."""

UNITS: dict[str, str] = {
    "dBFS": "decibels of an RMS or peak amplitude relative to full scale (1.0); "
    "a full-scale sine has an RMS level of -3.01 dBFS",
    "dB": "decibels: a level difference or a power ratio",
    "Hz": "hertz",
    "": "dimensionless ratio",
}
"""Every unit an indicator may declare, with what it means."""

# --------------------------------------------------------------------------------------------
# The indicator set
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Indicator:
    """One condition indicator: how to name it to a program and to an operator, and why it matters."""

    name: str
    """snake_case identifier, e.g. ``crest_factor``."""
    label: str
    """Words for an operator, e.g. ``crest factor``, ``2.5 kHz band``."""
    unit: str
    """A key of ``UNITS``: ``dBFS``, ``dB``, ``Hz`` or ``""`` (a ratio)."""
    kind: str
    """``level``, ``impulsive``, ``spectral``, ``band``, ``tonal`` or ``modulation``."""
    reveals: str
    """What fault moves it (one sentence)."""


KINDS = ("level", "impulsive", "spectral", "tonal", "modulation", "band")
"""The kinds an indicator can be, in the order ``INDICATORS`` lists them."""


def _band_name(nominal: float) -> str:
    text = f"{nominal:g}".replace(".", "_")
    return f"band_{text}hz"


def _band_label(nominal: float) -> str:
    if nominal >= 1000.0:
        return f"{nominal / 1000.0:g} kHz band"
    return f"{nominal:g} Hz band"


_SCALAR_INDICATORS: tuple[Indicator, ...] = (
    Indicator(
        "rms_level", "RMS level", "dBFS", "level",
        "Overall level: rises with load, speed and general wear, falls when a machine slows or "
        "stops; a microphone gain or position change also moves it.",
    ),
    Indicator(
        "peak_level", "peak level", "dBFS", "level",
        "Largest excursion of the window: impacts, clicks and rubs raise it.",
    ),
    Indicator(
        "crest_factor", "crest factor", "dB", "impulsive",
        "Peak over RMS: rises with impulsive faults (bearing spalls, loose parts), falls when "
        "normal impacts weaken or vanish.",
    ),
    Indicator(
        "kurtosis", "kurtosis", "", "impulsive",
        "Fourth moment over squared variance (3 for Gaussian noise, 1.5 for a sine): rises with "
        "impulsiveness, an early sign of bearing faults.",
    ),
    Indicator(
        "impulsiveness_p95", "impulsiveness (95th percentile)", "dB", "impulsive",
        "95th minus 50th percentile of 12.5 ms frame energies: intermittent events (knocks, "
        "chatter) that occupy a few percent of the window.",
    ),
    Indicator(
        "impulsiveness_max", "impulsiveness (maximum)", "dB", "impulsive",
        "Loudest 12.5 ms frame minus the median frame: a single impact, click or burst.",
    ),
    Indicator(
        "spectral_centroid", "spectral centroid", "Hz", "spectral",
        "Power-weighted mean frequency (brightness): friction, cavitation and high-frequency "
        "wear raise it, a lost high-frequency component lowers it.",
    ),
    Indicator(
        "spectral_rolloff", "spectral roll-off (85 %)", "Hz", "spectral",
        "Frequency below which 85 % of the power lies: moves when broadband high-frequency "
        "noise (friction, leaks, cavitation) appears or disappears.",
    ),
    Indicator(
        "spectral_flatness", "spectral flatness", "dB", "spectral",
        "Geometric over arithmetic mean of the spectrum (0 dB white, very negative for pure "
        "tones): falls when a tone appears (imbalance, gear mesh, hum), rises when one vanishes.",
    ),
    Indicator(
        "spectral_flux", "spectral flux", "", "spectral",
        "Mean change of the normalised magnitude spectrum between 62.5 ms frames (0 steady .. "
        "1.41): non-stationarity such as surging, hunting or intermittent contact.",
    ),
    Indicator(
        "tonal_prominence", "strongest tone prominence", "dB", "tonal",
        "How far the strongest narrow peak stands above its local spectral floor: a new or "
        "stronger tone (imbalance at 1x rotation, misalignment at 2x, gear mesh, electrical hum).",
    ),
    Indicator(
        "tonal_peak_count", "tonal peak count", "", "tonal",
        "Number of narrow peaks more than 10 dB above the local floor: harmonics and sidebands "
        "appearing (looseness, gear wear) or tones vanishing.",
    ),
    Indicator(
        "modulation_depth", "modulation depth", "", "modulation",
        "Envelope fluctuation as an AM index (sqrt 2 x std / mean of the 6.25 ms RMS envelope; "
        "1.0 for full sinusoidal AM): periodic knocks, belt slap, cyclic load.",
    ),
    Indicator(
        "modulation_0_5_4hz", "0.5-4 Hz modulation", "dB", "modulation",
        "Envelope power between 0.5 and 4 Hz relative to the mean envelope: slow cyclic load, "
        "belt slap, slow rotation or reciprocating strokes.",
    ),
    Indicator(
        "modulation_4_16hz", "4-16 Hz modulation", "dB", "modulation",
        "Envelope power between 4 and 16 Hz relative to the mean envelope: periodic knocks at "
        "rotation rate, misfiring, loose parts striking once per turn.",
    ),
    Indicator(
        "modulation_16_64hz", "16-64 Hz modulation", "dB", "modulation",
        "Envelope power between 16 and 64 Hz relative to the mean envelope: bearing defect "
        "frequencies and fast repetitive impacts (envelope analysis).",
    ),
)  # fmt: skip

_BAND_INDICATORS: tuple[Indicator, ...] = tuple(
    Indicator(
        _band_name(nominal),
        _band_label(nominal),
        "dB",
        "band",
        f"Third-octave band level at {_band_label(nominal).replace(' band', '')} relative to the total "
        "power: spectral shape, moved by resonances, flow changes, clogging and new sources in "
        "that range.",
    )
    for nominal in BAND_NOMINAL_HZ
)

INDICATORS: tuple[Indicator, ...] = _SCALAR_INDICATORS + _BAND_INDICATORS
"""The fixed set, in the fixed order of ``compute``'s output vector."""

INDICATOR_NAMES: tuple[str, ...] = tuple(ind.name for ind in INDICATORS)
"""Names of ``INDICATORS``, in order."""

_N_SCALAR = len(_SCALAR_INDICATORS)

# --------------------------------------------------------------------------------------------
# Precomputed analysis tables
# --------------------------------------------------------------------------------------------

_HANN = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(FRAME_SAMPLES) / FRAME_SAMPLES)).astype(np.float64)
_HANN_SUM = float(_HANN.sum())
# One-sided power scaling: sum over bins 1..N/2 of the power equals the frame's mean square.
_POWER_SCALE = np.full(N_BINS, 2.0 / (N_FFT * float(np.sum(_HANN**2))))
_POWER_SCALE[-1] /= 2.0  # the Nyquist bin has no mirror image
_FREQS = np.arange(1, N_BINS + 1, dtype=np.float64) * BIN_HZ
_NYQUIST = SAMPLE_RATE / 2.0
# Bin k covers [(k - 1/2), (k + 1/2)] * BIN_HZ, clipped to Nyquist.
_BIN_LO = _FREQS - BIN_HZ / 2.0
_BIN_HI = np.minimum(_FREQS + BIN_HZ / 2.0, _NYQUIST)
_BIN_FLOOR = POWER_FLOOR * (_BIN_HI - _BIN_LO) / (_BIN_HI[-1] - _BIN_LO[0])
_TONAL_FIRST = int(np.searchsorted(_FREQS, TONAL_MIN_HZ))


_BIN_EDGES = np.concatenate(([_BIN_LO[0]], _BIN_HI))
_BAND_LO = np.array([c * 10.0 ** (-1 / 20) for c in BAND_CENTRES_HZ])
_BAND_HI = np.minimum(np.array([c * 10.0 ** (1 / 20) for c in BAND_CENTRES_HZ]), _NYQUIST)
_MOD_LO = np.array([lo for lo, _ in MODULATION_BANDS_HZ])
_MOD_HI = np.array([hi for _, hi in MODULATION_BANDS_HZ])


def _interp_table(x: np.ndarray, xp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lower knot, upper knot, offset, knot spacing) that reproduce ``np.interp(x, xp, fp)``.

    Why: ``np.interp`` takes one 1-D ``fp`` per call, but the band edges (``x``) and the bin
    boundaries (``xp``) never change, so the bracketing knots are found once here and every
    batch of rows is then a gather and numpy's own arithmetic, ``(fp[j+1] - fp[j]) /
    (xp[j+1] - xp[j]) * (x - xp[j]) + fp[j]``. A point on a knot or outside ``xp`` reads ``fp``
    there (as ``np.interp`` does, with its default ends): both knots are that one, offset 0.
    """
    j = np.searchsorted(xp, x, side="right") - 1  # xp[j] <= x < xp[j + 1]
    on_knot = (x <= xp[0]) | (x >= xp[-1]) | (xp[np.clip(j, 0, xp.size - 1)] == x)
    j = np.clip(j, 0, xp.size - 1)
    upper = np.where(on_knot, j, np.minimum(j + 1, xp.size - 1))
    offset = np.where(on_knot, 0.0, x - xp[j])
    spacing = np.where(on_knot, 1.0, xp[upper] - xp[j])
    return j, upper, offset, spacing


_BAND_TABLES = (_interp_table(_BAND_LO, _BIN_EDGES), _interp_table(_BAND_HI, _BIN_EDGES))


def _cumulative(power: np.ndarray) -> np.ndarray:
    """(W, n + 1) cumulative power of (W, n) bins at the n + 1 bin boundaries (0 at the first)."""
    cumulative = np.zeros((power.shape[0], power.shape[1] + 1))
    np.cumsum(power, axis=1, out=cumulative[:, 1:])
    return cumulative


def _band_powers(
    cumulative: np.ndarray, tables: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]
) -> np.ndarray:
    """(W, bands) power between each band's edges, from the rows of ``_cumulative(power)``.

    Every bin counts by the fraction of its width inside the band, so that narrow bands (the
    25 Hz band is 5.8 Hz wide, less than one bin) are well defined. The cumulative power is
    linear inside a bin, so the fractional overlap is an interpolation at the band edges
    (``tables``: ``_interp_table`` of the lower and upper edges against the n + 1 bin
    boundaries), a gather that needs no BLAS call, whose threads stall under CPU contention.
    """
    levels = []
    for lower, upper, offset, spacing in tables:
        at_lower = cumulative[:, lower]
        levels.append((cumulative[:, upper] - at_lower) / spacing * offset + at_lower)
    return levels[1] - levels[0]


@functools.lru_cache(maxsize=16)
def _envelope_tables(
    n_env: int,
) -> tuple[np.ndarray, np.ndarray, tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]]:
    """Hann window, one-sided periodogram scaling and modulation-band interpolation tables
    (``_band_powers``) for an envelope of ``n_env`` samples."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_env) / n_env)
    n_bins = n_env // 2 + 1
    resolution = ENV_RATE / n_env
    edges = (np.arange(n_bins + 1) - 0.5) * resolution
    # Normalised by the window's power, so the bins add up to the envelope's variance.
    scale = np.full(n_bins, 2.0 / (n_env * float(np.sum(window**2))))
    scale[0] /= 2.0
    if n_env % 2 == 0:
        scale[-1] /= 2.0
    return window, scale, (_interp_table(_MOD_LO, edges), _interp_table(_MOD_HI, edges))


# --------------------------------------------------------------------------------------------
# Block statistics
# --------------------------------------------------------------------------------------------


@dataclass
class BlockStats:
    """Sufficient statistics of one 1 s block (about 7 KB); ``combine`` merges ten exactly.

    Sums are about the block's own mean (``mean``) so that merging shifts them by the small
    difference between the block mean and the window mean, which keeps float64 exact enough
    even with a DC offset. The arrays may be rows of arrays that ``block_stats_many`` shares
    between the blocks it analyses together (no copy per block): treat them as read-only.
    """

    mean: float
    """Mean of the block's samples."""
    m2: float
    """Sum of (x - mean)**2."""
    m3: float
    """Sum of (x - mean)**3."""
    m4: float
    """Sum of (x - mean)**4."""
    vmax: float
    """Largest sample."""
    vmin: float
    """Smallest sample."""
    frame_sum: np.ndarray
    """(160,) float64: sum of (x - mean) in each 100-sample envelope frame."""
    frame_sq: np.ndarray
    """(160,) float64: sum of (x - mean)**2 in each 100-sample envelope frame."""
    power: np.ndarray
    """(1024,) float32: mean one-sided power spectrum of the block's 15 frames, bins 1..1024."""
    flux_sum: float
    """Sum of the spectral flux between the block's 14 pairs of consecutive frames."""
    flux_count: int
    """Number of frame pairs in ``flux_sum``."""

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (the scalars add about 100 bytes)."""
        return int(self.frame_sum.nbytes + self.frame_sq.nbytes + self.power.nbytes)


def block_stats_many(blocks: np.ndarray) -> list[BlockStats]:
    """Sufficient statistics of S blocks at once: ``blocks`` is (S, 16000) (float at 16 kHz).

    The live daemon needs the newest block of every stream each hop; this is the one
    implementation of every statistic (``block_stats`` is this on one row). Element ``i`` is
    what ``block_stats(blocks[i])`` gives, and no row depends on the others. S = 0 gives ``[]``.

    Why the rows go through ``_CACHE_BLOCKS`` (one) at a time: unlike ``combine``'s, a block's
    cost is not numpy's per-call overhead but the FFT of its 15 frames and a dozen passes over
    ~1.5 MB of float64 temporaries. Measured on a 2-core Xeon (``bench/indicator_cost.py``):
    groups of 2-4 blocks save at most ~10 % per block when malloc reuses its memory, but cost
    up to 50 % more, depending on the process's history, when glibc hands their larger
    temporaries back as fresh, page-faulting memory (its dynamic mmap and trim thresholds);
    all 96 blocks of a tick in one FFT cost 60-80 % more (out of the caches). One block's
    temporaries are what the single-block code always allocated. The statistics are
    vectorised over rows all the same, so a larger group is a one-line change.

    Non-finite samples (a broken driver) are replaced by 0, per block, with one warning, so
    that every indicator of every window stays finite.
    """
    x = np.asarray(blocks)
    if x.ndim != 2 or x.shape[1] != BLOCK_SAMPLES:
        raise ValueError(f"block_stats_many needs (S, {BLOCK_SAMPLES}) blocks, got shape {x.shape}")
    stats: list[BlockStats] = []
    repaired = 0
    for first in range(0, x.shape[0], _CACHE_BLOCKS):
        repaired += _block_stats_rows(x[first : first + _CACHE_BLOCKS], stats)
    if repaired:
        logger.warning(
            "%d of %d blocks hold NaN or infinite samples: they are set to 0 for the indicators",
            repaired,
            x.shape[0],
        )
    return stats


_CACHE_BLOCKS = 1
"""Blocks analysed together inside ``block_stats_many`` (~1.5 MB of temporaries per block)."""


def _block_stats_rows(blocks: np.ndarray, stats: list[BlockStats]) -> int:
    """Append the statistics of the rows of ``blocks`` (n, 16000) to ``stats``; return how
    many rows held non-finite samples (set to 0 here)."""
    n = blocks.shape[0]
    x = blocks.astype(np.float64, order="C")  # a copy: the non-finite repair below writes into it
    mean = x.mean(axis=1)
    broken = ~np.isfinite(mean)
    n_broken = int(broken.sum())
    if n_broken:
        rows = x[broken]
        rows[~np.isfinite(rows)] = 0.0
        x[broken] = rows
        mean[broken] = rows.mean(axis=1)
    d = x - mean[:, None]
    d2 = d * d
    m2 = d2.sum(axis=1)
    m3 = (d2 * d).sum(axis=1)  # not np.dot: OpenBLAS threads a 16000-long dot product
    m4 = (d2 * d2).sum(axis=1)
    frame_sum = d.reshape(n, ENV_FRAMES_PER_BLOCK, ENV_FRAME_SAMPLES).sum(axis=2)
    frame_sq = d2.reshape(n, ENV_FRAMES_PER_BLOCK, ENV_FRAME_SAMPLES).sum(axis=2)
    del d, d2  # the FFT below needs the memory more

    # The frames as a view of x (a fresh C-ordered copy): what
    # sliding_window_view(...)[:, ::FRAME_HOP] gives, without its Python layers (11 us a block).
    step = x.strides[1]
    frames = np.ndarray((n, FRAMES_PER_BLOCK, FRAME_SAMPLES), x.dtype, x, 0, (x.strides[0], FRAME_HOP * step, step))
    windowed = (frames * _HANN).reshape(n * FRAMES_PER_BLOCK, FRAME_SAMPLES)
    # Detrend by the Hann-weighted mean: the windowed frame then has exactly zero DC.
    weighted_mean = windowed.sum(axis=1) / _HANN_SUM
    windowed -= weighted_mean[:, None] * _HANN
    spec = np.fft.rfft(windowed, n=N_FFT, axis=1)[:, 1:]
    del windowed
    frame_power = (spec.real**2 + spec.imag**2) * _POWER_SCALE
    del spec

    # Flux between consecutive frames of each block, on unit-norm magnitude spectra (level-free).
    # With m = sqrt(p / sum p): |m1 - m2|^2 = 2 - 2 <m1, m2>, one dot product per pair.
    floored = frame_power + _BIN_FLOOR
    norms = np.sqrt(floored.sum(axis=1)).reshape(n, FRAMES_PER_BLOCK)
    mags = np.sqrt(floored, out=floored).reshape(n, FRAMES_PER_BLOCK, N_BINS)
    dots = np.einsum("sij,sij->si", mags[:, 1:], mags[:, :-1])
    cosine = dots / (norms[:, 1:] * norms[:, :-1])
    flux = np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))
    power = frame_power.reshape(n, FRAMES_PER_BLOCK, N_BINS).mean(axis=1).astype(np.float32)

    for shared in (frame_sum, frame_sq, power):  # the blocks' arrays are rows of these: cached, never written
        shared.setflags(write=False)
    means, m2s, m3s, m4s = mean.tolist(), m2.tolist(), m3.tolist(), m4.tolist()
    vmax, vmin, flux_sum = x.max(axis=1).tolist(), x.min(axis=1).tolist(), flux.sum(axis=1).tolist()
    pairs = FRAMES_PER_BLOCK - 1
    stats.extend(
        BlockStats(
            mean=means[i],
            m2=m2s[i],
            m3=m3s[i],
            m4=m4s[i],
            vmax=vmax[i],
            vmin=vmin[i],
            frame_sum=frame_sum[i],
            frame_sq=frame_sq[i],
            power=power[i],
            flux_sum=flux_sum[i],
            flux_count=pairs,
        )
        for i in range(n)
    )
    return n_broken


def block_stats(block: np.ndarray) -> BlockStats:
    """Sufficient statistics of one 1 s block of 16000 samples (float32 at 16 kHz).

    ``block_stats_many`` of one row (one implementation of every statistic), so a block
    analysed alone and the same block analysed in a batch give the same numbers. Non-finite
    samples (a broken driver) are replaced by 0 with a warning, so that every indicator of
    every window stays finite.
    """
    x = np.asarray(block)
    if x.shape != (BLOCK_SAMPLES,):
        raise ValueError(f"block_stats needs a ({BLOCK_SAMPLES},) block, got shape {x.shape}")
    return block_stats_many(x[None])[0]


def block_stats_of(audio: np.ndarray, n_blocks: int) -> list[BlockStats]:
    """Statistics of the first ``n_blocks`` consecutive 1 s blocks of 1-D ``audio``.

    The offline paths (``compute_hops``, ``compute_batch``, the spectra's hops) analyse long
    recordings the way the live path does, through ``block_stats_many``, in slices of at most
    ``BATCH_BLOCKS`` blocks so that memory stays bounded whatever the recording's length.
    """
    x = np.asarray(audio)
    if x.ndim != 1 or x.size < n_blocks * BLOCK_SAMPLES:
        raise ValueError(f"block_stats_of needs 1-D audio of at least {n_blocks} blocks, got shape {x.shape}")
    stats: list[BlockStats] = []
    for first in range(0, n_blocks, BATCH_BLOCKS):
        last = min(first + BATCH_BLOCKS, n_blocks)
        stats += block_stats_many(x[first * BLOCK_SAMPLES : last * BLOCK_SAMPLES].reshape(-1, BLOCK_SAMPLES))
    return stats


def _window_blocks(window: np.ndarray) -> list[BlockStats]:
    x = np.asarray(window)
    if x.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"indicators need a ({WINDOW_SAMPLES},) window, got shape {x.shape}")
    return block_stats_many(x.reshape(BLOCKS_PER_WINDOW, BLOCK_SAMPLES))


def _blocks_per_window(windows: Sequence[Sequence[BlockStats]], caller: str) -> int:
    """The common block count of ``windows`` (>= 1), or ValueError naming the counts found.

    Batched combination stacks the windows' blocks into (W, B, ...) arrays, and an indicator
    of a window of another length is another quantity (a longer window sees higher peaks).
    """
    counts = sorted({len(w) for w in windows})
    if len(counts) != 1:
        raise ValueError(
            f"{caller} needs the same number of blocks in every window, got block counts {counts}: "
            "batch windows of equal length only"
        )
    if counts[0] == 0:
        raise ValueError(f"{caller} needs at least one BlockStats per window, got an empty window")
    return counts[0]


def _mean_power(powers: np.ndarray) -> np.ndarray:
    """Floored mean power spectrum (W, 1024 bins 1..1024, float64) of (W, B, 1024) block spectra."""
    return powers.sum(axis=1, dtype=np.float64) / powers.shape[1] + _BIN_FLOOR


def _window_power(blocks: Sequence[BlockStats]) -> np.ndarray:
    """Floored mean power spectrum of the blocks (bins 1..1024, float64)."""
    return _mean_power(np.stack([b.power for b in blocks])[None])[0]


def _db(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(power)


def _percentiles(values: np.ndarray, qs: tuple[float, ...], overwrite: bool = False) -> list[np.ndarray]:
    """Per row of ``values`` (W, n), ``np.percentile`` (linear interpolation) by one partition:
    a quarter of its cost. ``overwrite``: partition ``values`` itself (a temporary of the
    caller's) instead of a copy."""
    size = values.shape[1]
    pos = [q / 100.0 * (size - 1) for q in qs]
    lo = [int(math.floor(p)) for p in pos]
    hi = [min(i + 1, size - 1) for i in lo]
    kth = sorted(set(lo + hi))
    if overwrite:
        values.partition(kth, axis=1)
        part = values
    else:
        part = np.partition(values, kth, axis=1)
    return [part[:, i] + (p - i) * (part[:, j] - part[:, i]) for p, i, j in zip(pos, lo, hi)]


# --------------------------------------------------------------------------------------------
# Tonal peaks
# --------------------------------------------------------------------------------------------


_TONAL_GATHER = 8192
"""Candidates whose neighbourhoods are gathered at once (8192 x 65 float64: 4 MB). A silent
window's white floor makes every bin a candidate, so a batch is bounded here, not by W."""


def _tonal_candidates(power: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima at or above 20 Hz of each row of ``power`` (W, 1024 bins 1..1024):
    (row, bin index into 1..1024, prominence in dB), ordered by row, then bin."""
    h = TONAL_PEAK_HALFWIDTH_BINS
    padded = np.full((power.shape[0], N_BINS + 2 * h), -np.inf)
    padded[:, h : h + N_BINS] = power
    local_max = padded[:, :N_BINS].copy()
    for j in range(1, 2 * h + 1):  # shifted maxima: cheaper than a strided window reduction
        np.maximum(local_max, padded[:, j : j + N_BINS], out=local_max)
    rows, idx = np.nonzero(power[:, _TONAL_FIRST:] >= local_max[:, _TONAL_FIRST:])
    idx += _TONAL_FIRST
    r = TONAL_NEIGHBOURHOOD_BINS
    # Each bin's 2r+1 neighbourhood, reflected at both ends of the spectrum (bin -i is bin i,
    # bin N-1+i is bin N-1-i), is a row of a sliding view of the reflected spectrum: gathering
    # a candidate's neighbourhood copies one contiguous row.
    reflected = np.empty((power.shape[0], N_BINS + 2 * r))
    reflected[:, r : r + N_BINS] = power
    reflected[:, :r] = power[:, r:0:-1]
    reflected[:, r + N_BINS :] = power[:, N_BINS - 2 : N_BINS - 2 - r : -1]
    step = reflected.strides[1]  # as_strided: sliding_window_view's checks cost more than the gather
    hoods = np.lib.stride_tricks.as_strided(
        reflected,
        (reflected.shape[0], N_BINS, 2 * r + 1),
        (reflected.strides[0], step, step),
        writeable=False,
    )
    # Median of each candidate's neighbourhood: one partition of the candidates' rows only,
    # gathered in bounded chunks.
    floor = np.empty(idx.size)
    for first in range(0, idx.size, _TONAL_GATHER):
        part = slice(first, first + _TONAL_GATHER)
        gathered = hoods[rows[part], idx[part]]  # a copy: partitioned in place
        gathered.partition(r, axis=1)
        floor[part] = gathered[:, r]
    return rows, idx, _db(power[rows, idx] / floor)


def tonal_peaks(
    window: np.ndarray, min_prominence_db: float = TONAL_COUNT_DB
) -> tuple[np.ndarray, np.ndarray]:
    """Tones of a window: (frequencies in Hz, prominences in dB), strongest first.

    A tone is a local maximum of the window's averaged spectrum (within +/- 3 bins) standing
    ``min_prominence_db`` above the median of the +/- 250 Hz around it. The frequency is refined
    by a parabola through the peak's three bins in dB (a Hann main lobe is close to one), so an
    explanation can say "new tone at 1.23 kHz". Not part of the indicator vector: the strongest
    peak's frequency jumps between noise bumps when no tone exists, which would add noise to
    any distance over the indicators.
    """
    power = _window_power(_window_blocks(window))
    _, idx, prom = _tonal_candidates(power[None])
    keep = prom > min_prominence_db
    idx, prom = idx[keep], prom[keep]
    order = np.argsort(-prom, kind="stable")
    idx, prom = idx[order], prom[order]
    log_p = _db(power)
    freqs = _FREQS[idx].copy()
    inner = (idx > 0) & (idx < N_BINS - 1)
    a, b, c = log_p[idx[inner] - 1], log_p[idx[inner]], log_p[idx[inner] + 1]
    denom = a - 2.0 * b + c
    safe = np.where(denom < 0.0, denom, -1.0)
    delta = np.where(denom < 0.0, 0.5 * (a - c) / safe, 0.0)
    freqs[inner] += np.clip(delta, -0.5, 0.5) * BIN_HZ
    return freqs, prom


# --------------------------------------------------------------------------------------------
# Combining blocks into the indicator vector
# --------------------------------------------------------------------------------------------


def combine_many(windows: Sequence[Sequence[BlockStats]]) -> np.ndarray:
    """Indicator vectors (W, ``len(INDICATORS)``, float64, all finite) of W windows of blocks.

    The one implementation of the indicator formulas (``combine`` is this on one window).
    Why batched: the daemon combines the cached blocks of every stream each hop, and one
    window's combination is ~60 numpy calls on 160- to 1600-long arrays whose cost is mostly
    per-call overhead; here every step runs once over the window axis. Row ``i`` does not
    depend on the other windows. Every window must hold the same number of blocks (>= 1),
    else ValueError; W = 0 gives shape (0, ``len(INDICATORS)``).

    Ten blocks make the window the set is defined on; other counts work (the statistics stay
    exact) but their values are not comparable with ten-block ones (a longer window sees
    higher peaks).

    Windows go through in groups of at most ``GROUP_WINDOWS``: the overhead is already shared
    at that size, and the group's temporaries (a few MB) stay in the caches and on malloc's
    heap instead of coming as fresh, page-faulting mmaps.
    """
    n_windows = len(windows)
    out = np.empty((n_windows, len(INDICATORS)))
    if n_windows == 0:
        return out
    n_blocks = _blocks_per_window(windows, "combine_many")
    for first in range(0, n_windows, GROUP_WINDOWS):
        _combine_group(windows[first : first + GROUP_WINDOWS], n_blocks, out[first : first + GROUP_WINDOWS])
    finite = np.isfinite(out)
    if not finite.all():  # cannot happen with finite blocks; a guard for the JSON
        bad = [INDICATOR_NAMES[i] for i in np.flatnonzero(~finite.all(axis=0))]
        logger.warning(
            "non-finite indicators %s in %d of %d windows set to 0",
            bad,
            int((~finite.all(axis=1)).sum()),
            n_windows,
        )
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def _combine_group(windows: Sequence[Sequence[BlockStats]], n_blocks: int, out: np.ndarray) -> None:
    """The indicator formulas over a group of windows of ``n_blocks`` blocks each, into ``out``
    (W, ``len(INDICATORS)``; rows may be non-finite, ``combine_many`` guards them)."""
    n_windows = len(windows)
    flat = [b for w in windows for b in w]
    # (8, W, B), each field contiguous per window: the same reductions whatever W is.
    fields = np.array(
        [
            [b.mean for b in flat],
            [b.m2 for b in flat],
            [b.m3 for b in flat],
            [b.m4 for b in flat],
            [b.vmax for b in flat],
            [b.vmin for b in flat],
            [b.flux_sum for b in flat],
            [b.flux_count for b in flat],
        ],
        dtype=np.float64,
    )
    means, m2b, m3b, m4b, vmax, vmin, flux_sum, flux_count = fields.reshape(8, n_windows, n_blocks)
    # np.concatenate, not np.stack: a third cheaper on hundreds of small arrays.
    frame_sum = np.concatenate([b.frame_sum for b in flat]).reshape(n_windows, n_blocks, ENV_FRAMES_PER_BLOCK)
    frame_sq = np.concatenate([b.frame_sq for b in flat]).reshape(n_windows, n_blocks, ENV_FRAMES_PER_BLOCK)
    powers = np.concatenate([b.power for b in flat]).reshape(n_windows, n_blocks, N_BINS)

    n = float(BLOCK_SAMPLES * n_blocks)
    nb = float(BLOCK_SAMPLES)
    # sum / count, not .mean(): the same numbers without np.mean's Python overhead per call.
    mean = means.sum(axis=1) / n_blocks
    d = means - mean[:, None]
    s1 = frame_sum.sum(axis=2)
    # Shift each block's central sums from its own mean to the window mean (binomial expansion).
    m2 = np.sum(m2b + 2.0 * d * s1 + nb * d**2, axis=1)
    m4 = np.sum(m4b + 4.0 * d * m3b + 6.0 * d**2 * m2b + 4.0 * d**3 * s1 + nb * d**4, axis=1)
    var = np.maximum(m2 / n, 0.0) + POWER_FLOOR
    fourth = np.maximum(m4 / n, 0.0) + 6.0 * (var - POWER_FLOOR) * POWER_FLOOR + 3.0 * POWER_FLOOR**2
    rms_level = 10.0 * np.log10(var)
    peak = np.maximum(np.maximum(vmax.max(axis=1) - mean, mean - vmin.min(axis=1)), 0.0)
    peak_level = 10.0 * np.log10(peak**2 + POWER_FLOOR)
    kurtosis = fourth / var**2

    # Short-frame energies, mean-removed with the window mean.
    dcol = d[:, :, None]
    env_ms = (frame_sq + 2.0 * dcol * frame_sum + ENV_FRAME_SAMPLES * dcol**2).reshape(n_windows, -1)
    env_ms /= ENV_FRAME_SAMPLES
    np.maximum(env_ms, 0.0, out=env_ms)
    energy_db = _db(0.5 * (env_ms[:, 0::2] + env_ms[:, 1::2]) + POWER_FLOOR)
    energy_max = energy_db.max(axis=1)
    p50, p95 = _percentiles(energy_db, (50.0, 95.0), overwrite=True)
    impulsiveness_p95 = p95 - p50
    impulsiveness_max = energy_max - p50

    # Amplitude envelope (6.25 ms RMS at 160 Hz) and its modulation spectrum.
    env = np.sqrt(env_ms + POWER_FLOOR)
    env_mean = env.sum(axis=1) / env.shape[1]
    env_dev = env - env_mean[:, None]
    modulation_depth = np.sqrt(2.0 * ((env_dev**2).sum(axis=1) / env.shape[1])) / env_mean
    env_window, env_scale, mod_tables = _envelope_tables(env.shape[1])
    env_spec = np.fft.rfft(env_dev * env_window, axis=1)
    env_power = (env_spec.real**2 + env_spec.imag**2) * env_scale
    mod_power = _band_powers(_cumulative(env_power), mod_tables)
    mod_db = _db(mod_power / (env_mean**2)[:, None] + 10.0 ** (RATIO_FLOOR_DB / 10.0))

    # Spectral shape of the averaged spectrum.
    power = _mean_power(powers)
    rows = np.arange(n_windows)
    total = power.sum(axis=1)
    centroid = (_FREQS * power).sum(axis=1) / total
    at_edges = _cumulative(power)  # at_edges[:, k + 1] is the power of bins 0..k
    cumulative = at_edges[:, 1:]
    target = ROLLOFF_FRACTION * total
    # The first bin whose cumulative power reaches the target (np.searchsorted side="left" on
    # the non-decreasing cumulative sum): the count of bins still below it.
    k = np.minimum(np.count_nonzero(cumulative < target[:, None], axis=1), N_BINS - 1)
    before = at_edges[rows, k]  # the power below bin k (0 for k = 0)
    rolloff = _BIN_LO[k] + (target - before) / power[rows, k] * (_BIN_HI[k] - _BIN_LO[k])
    log_power = np.log(power)
    flatness_db = 10.0 / np.log(10.0) * (log_power.sum(axis=1) / N_BINS - np.log(total / N_BINS))
    flux = flux_sum.sum(axis=1) / np.maximum(flux_count.sum(axis=1), 1.0)
    peak_rows, _, prominence = _tonal_candidates(power)
    tonal_prominence = np.zeros(n_windows)  # no candidate, or none above its floor: 0 dB
    np.maximum.at(tonal_prominence, peak_rows, prominence)
    tonal_count = np.bincount(peak_rows[prominence > TONAL_COUNT_DB], minlength=n_windows).astype(np.float64)
    bands_db = _db(_band_powers(at_edges, _BAND_TABLES) / total[:, None])

    columns = (
        rms_level,
        peak_level,
        peak_level - rms_level,
        kurtosis,
        impulsiveness_p95,
        impulsiveness_max,
        centroid,
        rolloff,
        flatness_db,
        flux,
        tonal_prominence,
        tonal_count,
        modulation_depth,
    )
    out[:, : len(columns)] = np.array(columns).T
    out[:, len(columns) : _N_SCALAR] = mod_db
    out[:, _N_SCALAR:] = bands_db


def combine(blocks: Sequence[BlockStats]) -> np.ndarray:
    """The indicator vector (``len(INDICATORS)``, float64, all finite) of consecutive blocks.

    ``combine_many`` of one window: one implementation of the formulas, so the daemon's
    batched path and this one give the same numbers. Ten blocks make the window the set is
    defined on; other counts work (the statistics stay exact) but their values are not
    comparable with ten-block ones (a longer window sees higher peaks).
    """
    if len(blocks) == 0:
        raise ValueError("combine needs at least one BlockStats")
    return combine_many([blocks])[0]


def compute(window: np.ndarray) -> np.ndarray:
    """Indicator vector of one (160000,) window: exactly ``combine`` of its ten blocks' stats."""
    return combine(_window_blocks(window))


def compute_batch(windows: np.ndarray) -> np.ndarray:
    """Indicator vectors of (B, 160000) windows, shape (B, len(INDICATORS)).

    The live path's batched functions, each window's blocks analysed once (in bounded batches).
    """
    x = np.asarray(windows)
    if x.ndim != 2 or x.shape[1] != WINDOW_SAMPLES:
        raise ValueError(f"compute_batch needs (B, {WINDOW_SAMPLES}) windows, got shape {x.shape}")
    stats = block_stats_of(x.reshape(-1), x.shape[0] * BLOCKS_PER_WINDOW)
    per_window = [stats[i : i + BLOCKS_PER_WINDOW] for i in range(0, len(stats), BLOCKS_PER_WINDOW)]
    return combine_many(per_window)


def compute_hops(audio: np.ndarray) -> np.ndarray:
    """Indicator vectors of every 10 s window of ``audio`` at a 1 s hop, shape (W, n).

    Window ``i`` starts at sample ``i * BLOCK_SAMPLES``; samples after the last whole block are
    ignored. Each block's statistics are computed once and shared by the ten windows that
    contain it (what the live daemon does), so a long enrolment recording costs one
    ``block_stats`` per second instead of ten; row ``i`` equals ``compute`` of that window exactly.
    Blocks go through ``block_stats_of`` in bounded slices, windows through ``combine_many``
    (bounded groups). Audio shorter than one window gives ``(0, n)``.
    """
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"compute_hops needs 1-D audio, got shape {x.shape}")
    n_blocks = x.size // BLOCK_SAMPLES
    n_windows = max(n_blocks - BLOCKS_PER_WINDOW + 1, 0)
    if n_windows == 0:
        return np.empty((0, len(INDICATORS)))
    stats = block_stats_of(x, n_blocks)
    return combine_many([stats[i : i + BLOCKS_PER_WINDOW] for i in range(n_windows)])


def band_levels(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nominal third-octave centres in Hz, band level in dB relative to the total power).

    The same numbers as the ``band_*`` indicators, for the evidence plot; the centres are the
    nominal ones (25, 31.5, ... 8000 Hz) that labels show.
    """
    power = _window_power(_window_blocks(window))
    levels = _db(_band_powers(_cumulative(power[None]), _BAND_TABLES)[0] / power.sum())
    return np.array(BAND_NOMINAL_HZ), levels


def mean_spectrum_db(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bin frequencies 7.8 Hz .. 8 kHz, power in dB re full scale per 7.8 Hz bin) of a window.

    The averaged (Welch, 150 frames) power spectrum the spectral indicators are computed from,
    floored like them; summed over bins it gives the window's mean square.
    """
    power = _window_power(_window_blocks(window))
    return _FREQS.copy(), _db(power)


__all__ = [
    "BAND_CENTRES_HZ",
    "BAND_NOMINAL_HZ",
    "BIN_HZ",
    "BLOCKS_PER_WINDOW",
    "BATCH_BLOCKS",
    "BLOCK_SAMPLES",
    "GROUP_WINDOWS",
    "INDICATORS",
    "INDICATOR_NAMES",
    "KINDS",
    "MODULATION_BANDS_HZ",
    "POWER_FLOOR",
    "UNITS",
    "BlockStats",
    "Indicator",
    "band_levels",
    "block_stats",
    "block_stats_many",
    "block_stats_of",
    "combine",
    "combine_many",
    "compute",
    "compute_batch",
    "compute_hops",
    "mean_spectrum_db",
    "tonal_peaks",
]
