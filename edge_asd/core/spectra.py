"""A window's spectral profile: its fine power spectrum and its envelope spectrum, in dB.

Why this module exists: the condition indicators (``edge_asd.core.indicators``) summarise a
window in a few dozen numbers (levels, third-octave bands, a tone's prominence, three
modulation bands). Two kinds of early fault hide inside those summaries:

* **a new narrow tone among a machine's own harmonics** (a bearing tone, a gear-mesh sideband,
  an electrical whine). A machine that runs at several speeds moves its harmonics with the
  speed, so a band level or "strongest tone" statistic over all normal windows is wide, and a
  new line a few dB above its surroundings stays inside it. Condition monitoring compares a
  narrowband spectrum with a *baseline spectrum of the same operating condition*; the
  ``spectrum`` component of site learning does that with the window's nearest enrolled
  spectrum (``edge_asd.core.site.components``), on the fine spectrum kept here;
* **a modulation rate that changes inside one modulation band** (a belt slapping at another
  rate, a bearing defect frequency, a knock that moved from once per turn to twice): the band
  power stays the same, the line moves. Envelope analysis (the spectrum of the amplitude
  envelope) is the classic bearing and belt diagnostic; the ``envelope`` component compares
  each 1 Hz bin of it with its enrolled normal range.

The profile is built from the same 1 s ``BlockStats`` the indicators are built from, so the
live daemon, which keeps the last ten blocks anyway, calls ``indicators.combine_many`` and
``profile_many`` on the cached blocks of all its streams every hop (``profile(blocks)`` is one
window of that), and nothing is analysed twice. Its parts, one float32 vector of
``PROFILE_SIZE``:

``POWER_SLICE``
    the window's mean power spectrum (mean of the blocks' ``.power``: Welch over 150 frames,
    7.8125 Hz bins), floored like the indicators (every bin gains its share of
    ``POWER_FLOOR``), **divided by its total** (so a gain change moves nothing: level faults are
    the indicators' business), in dB, from ``POWER_MIN_HZ`` (20 Hz) up to Nyquist;
``ENVELOPE_SLICE``
    the envelope spectrum: per block, the RMS envelope ``sqrt(frame_sq / 100)`` at 160 Hz
    (6.25 ms frames) minus its mean, periodic-Hann windowed, one-sided periodogram (1 Hz bins,
    scaled so the bins add up to the envelope's variance); averaged over the blocks (Welch with
    ten 1 s segments: a tenth of the variance of one periodogram, and each block stays
    independent of the others as the daemon needs); bins 1..64 Hz (the modulation bands of the
    indicators); **relative to the window's mean square**, so again level-free; floored at
    ``RATIO_FLOOR_DB`` (-120 dB) and in dB.

numpy only: it runs on the device. Silence gives a finite profile (a white spectrum, envelope
bins at the floor).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence

import numpy as np

from edge_asd.core import indicators as ind
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES

logger = logging.getLogger(__name__)

POWER_MIN_HZ = ind.TONAL_MIN_HZ
"""Lowest frequency of the power part (20 Hz): below it a 125 ms frame resolves too little and
slow drift of the DC offset dominates (the indicators' tonal search starts there too)."""

ENVELOPE_MAX_HZ = ind.MODULATION_BANDS_HZ[-1][1]
"""Highest envelope frequency kept (64 Hz): the top of the indicators' modulation bands (the
bearing defect frequencies of small machines)."""

ENVELOPE_BIN_HZ = ind.ENV_RATE / ind.ENV_FRAMES_PER_BLOCK
"""Resolution of the envelope spectrum: 1 Hz (one 1 s block of 160 envelope samples)."""

_FIRST_POWER_BIN = int(math.ceil(POWER_MIN_HZ / ind.BIN_HZ)) - 1
"""Index into a block's ``.power`` (bins 1..1024) of the first bin at or above 20 Hz (23.4 Hz)."""

N_POWER = ind.N_BINS - _FIRST_POWER_BIN
"""Bins of the power part (1022)."""

N_ENVELOPE = int(round(ENVELOPE_MAX_HZ / ENVELOPE_BIN_HZ))
"""Bins of the envelope part (64: 1, 2, ... 64 Hz)."""

POWER_SLICE = slice(0, N_POWER)
"""Where the fine power spectrum (dB re the window's total power) lies in a profile."""

ENVELOPE_SLICE = slice(N_POWER, N_POWER + N_ENVELOPE)
"""Where the envelope spectrum (dB re the window's mean square) lies in a profile."""

PROFILE_SIZE = N_POWER + N_ENVELOPE
"""Length of a profile (1086 float32: about 4 KB per window)."""

POWER_FREQS_HZ = np.arange(_FIRST_POWER_BIN + 1, ind.N_BINS + 1, dtype=np.float64) * ind.BIN_HZ
"""Centre frequency of every bin of the power part (23.4 Hz .. 8 kHz)."""

ENVELOPE_FREQS_HZ = np.arange(1, N_ENVELOPE + 1, dtype=np.float64) * ENVELOPE_BIN_HZ
"""Modulation frequency of every bin of the envelope part (1 .. 64 Hz)."""

# The indicators' per-bin floor, rebuilt from public constants: bin k spans
# [(k - 1/2), (k + 1/2)] * BIN_HZ clipped at Nyquist, and gets its share of POWER_FLOOR.
_NYQUIST = SAMPLE_RATE / 2.0
_BIN_WIDTH = np.full(ind.N_BINS, ind.BIN_HZ)
_BIN_WIDTH[-1] = _NYQUIST - (ind.N_BINS - 0.5) * ind.BIN_HZ
_BIN_FLOOR = ind.POWER_FLOOR * _BIN_WIDTH / (_NYQUIST - 0.5 * ind.BIN_HZ)
_RATIO_FLOOR = 10.0 ** (ind.RATIO_FLOOR_DB / 10.0)


@functools.lru_cache(maxsize=1)
def _envelope_tables() -> tuple[np.ndarray, np.ndarray]:
    """Periodic Hann window of one block's envelope and the one-sided scaling of bins 1..64."""
    n = ind.ENV_FRAMES_PER_BLOCK
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    # Divided by the window's power so that the one-sided bins add up to the envelope's variance;
    # bins 1..64 are all interior (no DC or Nyquist halving).
    scale = 2.0 / (n * float(np.sum(window**2)))
    return window, np.full(N_ENVELOPE, scale)


def profile_many(windows: Sequence[Sequence[ind.BlockStats]]) -> np.ndarray:
    """Spectral profiles (W, ``PROFILE_SIZE``, float32, finite) of W windows of blocks.

    The one implementation of the profile (``profile`` is this on one window). Why batched:
    the daemon profiles the cached blocks of every stream each hop, and one window's profile
    is a dozen numpy calls on small arrays, mostly per-call overhead; here each runs once over
    the window axis (one FFT over all W * B block envelopes). Row ``i`` does not depend on the
    other windows. Every window must hold the same number of blocks (>= 1), else ValueError;
    W = 0 gives shape (0, ``PROFILE_SIZE``). Windows go through in groups of at most
    ``indicators.GROUP_WINDOWS`` (small temporaries, as in ``indicators.combine_many``).

    Ten blocks make a window (what enrolment and scoring use); other counts work, but their
    values are not comparable with ten-block ones (the averages have another variance).
    """
    n_windows = len(windows)
    if n_windows == 0:
        return np.empty((0, PROFILE_SIZE), dtype=np.float32)
    counts = sorted({len(w) for w in windows})
    if len(counts) != 1:
        raise ValueError(
            f"profile_many needs the same number of blocks in every window, got block counts {counts}: "
            "batch windows of equal length only"
        )
    n_blocks = counts[0]
    if n_blocks == 0:
        raise ValueError("profile_many needs at least one BlockStats per window, got an empty window")
    out = np.empty((n_windows, PROFILE_SIZE), dtype=np.float32)
    for first in range(0, n_windows, ind.GROUP_WINDOWS):
        _profile_group(
            windows[first : first + ind.GROUP_WINDOWS], n_blocks, out[first : first + ind.GROUP_WINDOWS]
        )
    finite = np.isfinite(out)
    if not finite.all():  # cannot happen with finite blocks; a guard for the scores
        logger.warning(
            "non-finite spectral profile bins in %d of %d windows set to the floor",
            int((~finite.all(axis=1)).sum()),
            n_windows,
        )
        out = np.nan_to_num(out, nan=ind.RATIO_FLOOR_DB, posinf=0.0, neginf=ind.RATIO_FLOOR_DB)
    return out


def _profile_group(windows: Sequence[Sequence[ind.BlockStats]], n_blocks: int, out: np.ndarray) -> None:
    """The profile of a group of windows of ``n_blocks`` blocks each (at most
    ``indicators.GROUP_WINDOWS``: small temporaries), into ``out`` (W, ``PROFILE_SIZE``)."""
    n_windows = len(windows)
    flat = [b for w in windows for b in w]

    powers = np.concatenate([b.power for b in flat]).reshape(n_windows, n_blocks, ind.N_BINS)
    # sum / count, not .mean(): the same numbers without np.mean's Python overhead per call.
    power = powers.sum(axis=1, dtype=np.float64) / n_blocks + _BIN_FLOOR
    out[:, POWER_SLICE] = 10.0 * np.log10(power[:, _FIRST_POWER_BIN:] / power.sum(axis=1, keepdims=True))

    frame_sq = np.concatenate([b.frame_sq for b in flat]).reshape(
        n_windows, n_blocks, ind.ENV_FRAMES_PER_BLOCK
    )
    frame_ms = frame_sq / ind.ENV_FRAME_SAMPLES
    np.maximum(frame_ms, 0.0, out=frame_ms)
    envelope = np.sqrt(frame_ms + ind.POWER_FLOOR)
    envelope -= envelope.sum(axis=2, keepdims=True) / ind.ENV_FRAMES_PER_BLOCK
    window, scale = _envelope_tables()
    spec = np.fft.rfft(envelope * window, axis=2)[:, :, 1 : N_ENVELOPE + 1]
    env_power = (spec.real**2 + spec.imag**2).sum(axis=1) / n_blocks * scale
    mean_square = (
        frame_ms.reshape(n_windows, -1).sum(axis=1) / (n_blocks * ind.ENV_FRAMES_PER_BLOCK) + ind.POWER_FLOOR
    )
    out[:, ENVELOPE_SLICE] = 10.0 * np.log10(env_power / mean_square[:, None] + _RATIO_FLOOR)


def profile(blocks: Sequence[ind.BlockStats]) -> np.ndarray:
    """The spectral profile (``PROFILE_SIZE``, float32, finite) of consecutive blocks.

    ``profile_many`` of one window (one implementation). Ten blocks make a window (what
    enrolment and scoring use); other counts work, but their values are not comparable with
    ten-block ones (the averages have another variance). Cheap (two small averages, ten
    160-point FFTs, two logarithms); the daemon profiles a tick's windows together with
    ``profile_many``.
    """
    if len(blocks) == 0:
        raise ValueError("profile needs at least one BlockStats")
    return profile_many([blocks])[0]


def compute_profile(window: np.ndarray) -> np.ndarray:
    """Profile of one (160000,) window: exactly ``profile`` of its ten blocks' statistics."""
    x = np.asarray(window)
    if x.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"a profile needs a ({WINDOW_SAMPLES},) window, got shape {x.shape}")
    return profile(ind.block_stats_of(x, ind.BLOCKS_PER_WINDOW))


