"""Sound building blocks that keep their state across blocks, shared by every renderer here.

Each works on absolute sample indices, so a long stream read in blocks of any size gives the
same samples as one long read: filtered noise carries its FIR state over (overlap-save),
sinusoids take their phase from the absolute index, short events (impacts, clicks) are placed
at absolute times and added wherever they overlap a block.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

logger = logging.getLogger(__name__)

_FIR_TAPS = 512
_TABLE = 2048  # wavetable length of the harmonic oscillators (a power of two)


@lru_cache(maxsize=64)
def shaped_fir(
    sr: int,
    centre: float,
    octaves: float,
    floor: float,
    peaks: tuple[tuple[float, float], ...] = (),
    taps: int = _FIR_TAPS,
) -> np.ndarray:
    """Unit-energy linear-phase FIR: a hump in log frequency over a floor, plus narrow peaks.

    Unit energy makes unit-variance white noise come out at unit variance, so levels are set
    by gains alone. The peaks are the ID's structural resonances: thin lines spread over
    1-7 kHz that a classifier of IDs learns to look at all across the spectrum, so a new tone,
    squeal or rattle anywhere there disturbs what it relies on.
    """
    f = np.fft.rfftfreq(taps, 1.0 / sr)
    lf = np.log2(np.maximum(f, 20.0) / centre)
    mag = np.exp(-0.5 * (lf / (octaves / 2.0)) ** 2) + floor
    for freq, gain in peaks:
        mag += gain * np.exp(-0.5 * ((f - freq) / max(25.0, 0.012 * freq)) ** 2)
    mag[f < 25.0] *= 0.05
    h = np.roll(np.fft.irfft(mag, taps), taps // 2) * np.hanning(taps)
    h /= np.sqrt(np.sum(h**2))
    return h.astype(np.float32)


@lru_cache(maxsize=8)
def background_fir(sr: int, taps: int = _FIR_TAPS) -> np.ndarray:
    """Factory background: pinkish (1/f power) rumble, cut below 30 Hz and above 6 kHz."""
    f = np.fft.rfftfreq(taps, 1.0 / sr)
    mag = 1.0 / np.sqrt(np.maximum(f, 30.0) / 100.0)
    mag *= 1.0 / (1.0 + (f / 6000.0) ** 4)
    mag[f < 25.0] *= 0.05
    h = np.roll(np.fft.irfft(mag, taps), taps // 2) * np.hanning(taps)
    h /= np.sqrt(np.sum(h**2))
    return h.astype(np.float32)


class FirNoise:
    """White Gaussian noise through an FIR, continuous across blocks (overlap-save).

    Long reads are filtered in segments of one fixed FFT size whose filter spectrum is
    computed once: this is the generator's hot loop.
    """

    _FFT = 8192

    def __init__(self, h: np.ndarray, rng: np.random.Generator) -> None:
        self._h = h
        self._rng = rng
        self._tail = rng.standard_normal(len(h) - 1, dtype=np.float32)
        self._spectra: dict[int, np.ndarray] = {}

    def _spectrum(self, size: int) -> np.ndarray:
        if size not in self._spectra:
            self._spectra[size] = np.fft.rfft(self._h, size).astype(np.complex64)
        return self._spectra[size]

    def render(self, n: int) -> np.ndarray:
        white = self._rng.standard_normal(n, dtype=np.float32)
        m = len(self._h) - 1
        x = np.concatenate([self._tail, white])
        self._tail = x[len(x) - m :]
        out = np.empty(n, dtype=np.float32)
        step = self._FFT - m
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            seg = x[lo : hi + m]
            size = self._FFT if hi - lo == step else 1 << int(math.ceil(math.log2(len(seg) + m)))
            y = np.fft.irfft(np.fft.rfft(seg, size) * self._spectrum(size), size)
            out[lo:hi] = y[m : m + hi - lo]
        return out


@dataclass
class _Event:
    start: int  # absolute sample index
    wave: np.ndarray

    @property
    def end(self) -> int:
        return self.start + len(self.wave)


@dataclass
class EventTrack:
    """Short sounds placed at absolute times; each is added wherever it overlaps a block."""

    events: list[_Event] = field(default_factory=list)

    def add(self, start: int, wave: np.ndarray) -> None:
        self.events.append(_Event(int(start), wave.astype(np.float32)))

    def render_into(self, out: np.ndarray, start: int) -> None:
        end = start + len(out)
        keep = []
        for ev in self.events:
            lo, hi = max(ev.start, start), min(ev.end, end)
            if lo < hi:
                out[lo - start : hi - start] += ev.wave[lo - ev.start : hi - ev.start]
            if ev.end > end:
                keep.append(ev)
        self.events = keep


def resonant_click(
    rng: np.random.Generator, sr: int, freqs: Sequence[float], decay_s: float, noise_mix: float = 0.3
) -> np.ndarray:
    """A struck-object sound: damped sinusoids at ``freqs`` plus a short noise transient."""
    n = int(sr * decay_s * 6) + 1
    t = np.arange(n) / sr
    env = np.exp(-t / decay_s)
    wave = np.zeros(n)
    for i, f in enumerate(freqs):
        f_j = f * rng.uniform(0.98, 1.02)
        wave += (0.7**i) * np.sin(2 * np.pi * f_j * t + rng.uniform(0, 2 * np.pi))
    burst = rng.standard_normal(n) * np.exp(-t / (decay_s * 0.25))
    wave = env * wave + noise_mix * burst
    wave[: min(n, 16)] *= np.linspace(0.0, 1.0, min(n, 16))  # no step at the onset
    return (wave / (np.max(np.abs(wave)) + 1e-9)).astype(np.float32)


_CHUNK = 1024
_LOCAL = np.arange(_CHUNK, dtype=np.float64)


def sine_phase(freq_hz: float, start: int, n: int, sr: int, phase: float = 0.0) -> np.ndarray:
    """Phase of a constant-frequency sinusoid at samples start..start+n-1, float32.

    numpy's float64 sine is slow; the float32 one is ~50x faster but needs small arguments. So
    the phase is reduced mod 2 pi in float64 once per 1024-sample chunk and only the in-chunk
    ramp (< 3300 rad, error ~3e-4 rad) is float32: exact enough, and continuous across calls.
    """
    w = 2.0 * np.pi * freq_hz / sr
    n_chunks = -(-n // _CHUNK)
    starts = start + np.arange(n_chunks, dtype=np.float64) * _CHUNK
    ph0 = np.mod(w * starts + phase, 2.0 * np.pi).astype(np.float32)
    local = (w * _LOCAL).astype(np.float32)
    return (ph0[:, None] + local[None, :]).ravel()[:n]


def sine(freq_hz: float, start: int, n: int, sr: int, phase: float = 0.0) -> np.ndarray:
    """``sin(2 pi f t + phase)`` at absolute samples start..start+n-1, float32."""
    return np.sin(sine_phase(freq_hz, start, n, sr, phase))


def smooth_window(start: int, n: int, on: int, off: int, ramp: int) -> np.ndarray:
    """For samples start..start+n-1: 1 inside [on, off) with raised-cosine ramps of ``ramp``
    samples inside the edges, 0 outside (float32). Only samples near an edge cost a cosine."""
    idx0, idx1 = start, start + n
    w = np.zeros(n, dtype=np.float32)
    lo, hi = max(on, idx0), min(off, idx1)
    if lo >= hi:
        return w
    w[lo - idx0 : hi - idx0] = 1.0
    if ramp > 0:
        for edge_lo, edge_hi, rising in ((on, on + ramp, True), (off - ramp, off, False)):
            a, b = max(edge_lo, lo), min(edge_hi, hi)
            if a < b:
                x = (np.arange(a, b, dtype=np.float64) - edge_lo) / ramp
                shape = 0.5 - 0.5 * np.cos(np.pi * (x if rising else 1.0 - x))
                w[a - idx0 : b - idx0] = np.minimum(w[a - idx0 : b - idx0], shape)
    return w


class Span:
    """An anomaly's active span [``start``, ``end``) in absolute samples, with raised-cosine
    ramps of ``ramp`` samples inside its edges; subclasses set the four attributes."""

    start: int
    end: int
    sr: int
    ramp: int

    @property
    def until(self) -> int:
        """Last sample it may touch: a click or stroke scheduled before ``end`` rings on a little."""
        return self.end + self.sr

    def overlaps(self, start: int, n: int) -> bool:
        return self.start < start + n and self.until > start

    def window(self, start: int, n: int) -> np.ndarray:
        """0..1 over samples start..start+n-1: how far the anomaly has set in."""
        return smooth_window(start, n, self.start, self.end, self.ramp)


def harmonic_wavetable(amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """One period of a harmonic hum (harmonic k at ``amps[k-1]``, ``phases[k-1]``) at unit RMS.

    A table plus a guard point for interpolation: reading it is much cheaper than summing the
    harmonics' sines sample by sample, and the hum's pitch can follow a varying speed.
    """
    if len(amps) == 0:
        return np.zeros(_TABLE + 1, dtype=np.float32)
    x = np.arange(_TABLE) / _TABLE
    k = np.arange(1, len(amps) + 1)[:, None]
    table = np.sum(amps[:, None] * np.sin(2 * np.pi * k * x[None, :] + phases[:, None]), axis=0)
    table /= np.sqrt(np.mean(table**2))
    return np.append(table, table[0]).astype(np.float32)


def read_wavetable(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """The table at oscillator phases ``cycles`` (in periods, >= 0), linearly interpolated, float32."""
    pos = cycles * _TABLE
    i0 = pos.astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    i0 &= _TABLE - 1
    lo = table[i0]
    return lo + (table[i0 + 1] - lo) * frac
