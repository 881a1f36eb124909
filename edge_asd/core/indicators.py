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
give bit-identical numbers. What a block holds (about 7 KB):

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
# (bins, 2r+1) indices of each bin's tonal neighbourhood, reflected at both ends of the spectrum.
_HOOD_INDEX = np.abs(
    np.arange(N_BINS)[:, None] + np.arange(-TONAL_NEIGHBOURHOOD_BINS, TONAL_NEIGHBOURHOOD_BINS + 1)[None, :]
)
_HOOD_INDEX = np.where(_HOOD_INDEX > N_BINS - 1, 2 * (N_BINS - 1) - _HOOD_INDEX, _HOOD_INDEX)


_BIN_EDGES = np.concatenate(([_BIN_LO[0]], _BIN_HI))
_BAND_LO = np.array([c * 10.0 ** (-1 / 20) for c in BAND_CENTRES_HZ])
_BAND_HI = np.minimum(np.array([c * 10.0 ** (1 / 20) for c in BAND_CENTRES_HZ]), _NYQUIST)
_MOD_LO = np.array([lo for lo, _ in MODULATION_BANDS_HZ])
_MOD_HI = np.array([hi for _, hi in MODULATION_BANDS_HZ])


def _band_powers(power: np.ndarray, edges: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Power between ``lo`` and ``hi`` for each band, every bin counted by the fraction of its
    width (``edges``: the n + 1 bin boundaries) inside the band, so that narrow bands (the 25 Hz
    band is 5.8 Hz wide, less than one bin) are well defined. The cumulative power is linear
    inside a bin, so the fractional overlap is an interpolation at the band edges (and needs no
    BLAS call, whose threads stall under CPU contention)."""
    cumulative = np.concatenate(([0.0], np.cumsum(power)))
    return np.interp(hi, edges, cumulative) - np.interp(lo, edges, cumulative)


@functools.lru_cache(maxsize=16)
def _envelope_tables(n_env: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hann window, one-sided periodogram scaling and bin boundaries for an envelope of ``n_env``."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_env) / n_env)
    n_bins = n_env // 2 + 1
    resolution = ENV_RATE / n_env
    edges = (np.arange(n_bins + 1) - 0.5) * resolution
    # Normalised by the window's power, so the bins add up to the envelope's variance.
    scale = np.full(n_bins, 2.0 / (n_env * float(np.sum(window**2))))
    scale[0] /= 2.0
    if n_env % 2 == 0:
        scale[-1] /= 2.0
    return window, scale, edges


# --------------------------------------------------------------------------------------------
# Block statistics
# --------------------------------------------------------------------------------------------


@dataclass
class BlockStats:
    """Sufficient statistics of one 1 s block (about 7 KB); ``combine`` merges ten exactly.

    Sums are about the block's own mean (``mean``) so that merging shifts them by the small
    difference between the block mean and the window mean, which keeps float64 exact enough
    even with a DC offset.
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


def block_stats(block: np.ndarray) -> BlockStats:
    """Sufficient statistics of one 1 s block of 16000 samples (float32 at 16 kHz).

    Non-finite samples (a broken driver) are replaced by 0 with a warning, so that every
    indicator of every window stays finite.
    """
    x = np.asarray(block)
    if x.shape != (BLOCK_SAMPLES,):
        raise ValueError(f"block_stats needs a ({BLOCK_SAMPLES},) block, got shape {x.shape}")
    x = x.astype(np.float64)
    mean = float(x.mean())
    if not np.isfinite(mean):
        logger.warning("block holds NaN or infinite samples: they are set to 0 for the indicators")
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        mean = float(x.mean())
    d = x - mean
    d2 = d * d
    m3 = float((d2 * d).sum())  # not np.dot: OpenBLAS threads a 16000-long dot product
    m4 = float((d2 * d2).sum())
    frame_sum = d.reshape(ENV_FRAMES_PER_BLOCK, ENV_FRAME_SAMPLES).sum(axis=1)
    frame_sq = d2.reshape(ENV_FRAMES_PER_BLOCK, ENV_FRAME_SAMPLES).sum(axis=1)

    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME_SAMPLES)[::FRAME_HOP]
    windowed = frames * _HANN
    # Detrend by the Hann-weighted mean: the windowed frame then has exactly zero DC.
    weighted_mean = windowed.sum(axis=1) / _HANN_SUM
    windowed -= weighted_mean[:, None] * _HANN
    spec = np.fft.rfft(windowed, n=N_FFT, axis=1)[:, 1:]
    frame_power = (spec.real**2 + spec.imag**2) * _POWER_SCALE

    # Flux between consecutive frames of this block, on unit-norm magnitude spectra (level-free).
    # With m = sqrt(p / sum p): |m1 - m2|^2 = 2 - 2 <m1, m2>, one dot product per pair.
    floored = frame_power + _BIN_FLOOR
    mags = np.sqrt(floored)
    norms = np.sqrt(floored.sum(axis=1))
    cosine = np.einsum("ij,ij->i", mags[1:], mags[:-1]) / (norms[1:] * norms[:-1])
    flux = np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))

    return BlockStats(
        mean=mean,
        m2=float(d2.sum()),
        m3=m3,
        m4=m4,
        vmax=float(x.max()),
        vmin=float(x.min()),
        frame_sum=frame_sum,
        frame_sq=frame_sq,
        power=frame_power.mean(axis=0).astype(np.float32),
        flux_sum=float(flux.sum()),
        flux_count=int(flux.size),
    )