def compute_profile_hops(audio: np.ndarray) -> np.ndarray:
    """Profiles of every 10 s window of ``audio`` at a 1 s hop, shape (W, ``PROFILE_SIZE``).

    Like ``indicators.compute_hops``: window ``i`` starts at sample ``i * BLOCK_SAMPLES``, each
    block is analysed once and shared by the ten windows that contain it, a trailing partial
    block is ignored, and row ``i`` equals ``compute_profile`` of that window exactly. Blocks go
    through ``block_stats_of`` in bounded slices, windows through ``profile_many`` (bounded
    groups). Audio shorter than one window gives ``(0, PROFILE_SIZE)``.
    """
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"compute_profile_hops needs 1-D audio, got shape {x.shape}")
    n_blocks = x.size // ind.BLOCK_SAMPLES
    n_windows = max(n_blocks - ind.BLOCKS_PER_WINDOW + 1, 0)
    out = np.empty((n_windows, PROFILE_SIZE), dtype=np.float32)
    if n_windows == 0:
        return out
    stats = ind.block_stats_of(x, n_blocks)
    return profile_many([stats[i : i + ind.BLOCKS_PER_WINDOW] for i in range(n_windows)])


__all__ = [
    "ENVELOPE_BIN_HZ",
    "ENVELOPE_FREQS_HZ",
    "ENVELOPE_MAX_HZ",
    "ENVELOPE_SLICE",
    "N_ENVELOPE",
    "N_POWER",
    "POWER_FREQS_HZ",
    "POWER_MIN_HZ",
    "POWER_SLICE",
    "PROFILE_SIZE",
    "compute_profile",
    "compute_profile_hops",
    "profile",
    "profile_many",
]