def _window_blocks(window: np.ndarray) -> list[BlockStats]:
    x = np.asarray(window)
    if x.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"indicators need a ({WINDOW_SAMPLES},) window, got shape {x.shape}")
    return [block_stats(x[i * BLOCK_SAMPLES : (i + 1) * BLOCK_SAMPLES]) for i in range(BLOCKS_PER_WINDOW)]


def _window_power(blocks: Sequence[BlockStats]) -> np.ndarray:
    """Floored mean power spectrum of the blocks (bins 1..1024, float64)."""
    power = np.mean([b.power for b in blocks], axis=0, dtype=np.float64)
    return power + _BIN_FLOOR


def _db(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(power)


def _percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile`` (linear interpolation) by one partition: a quarter of its cost."""
    pos = [q / 100.0 * (values.size - 1) for q in qs]
    lo = [int(math.floor(p)) for p in pos]
    hi = [min(i + 1, values.size - 1) for i in lo]
    part = np.partition(values, sorted(set(lo + hi)))
    return [float(part[i] + (p - i) * (part[j] - part[i])) for p, i, j in zip(pos, lo, hi)]


# --------------------------------------------------------------------------------------------
# Tonal peaks
# --------------------------------------------------------------------------------------------


def _tonal_candidates(power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into bins 1..1024) of local maxima at or above 20 Hz and their prominence in dB."""
    h = TONAL_PEAK_HALFWIDTH_BINS
    padded = np.concatenate([np.full(h, -np.inf), power, np.full(h, -np.inf)])
    local_max = padded[:N_BINS].copy()
    for j in range(1, 2 * h + 1):  # shifted maxima: cheaper than a strided window reduction
        np.maximum(local_max, padded[j : j + N_BINS], out=local_max)
    idx = np.flatnonzero(power[_TONAL_FIRST:] >= local_max[_TONAL_FIRST:]) + _TONAL_FIRST
    r = TONAL_NEIGHBOURHOOD_BINS
    # Median of the 2r+1 bins around each candidate (reflected at the ends): one partition.
    floor = np.partition(power[_HOOD_INDEX[idx]], r, axis=1)[:, r]
    return idx, _db(power[idx] / floor)


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
    idx, prom = _tonal_candidates(power)
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


def combine(blocks: Sequence[BlockStats]) -> np.ndarray:
    """The indicator vector (``len(INDICATORS)``, float64, all finite) of consecutive blocks.

    Ten blocks make the window the set is defined on; other counts work (the statistics stay
    exact) but their values are not comparable with ten-block ones (a longer window sees
    higher peaks).
    """
    if len(blocks) == 0:
        raise ValueError("combine needs at least one BlockStats")
    n = float(BLOCK_SAMPLES * len(blocks))
    nb = float(BLOCK_SAMPLES)
    scalars = np.array([(b.mean, b.m2, b.m3, b.m4, b.vmax, b.vmin, b.flux_sum, b.flux_count) for b in blocks])
    means, m2b, m3b, m4b = scalars[:, 0], scalars[:, 1], scalars[:, 2], scalars[:, 3]
    mean = float(means.mean())
    d = means - mean
    frame_sum = np.stack([b.frame_sum for b in blocks])
    frame_sq = np.stack([b.frame_sq for b in blocks])
    s1 = frame_sum.sum(axis=1)
    # Shift each block's central sums from its own mean to the window mean (binomial expansion).
    m2 = float(np.sum(m2b + 2.0 * d * s1 + nb * d**2))
    m4 = float(np.sum(m4b + 4.0 * d * m3b + 6.0 * d**2 * m2b + 4.0 * d**3 * s1 + nb * d**4))
    var = max(m2 / n, 0.0) + POWER_FLOOR
    fourth = max(m4 / n, 0.0) + 6.0 * (var - POWER_FLOOR) * POWER_FLOOR + 3.0 * POWER_FLOOR**2
    rms_level = 10.0 * math.log10(var)
    peak = max(float(scalars[:, 4].max()) - mean, mean - float(scalars[:, 5].min()), 0.0)
    peak_level = 10.0 * math.log10(peak**2 + POWER_FLOOR)
    kurtosis = fourth / var**2

    # Short-frame energies, mean-removed with the window mean.
    dcol = d[:, None]
    env_ms = (frame_sq + 2.0 * dcol * frame_sum + ENV_FRAME_SAMPLES * dcol**2).ravel() / ENV_FRAME_SAMPLES
    np.maximum(env_ms, 0.0, out=env_ms)
    energy_db = _db(0.5 * (env_ms[0::2] + env_ms[1::2]) + POWER_FLOOR)
    p50, p95 = _percentiles(energy_db, (50.0, 95.0))
    impulsiveness_p95 = p95 - p50
    impulsiveness_max = float(energy_db.max()) - p50

    # Amplitude envelope (6.25 ms RMS at 160 Hz) and its modulation spectrum.
    env = np.sqrt(env_ms + POWER_FLOOR)
    env_mean = float(env.mean())
    env_dev = env - env_mean
    modulation_depth = float(np.sqrt(2.0 * np.mean(env_dev**2)) / env_mean)
    env_window, env_scale, env_edges = _envelope_tables(env.size)
    env_spec = np.fft.rfft(env_dev * env_window)
    env_power = (env_spec.real**2 + env_spec.imag**2) * env_scale
    mod_power = _band_powers(env_power, env_edges, _MOD_LO, _MOD_HI)
    mod_db = _db(mod_power / env_mean**2 + 10.0 ** (RATIO_FLOOR_DB / 10.0))

    # Spectral shape of the averaged spectrum.
    power = _window_power(blocks)
    total = float(power.sum())
    centroid = float((_FREQS * power).sum() / total)
    cumulative = np.cumsum(power)
    target = ROLLOFF_FRACTION * total
    k = int(min(np.searchsorted(cumulative, target), N_BINS - 1))
    before = cumulative[k - 1] if k > 0 else 0.0
    rolloff = float(_BIN_LO[k] + (target - before) / power[k] * (_BIN_HI[k] - _BIN_LO[k]))
    log_power = np.log(power)
    flatness_db = float(10.0 / np.log(10.0) * (log_power.mean() - np.log(total / N_BINS)))
    flux = float(scalars[:, 6].sum() / max(scalars[:, 7].sum(), 1.0))
    _, prominence = _tonal_candidates(power)
    tonal_prominence = float(max(prominence.max(initial=0.0), 0.0))
    tonal_count = float(np.count_nonzero(prominence > TONAL_COUNT_DB))
    bands_db = _db(_band_powers(power, _BIN_EDGES, _BAND_LO, _BAND_HI) / total)

    out = np.empty(len(INDICATORS))
    out[:_N_SCALAR] = (
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
        *mod_db,
    )
    out[_N_SCALAR:] = bands_db
    if not np.all(np.isfinite(out)):  # cannot happen with finite blocks; a guard for the JSON
        bad = [INDICATOR_NAMES[i] for i in np.flatnonzero(~np.isfinite(out))]
        logger.warning("non-finite indicators %s set to 0", bad)
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def compute(window: np.ndarray) -> np.ndarray:
    """Indicator vector of one (160000,) window: exactly ``combine`` of its ten blocks' stats."""
    return combine(_window_blocks(window))


def compute_batch(windows: np.ndarray) -> np.ndarray:
    """Indicator vectors of (B, 160000) windows, shape (B, len(INDICATORS))."""
    x = np.asarray(windows)
    if x.ndim != 2 or x.shape[1] != WINDOW_SAMPLES:
        raise ValueError(f"compute_batch needs (B, {WINDOW_SAMPLES}) windows, got shape {x.shape}")
    out = np.empty((x.shape[0], len(INDICATORS)))
    for i, window in enumerate(x):
        out[i] = compute(window)
    return out


def compute_hops(audio: np.ndarray) -> np.ndarray:
    """Indicator vectors of every 10 s window of ``audio`` at a 1 s hop, shape (W, n).

    Window ``i`` starts at sample ``i * BLOCK_SAMPLES``; samples after the last whole block are
    ignored. Each block's statistics are computed once and shared by the ten windows that
    contain it (what the live daemon does), so a long enrolment recording costs one
    ``block_stats`` per second instead of ten; row ``i`` equals ``compute`` of that window exactly.
    Audio shorter than one window gives ``(0, n)``.
    """
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"compute_hops needs 1-D audio, got shape {x.shape}")
    n_blocks = x.size // BLOCK_SAMPLES
    n_windows = max(n_blocks - BLOCKS_PER_WINDOW + 1, 0)
    out = np.empty((n_windows, len(INDICATORS)))
    if n_windows == 0:
        return out
    stats = [block_stats(x[i * BLOCK_SAMPLES : (i + 1) * BLOCK_SAMPLES]) for i in range(n_blocks)]
    for i in range(n_windows):
        out[i] = combine(stats[i : i + BLOCKS_PER_WINDOW])
    return out


def band_levels(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nominal third-octave centres in Hz, band level in dB relative to the total power).

    The same numbers as the ``band_*`` indicators, for the evidence plot; the centres are the
    nominal ones (25, 31.5, ... 8000 Hz) that labels show.
    """
    power = _window_power(_window_blocks(window))
    levels = _db(_band_powers(power, _BIN_EDGES, _BAND_LO, _BAND_HI) / power.sum())
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
    "BLOCK_SAMPLES",
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
    "combine",
    "compute",
    "compute_batch",
    "compute_hops",
    "mean_spectrum_db",
    "tonal_peaks",
]
