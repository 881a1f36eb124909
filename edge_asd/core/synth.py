"""Synthetic machine sounds: a stand-in for DCASE data that tests, demos and CI can make in seconds.

numpy only (it also feeds the daemon's synthetic audio source on the Jetson). Every machine
type has its own kind of sound (rotating hum with harmonics, coloured flow noise, stroke
cycles, valve clicks, belt ticks) and every machine ID of a type has its own signature
(fundamental, harmonic profile, noise colour, cycle period, click resonances), derived from
``(type, id)`` alone so that it is the same in every clip and every seed. The model learns to
tell the IDs apart; an anomaly breaks its ID's signature (a bearing tone, an imbalance wobble,
a rattle, missing or extra impacts, a speed drift, a squeal) and so is detected.

Everything is rendered by one stateful renderer that works block by block on absolute sample
indices: oscillators keep their phase, noise is filtered by an FIR with its state carried over,
impacts are events that may span blocks. A 10 s clip is simply the first 10 s of a stream, and
``MachineSoundStream`` / ``make_stream_recording`` produce long seamless audio (no boundary
clicks that a detector could mistake for anomalies).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge_asd.core.audio_io import write_wav
from edge_asd.core.constants import SAMPLE_RATE
from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

MACHINE_TYPES: tuple[str, ...] = ("fan", "ToyCar", "slider", "valve", "pump", "ToyConveyor")
"""The six DCASE 2020 Task 2 machine types, each with its own synthetic sound.

``make_dataset(types=N)`` takes the first N: fan and ToyCar come first because with only two
IDs per type a classifier's cross-entropy score separates their anomalies best (measured:
fan + ToyCar reach a CE AUC of about 0.92 after three CPU epochs, fan + pump about 0.83; the
kNN score is near 1.0 for both)."""

ANOMALY_KINDS: tuple[str, ...] = (
    "bearing",  # a high tone modulated by the rotation, plus a small speed drop
    "imbalance",  # strong wobble of the loudness at a low rate, plus a half-order hum
    "rattle",  # random metallic clicks
    "impact_missing",  # impacts skipped, a valve or slider that no longer closes, or the motor cutting out
    "impact_extra",  # impacts or knocks at wrong times
    "drift",  # speed (and cycle rate) drifting away from the ID's own
    "squeal",  # a wandering friction squeal in bursts
)
"""Kinds of anomaly ``render_clip`` and the streams can add; all apply to every machine type."""

DEFAULT_IDS: dict[str, tuple[int, ...]] = {
    # DCASE 2020 development IDs first, then the additional-training ones.
    "fan": (0, 2, 4, 6, 1, 3, 5),
    "pump": (0, 2, 4, 6, 1, 3, 5),
    "slider": (0, 2, 4, 6, 1, 3, 5),
    "valve": (0, 2, 4, 6, 1, 3, 5),
    "ToyCar": (1, 2, 3, 4, 5, 6, 7),
    "ToyConveyor": (1, 2, 3, 4, 5, 6),
}
"""Machine IDs ``make_dataset`` uses per type, in order; they match the fixed 41-class map."""

SYNTH_VERSION = 7
"""Bumped whenever the generated sound changes: caches of generated data sets key on it."""

DEFAULT_SNR_DB = 6.0
"""Machine-to-background ratio (MIMII was mixed at +6, 0 and -6 dB; +6 keeps it learnable)."""

_N_SLOTS = 8  # distinct signature slots per type (>= the most IDs of any type)
_TABLE = 2048  # wavetable length of the harmonic oscillator
_FIR_TAPS = 512
_PEAK_LO, _PEAK_HI = 900.0, 7200.0  # where the IDs' narrow resonances lie
_PEAKS_PER_ID = 3
_RAMP_S = 0.08  # fade in/out of anomalies spliced into a stream


class SynthError(UserError):
    """A bad request to the generator (unknown machine type or anomaly, too many IDs)."""


# --------------------------------------------------------------------------------------------
# Machine signatures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TypeSpec:
    """Ranges from which a machine type draws its sound (its IDs then vary around it)."""

    f0: tuple[float, float] | None  # fundamental of the hum (Hz), None: no tonal part
    n_harm: int
    tilt_db: float  # harmonic level change per harmonic
    tone_db: float
    noise_fc: tuple[float, float]  # centre of the flow noise (Hz)
    noise_oct: tuple[float, float]  # its width (octaves)
    noise_db: float
    am_rate: tuple[float, float]  # loudness modulation of the noise (Hz)
    am_depth: tuple[float, float]
    wobble: float  # relative speed fluctuation
    cycle: tuple[float, float] | None  # period of the working cycle (s), None: continuous
    duty: tuple[float, float]  # fraction of the cycle the machine is "on" (1: always)
    impacts: tuple[float, ...]  # cycle phases (0..1) of impacts; "end" of the on-part if -1
    impact_db: float
    impact_res: tuple[float, float]  # resonance range of the impacts (Hz)
    impact_decay_ms: tuple[float, float]


_SPECS: dict[str, _TypeSpec] = {
    "fan": _TypeSpec(
        f0=(80.0, 270.0), n_harm=8, tilt_db=-3.5, tone_db=-4.0, noise_fc=(400.0, 2500.0),
        noise_oct=(2.0, 3.5), noise_db=0.0, am_rate=(0.3, 1.2), am_depth=(0.05, 0.15), wobble=0.003,
        cycle=None, duty=(1.0, 1.0), impacts=(), impact_db=-60.0, impact_res=(500.0, 1500.0),
        impact_decay_ms=(10.0, 20.0),
    ),
    "pump": _TypeSpec(
        f0=(45.0, 140.0), n_harm=18, tilt_db=-1.8, tone_db=-2.0, noise_fc=(250.0, 1400.0),
        noise_oct=(1.0, 2.0), noise_db=-2.0, am_rate=(1.5, 5.0), am_depth=(0.3, 0.5), wobble=0.004,
        cycle=None, duty=(1.0, 1.0), impacts=(), impact_db=-60.0, impact_res=(300.0, 900.0),
        impact_decay_ms=(10.0, 20.0),
    ),
    "slider": _TypeSpec(
        f0=(260.0, 850.0), n_harm=5, tilt_db=-7.0, tone_db=-3.0, noise_fc=(1500.0, 5000.0),
        noise_oct=(1.0, 2.0), noise_db=-1.0, am_rate=(4.0, 9.0), am_depth=(0.05, 0.15), wobble=0.006,
        cycle=(0.9, 2.2), duty=(0.35, 0.6), impacts=(-1.0,), impact_db=12.0, impact_res=(700.0, 3000.0),
        impact_decay_ms=(25.0, 50.0),
    ),
    "valve": _TypeSpec(
        f0=None, n_harm=0, tilt_db=0.0, tone_db=-60.0, noise_fc=(2500.0, 6000.0),
        noise_oct=(1.0, 2.0), noise_db=-4.0, am_rate=(6.0, 12.0), am_depth=(0.1, 0.2), wobble=0.0,
        cycle=(0.55, 1.6), duty=(0.2, 0.5), impacts=(0.0, -1.0), impact_db=14.0,
        impact_res=(900.0, 5000.0), impact_decay_ms=(20.0, 45.0),
    ),
    "ToyCar": _TypeSpec(
        f0=(120.0, 390.0), n_harm=40, tilt_db=-1.2, tone_db=0.0, noise_fc=(150.0, 900.0),
        noise_oct=(2.0, 3.0), noise_db=-5.0, am_rate=(2.0, 6.0), am_depth=(0.05, 0.2), wobble=0.012,
        cycle=None, duty=(1.0, 1.0), impacts=(), impact_db=-60.0, impact_res=(400.0, 1200.0),
        impact_decay_ms=(10.0, 20.0),
    ),
    "ToyConveyor": _TypeSpec(
        f0=(50.0, 160.0), n_harm=12, tilt_db=-2.5, tone_db=0.0, noise_fc=(300.0, 1600.0),
        noise_oct=(1.5, 2.5), noise_db=-6.0, am_rate=(0.5, 2.0), am_depth=(0.05, 0.15), wobble=0.004,
        cycle=(0.25, 0.8), duty=(1.0, 1.0), impacts=(0.0,), impact_db=8.0,
        impact_res=(1000.0, 3500.0), impact_decay_ms=(12.0, 25.0),
    ),
}


@dataclass(frozen=True)
class _Signature:
    """What makes one machine ID sound like itself, the same in every clip."""

    machine_type: str
    machine_id: int
    f0: float
    harm_amps: tuple[float, ...]  # relative amplitudes of harmonics 1..K
    tone_gain: float
    noise_fc: float
    noise_oct: float
    noise_gain: float
    am_rate: float
    am_depth: float
    wobble: float
    cycle_s: float
    duty: float
    impacts: tuple[float, ...]
    impact_gain: float
    impact_res: tuple[float, float]
    impact_decay_s: float
    level: float  # RMS of the machine part in a clip
    peaks: tuple[tuple[float, float], ...] = ()  # narrow resonances (Hz, relative magnitude)


def _stable_seed(*parts: object) -> int:
    """A seed from strings and ints that is the same in every process (unlike ``hash``)."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def _check_type(machine_type: str) -> _TypeSpec:
    try:
        return _SPECS[machine_type]
    except KeyError:
        raise SynthError(
            f"unknown machine type {machine_type!r}: use one of {', '.join(MACHINE_TYPES)}"
        ) from None


@lru_cache(maxsize=256)
def _signature(machine_type: str, machine_id: int) -> _Signature:
    """Draw the ID's signature from generators seeded by (type) and (type, id) only.

    IDs of one type are the same kind of machine: they share the type's sound (fundamental
    region, noise colour, loudness, cycle) and differ in details, like the machine IDs of
    DCASE. The details are spread over the whole spectrum (a fundamental a few per cent apart,
    the harmonic profile, three narrow resonances between 0.9 and 7.2 kHz, the impact
    resonances), so a classifier of IDs has to look everywhere and an anomaly anywhere disturbs
    it. Fundamental, cycle and noise centre come from permutations of ``_N_SLOTS`` evenly
    spaced slots, so two IDs always differ by at least one slot, not by chance.
    """
    spec = _check_type(machine_type)
    type_rng = np.random.default_rng(_stable_seed("type", machine_type))
    perms = [type_rng.permutation(_N_SLOTS) for _ in range(4)]
    peak_grid = np.geomspace(_PEAK_LO, _PEAK_HI, _N_SLOTS * _PEAKS_PER_ID)
    peak_perm = type_rng.permutation(len(peak_grid))

    def type_value(bounds: tuple[float, float]) -> float:
        lo, hi = bounds
        return float(lo * (hi / lo) ** type_rng.uniform(0.3, 0.7))

    type_f0 = type_value(spec.f0) if spec.f0 else 0.0
    type_cycle = type_value(spec.cycle) if spec.cycle else 0.0
    type_fc = type_value(spec.noise_fc)
    type_oct = float(type_rng.uniform(*spec.noise_oct))
    type_am_rate = float(type_rng.uniform(*spec.am_rate))
    type_am_depth = float(type_rng.uniform(*spec.am_depth))
    type_duty = float(type_rng.uniform(*spec.duty))
    type_level = float(10 ** (type_rng.uniform(-27.0, -22.0) / 20))
    type_decay = float(type_rng.uniform(*spec.impact_decay_ms)) / 1000.0

    slot = int(machine_id) % _N_SLOTS
    rng = np.random.default_rng(_stable_seed("id", machine_type, machine_id))

    def around(centre: float, step: float, perm: np.ndarray) -> float:
        """``centre`` moved by whole slots of ``step`` (relative), +- a little jitter."""
        pos = perm[slot] - (_N_SLOTS - 1) / 2 + rng.uniform(-0.1, 0.1)
        return float(centre * (1.0 + step) ** pos)

    def in_slot(bounds: tuple[float, float], perm: np.ndarray) -> float:
        lo, hi = bounds
        frac = (perm[slot] + 0.5 + rng.uniform(-0.15, 0.15)) / _N_SLOTS
        return float(lo * (hi / lo) ** frac)

    harm = []
    for k in range(1, spec.n_harm + 1):
        harm.append(10 ** ((spec.tilt_db * (k - 1) + rng.uniform(-7.0, 5.0)) / 20))
    res1 = in_slot(spec.impact_res, perms[3])
    return _Signature(
        machine_type=machine_type,
        machine_id=int(machine_id),
        f0=around(type_f0, 0.04, perms[0]) if spec.f0 else 0.0,
        harm_amps=tuple(harm),
        tone_gain=10 ** (spec.tone_db / 20) if spec.f0 else 0.0,
        noise_fc=around(type_fc, 0.04, perms[2]),
        noise_oct=type_oct,
        noise_gain=10 ** (spec.noise_db / 20),
        am_rate=type_am_rate * float(rng.uniform(0.95, 1.05)),
        am_depth=type_am_depth,
        wobble=spec.wobble,
        cycle_s=around(type_cycle, 0.05, perms[1]) if spec.cycle else 0.0,
        duty=type_duty,
        impacts=spec.impacts,
        impact_gain=10 ** (spec.impact_db / 20),
        impact_res=(res1, float(res1 * rng.uniform(1.6, 2.6))),
        impact_decay_s=type_decay,
        level=type_level,
        peaks=tuple(
            (float(peak_grid[j] * rng.uniform(0.99, 1.01)), float(rng.uniform(0.2, 0.45)))
            for j in sorted(peak_perm[slot * _PEAKS_PER_ID : (slot + 1) * _PEAKS_PER_ID])
        ),
    )


# --------------------------------------------------------------------------------------------
# Building blocks that keep state across blocks
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _shaped_fir(
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
def _background_fir(sr: int, taps: int = _FIR_TAPS) -> np.ndarray:
    """Factory background: pinkish (1/f power) rumble, cut below 30 Hz and above 6 kHz."""
    f = np.fft.rfftfreq(taps, 1.0 / sr)
    mag = 1.0 / np.sqrt(np.maximum(f, 30.0) / 100.0)
    mag *= 1.0 / (1.0 + (f / 6000.0) ** 4)
    mag[f < 25.0] *= 0.05
    h = np.roll(np.fft.irfft(mag, taps), taps // 2) * np.hanning(taps)
    h /= np.sqrt(np.sum(h**2))
    return h.astype(np.float32)


class _FirNoise:
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
class _EventTrack:
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


def _resonant_click(
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


def _phase(freq_hz: float, start: int, n: int, sr: int, phase: float = 0.0) -> np.ndarray:
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


def _sine(freq_hz: float, start: int, n: int, sr: int, phase: float = 0.0) -> np.ndarray:
    """``sin(2 pi f t + phase)`` at absolute samples start..start+n-1, float32."""
    return np.sin(_phase(freq_hz, start, n, sr, phase))


def _smooth_window(start: int, n: int, on: int, off: int, ramp: int) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# Anomalies
# --------------------------------------------------------------------------------------------


_LOAD = {"bearing": 0.05, "imbalance": 0.03, "rattle": 0.03, "impact_missing": 0.04, "impact_extra": 0.03, "squeal": 0.04}


class _Anomaly:
    """One anomaly of a kind, active in [start, end) (absolute samples), of a given severity.

    Severity 1 is clearly audible in the log-mel; about 0.3-0.5 is subtle. All its random
    parameters are drawn when it is created, so it sounds the same however the stream is read.
    """

    def __init__(
        self, kind: str, sig: _Signature, start: int, end: int, severity: float, seed: int, sr: int
    ) -> None:
        if kind not in ANOMALY_KINDS:
            raise SynthError(f"unknown anomaly kind {kind!r}: use one of {', '.join(ANOMALY_KINDS)}")
        self.kind = kind
        self.start, self.end = int(start), int(end)
        self.severity = float(severity)
        self.sr = sr
        self.sig = sig
        self.rng = np.random.default_rng(seed)
        # Decisions on the machine's own impacts draw from their own generator, so the order
        # of draws (and the sound) does not depend on how the stream is cut into blocks.
        self.drop_rng = np.random.default_rng([seed, 1])
        # A clip that is anomalous from its first sample has no fade-in.
        self.ramp = 0 if start <= 0 else int(_RAMP_S * sr)
        self.track = _EventTrack()
        self._next_event = float(self.start)
        self.norm = 1.0  # the machine's RMS; set by the stream so extra impacts match its own
        rng, s = self.rng, self.severity
        self.bearing_f = float(rng.uniform(2500.0, 6000.0))
        self.bearing_mod = max(sig.f0, 40.0) / float(rng.uniform(2.5, 4.0))
        self.phase = rng.uniform(0, 2 * np.pi, 4)
        self.imb_rate = float(rng.uniform(2.0, 6.0))
        self.imb_hum = float(rng.uniform(90.0, 200.0))
        self.squeal_f = float(rng.uniform(1200.0, 3800.0))
        self.squeal_rate = float(rng.uniform(0.6, 1.8))
        self.rattle_res = (float(rng.uniform(1500.0, 3500.0)), float(rng.uniform(3500.0, 6500.0)))
        self.drift = (0.08 + 0.08 * s) * float(rng.choice([-1.0, 1.0]))
        self.knock_res = (float(rng.uniform(300.0, 900.0)), float(rng.uniform(1200.0, 2500.0)))
        self.drop_prob = min(0.97, 0.6 + 0.35 * s)
        self._dip_block: tuple[int, np.ndarray] | None = None

    @property
    def until(self) -> int:
        """Last sample it may touch: clicks scheduled before ``end`` ring on a little."""
        return self.end + self.sr

    def overlaps(self, start: int, n: int) -> bool:
        return self.start < start + n and self.until > start

    def window(self, start: int, n: int) -> np.ndarray:
        return _smooth_window(start, n, self.start, self.end, self.ramp)

    def speed_factor(self, start: int, n: int) -> np.ndarray | None:
        """Multiplier of the machine's speed (fundamental and cycle rate), or None."""
        if self.kind == "drift":
            idx = start + np.arange(n, dtype=np.float64)
            if self.start > 0:  # spliced into a stream: drifts away over 2 s
                progress = np.clip((idx - self.start) / (2.0 * self.sr), 0.0, 1.0)
            else:  # a whole clip: already 40 % off at the start, fully off after 10 s
                progress = 0.4 + 0.6 * np.clip(idx / (10.0 * self.sr), 0.0, 1.0)
            progress *= idx >= self.start
            back = np.clip((self.end - idx) / (0.5 * self.sr), 0.0, 1.0)  # recovers over 0.5 s
            return 1.0 + self.drift * progress * back
        if self.kind == "impact_missing" and self.sig.duty >= 1.0:
            return 1.0 - 0.2 * self._dips(start, n)  # a motor that cuts out also slows down
        # A fault loads the machine: it runs a few per cent slower while the fault lasts, so
        # its fundamental (or its cycle) leaves the ID's own as well.
        return 1.0 - _LOAD[self.kind] * self.severity * self.window(start, n)

    def _dips(self, start: int, n: int) -> np.ndarray:
        """Depth (0..1) of the motor cut-outs over this block, computed once per block."""
        if self._dip_block is None or self._dip_block[0] != start or len(self._dip_block[1]) != n:
            dips = np.zeros(n, dtype=np.float32)
            self._schedule(start + n, rate=2.0, maker=self._dropout)
            self.track.render_into(dips, start)
            self._dip_block = (start, dips)
        return self._dip_block[1]

    def machine_gain(self, start: int, n: int) -> np.ndarray | None:
        """Multiplier of the whole machine sound (imbalance wobble, motor cut-outs), or None."""
        if self.kind == "imbalance":
            depth = 0.35 + 0.45 * self.severity
            return 1.0 + depth * _sine(self.imb_rate, start, n, self.sr, self.phase[0]) * self.window(start, n)
        if self.kind == "impact_missing" and self.sig.duty >= 1.0:  # the motor cuts out
            return np.clip(1.0 - self._dips(start, n), 0.03, 1.0)
        return None

    def gate_floor(self) -> float | None:
        """Level of the machine while its working cycle is "off" (a valve that no longer closes)."""
        if self.kind == "impact_missing" and self.sig.duty < 1.0:
            return min(0.9, 0.35 + 0.45 * self.severity)
        return None

    def resonance_factor(self, at: int) -> float:
        """Scale of the impact resonances at sample ``at`` (a drifting, loosened part)."""
        if self.kind != "drift" or not (self.start <= at < self.end):
            return 1.0
        return float(self.speed_factor(at, 1)[0])

    def drops_impact(self, at: int) -> bool:
        """Whether a machine impact scheduled at sample ``at`` is skipped."""
        if self.kind != "impact_missing" or not (self.start <= at < self.end):
            return False
        return bool(self.drop_rng.uniform() < self.drop_prob)

    def additive(self, start: int, n: int, cycles: np.ndarray) -> np.ndarray | None:
        """Sound added to the machine (in units of its RMS), or None."""
        s, sr = self.severity, self.sr
        if self.kind == "bearing":
            am = 1.0 + 0.8 * _sine(self.bearing_mod, start, n, sr, self.phase[1])
            tone = _sine(self.bearing_f, start, n, sr, self.phase[2])
            tone += 0.5 * _sine(self.bearing_f * 2.03, start, n, sr, self.phase[3])
            return (0.45 * s) * self.window(start, n) * am * tone
        if self.kind == "imbalance":
            if self.sig.f0 > 0:  # half order of the rotation, locked to the machine's own phase
                hum = np.sin((np.pi * cycles + self.phase[1]).astype(np.float32))
            else:  # a machine without a motor hum: the unbalanced part hums on its own
                hum = _sine(self.imb_hum, start, n, sr, self.phase[1])
                hum += 0.5 * _sine(2 * self.imb_hum, start, n, sr, self.phase[2])
            return (0.7 * s) * self.window(start, n) * hum
        if self.kind == "squeal":
            # frequency wanders +-3 % at 0.7 Hz: the phase is the integral of that frequency
            fm = (-0.03 * self.squeal_f / 0.7) * np.cos(_phase(0.7, start, n, sr, self.phase[1]))
            ph = _phase(self.squeal_f, start, n, sr) + fm
            bursts = 0.3 + 0.7 * (0.5 + 0.5 * _sine(self.squeal_rate, start, n, sr, self.phase[2]))
            return (1.0 * s) * self.window(start, n) * bursts * (np.sin(ph) + 0.4 * np.sin(2 * ph + self.phase[3]))
        if self.kind == "rattle":
            out = np.zeros(n, dtype=np.float32)
            self._schedule(
                start + n, rate=8.0 + 8.0 * s, maker=lambda: (5.0 * s) * self._click(self.rattle_res, 0.006, 0.016, 0.6)
            )
            self.track.render_into(out, start)
            return out
        if self.kind == "impact_extra":
            out = np.zeros(n, dtype=np.float32)
            if self.sig.impacts:
                gain = (1.0 + s) * self.sig.impact_gain / self.norm
                maker = lambda: gain * _resonant_click(  # noqa: E731
                    self.rng, sr, self.sig.impact_res, self.sig.impact_decay_s
                )
            else:
                maker = lambda: (7.0 * s) * self._click(self.knock_res, 0.03, 0.06, 0.3)  # noqa: E731
            self._schedule(start + n, rate=2.5 + 2.0 * s, maker=maker)
            self.track.render_into(out, start)
            return out
        return None

    def _schedule(self, block_end: int, rate: float, maker: Callable[[], np.ndarray]) -> None:
        """Poisson events in the active window, up to the end of this block."""
        while self._next_event < min(block_end, self.end):
            self.track.add(int(self._next_event), maker())
            self._next_event += self.rng.exponential(self.sr / rate)

    def _click(self, res: tuple[float, float], decay_lo: float, decay_hi: float, noise: float) -> np.ndarray:
        return _resonant_click(self.rng, self.sr, res, float(self.rng.uniform(decay_lo, decay_hi)), noise)

    def _dropout(self) -> np.ndarray:
        n = int(self.sr * self.rng.uniform(0.15, 0.4))
        depth = 0.5 + 0.45 * self.severity
        return (depth * np.sin(np.pi * np.arange(n) / n) ** 0.5).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------


class MachineSoundStream:
    """Endless, seamless sound of one machine (type, ID) in factory background noise.

    ``read(n)`` returns the next ``n`` samples; any block sizes give the same audio as one
    long read. ``schedule_anomaly`` splices an anomaly in at a given time (it fades in and
    out over 80 ms, so only the anomaly itself is new, not its edges).
    """

    def __init__(
        self,
        machine_type: str,
        machine_id: int,
        seed: int = 0,
        sr: int = SAMPLE_RATE,
        snr_db: float = DEFAULT_SNR_DB,
        *,
        _calibrating: bool = False,
    ) -> None:
        self.machine_type = machine_type
        self.machine_id = int(machine_id)
        self.seed = int(seed)
        self.sr = int(sr)
        self.snr_db = float(snr_db)
        self.sig = sig = _signature(machine_type, int(machine_id))
        self._pos = 0
        self._anomalies: list[_Anomaly] = []
        root = np.random.SeedSequence([self.seed & 0xFFFFFFFF, _stable_seed(machine_type, machine_id)])
        rng_clip, rng_noise, rng_bg, rng_imp = (np.random.default_rng(s) for s in root.spawn(4))
        self._anomaly_seeds = root.spawn(1)[0]
        # Per-clip (per-seed) variation: small enough that the ID stays recognisable.
        self._f0 = sig.f0 * float(rng_clip.uniform(0.992, 1.008))
        self._cycle_hz = 1.0 / sig.cycle_s * float(rng_clip.uniform(0.985, 1.015)) if sig.cycle_s else 0.0
        self._level = sig.level * 10 ** (float(rng_clip.uniform(-1.0, 1.0)) / 20)
        self._wobble_rates = rng_clip.uniform(0.1, 1.5, 3)
        self._wobble_phases = rng_clip.uniform(0, 2 * np.pi, 3)
        self._am_phase = float(rng_clip.uniform(0, 2 * np.pi))
        self._am_rate = sig.am_rate * float(rng_clip.uniform(0.9, 1.1))
        self._hum_phases = rng_clip.uniform(0, 2 * np.pi, 3)
        self._bg_hum = 10 ** (float(rng_clip.uniform(-30.0, -22.0)) / 20)
        amps = np.array(sig.harm_amps) * 10 ** (rng_clip.uniform(-1.0, 1.0, len(sig.harm_amps)) / 20)
        phases = rng_clip.uniform(0, 2 * np.pi, len(amps))
        # Harmonics stay below 7.6 kHz even at +20 % speed (wobble, drift), so nothing aliases.
        max_k = int(7600.0 / (self._f0 * 1.2)) if self._f0 > 0 else 0
        self._table = self._wavetable(amps[:max_k], phases[:max_k])
        self._cycles = float(rng_clip.uniform(0.0, 1.0))  # oscillator phase, in cycles (kept mod 2)
        self._cycle_phase = float(rng_clip.uniform(0.0, 1.0))  # working-cycle phase, in cycles
        self._noise = _FirNoise(_shaped_fir(self.sr, sig.noise_fc, sig.noise_oct, 0.02, sig.peaks), rng_noise)
        self._bg = _FirNoise(_background_fir(self.sr), rng_bg)
        self._rng_imp = rng_imp
        self._impacts = _EventTrack()
        self._calibrating = _calibrating
        self._norm = 1.0 if _calibrating else _machine_rms(machine_type, self.machine_id, self.sr)

    # -- public -------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Samples produced so far."""
        return self._pos

    def schedule_anomaly(
        self, kind: str, start_s: float, duration_s: float | None = None, severity: float = 1.0
    ) -> tuple[float, float]:
        """Add an anomaly from ``start_s`` for ``duration_s`` seconds (None: for ever).

        Returns the (start_s, end_s) it got (end_s is inf when open-ended); a start in the
        stream's past is moved to its current position.
        """
        start = max(int(round(start_s * self.sr)), self._pos)
        end = 2**62 if duration_s is None else start + int(round(duration_s * self.sr))
        seed = int(self._anomaly_seeds.spawn(1)[0].generate_state(1)[0])
        anomaly = _Anomaly(kind, self.sig, start, end, severity, seed, self.sr)
        anomaly.norm = self._norm
        self._anomalies.append(anomaly)
        return start / self.sr, (math.inf if duration_s is None else end / self.sr)

    def read(self, n_samples: int) -> np.ndarray:
        """The next ``n_samples`` samples, float32 in [-1, 1]."""
        n = int(n_samples)
        if n <= 0:
            return np.zeros(0, dtype=np.float32)
        out = self._render(self._pos, n)
        self._pos += n
        self._anomalies = [a for a in self._anomalies if a.until > self._pos]
        return out

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _wavetable(amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
        """One period of the harmonic hum at unit RMS (plus a guard point for interpolation)."""
        if len(amps) == 0:
            return np.zeros(_TABLE + 1, dtype=np.float32)
        x = np.arange(_TABLE) / _TABLE
        k = np.arange(1, len(amps) + 1)[:, None]
        table = np.sum(amps[:, None] * np.sin(2 * np.pi * k * x[None, :] + phases[:, None]), axis=0)
        table /= np.sqrt(np.mean(table**2))
        return np.append(table, table[0]).astype(np.float32)

    def _render(self, start: int, n: int) -> np.ndarray:
        sig, sr = self.sig, self.sr
        active = [a for a in self._anomalies if a.overlaps(start, n)]

        speed = np.ones(n, dtype=np.float64)
        if sig.wobble:
            wob = sum(
                _sine(float(r), start, n, sr, float(p))
                for r, p in zip(self._wobble_rates, self._wobble_phases, strict=True)
            )
            speed += (sig.wobble / 3.0) * wob
        for a in active:
            factor = a.speed_factor(start, n)
            if factor is not None:
                speed *= factor

        # Tonal part: a wavetable oscillator whose phase integrates the (varying) speed.
        cyc = self._cycles + np.cumsum(speed * (self._f0 / sr))
        self._cycles = float(cyc[-1] % 2.0)
        machine = np.zeros(n, dtype=np.float32)
        if sig.tone_gain > 0:
            pos = cyc * _TABLE
            i0 = pos.astype(np.int64)
            frac = (pos - i0).astype(np.float32)
            i0 &= _TABLE - 1
            lo = self._table[i0]
            machine += sig.tone_gain * (lo + (self._table[i0 + 1] - lo) * frac)

        am = 1.0 + sig.am_depth * _sine(self._am_rate, start, n, sr, self._am_phase)
        machine += sig.noise_gain * (self._noise.render(n) * am)

        # Working cycle (stroke, valve opening): a gate, and impacts at fixed cycle phases.
        if self._cycle_hz:
            prev = self._cycle_phase
            cyc_pos = prev + np.cumsum(speed * (self._cycle_hz / sr))
            self._cycle_phase = float(cyc_pos[-1])
            if sig.duty < 1.0:
                frac_c = cyc_pos - np.floor(cyc_pos)
                edge = 0.04
                on = np.clip(frac_c / edge, 0, 1) * np.clip((sig.duty - frac_c) / edge, 0, 1)
                floor = np.full(n, 0.08)
                for a in active:
                    raised = a.gate_floor()
                    if raised is not None:
                        floor = np.maximum(floor, 0.08 + (raised - 0.08) * a.window(start, n))
                machine *= (floor + (1.0 - floor) * (0.5 - 0.5 * np.cos(np.pi * on))).astype(np.float32)
            self._schedule_impacts(prev, cyc_pos, start, active)
        if sig.impacts:
            impacts = np.zeros(n, dtype=np.float32)
            self._impacts.render_into(impacts, start)
            machine += sig.impact_gain * impacts
        machine /= self._norm

        for a in active:
            gain = a.machine_gain(start, n)
            if gain is not None:
                machine *= gain
            extra = a.additive(start, n, cyc)
            if extra is not None:
                machine += extra

        if self._calibrating:
            return machine.astype(np.float32)
        bg = self._bg.render(n)
        for k, ph in enumerate(self._hum_phases, start=1):
            bg += (3.0 * self._bg_hum / k) * _sine(50.0 * k, start, n, sr, float(ph))
        out = self._level * (machine + bg * np.float32(10 ** (-self.snr_db / 20)))
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def _impact_wave(self, scale: float = 1.0) -> np.ndarray:
        sig = self.sig
        res = (sig.impact_res[0] * scale, sig.impact_res[1] * scale)
        return _resonant_click(self._rng_imp, self.sr, res, sig.impact_decay_s)

    def _schedule_impacts(self, prev: float, cyc_pos: np.ndarray, start: int, active: list[_Anomaly]) -> None:
        """Place an impact wherever the cycle phase crosses one of the signature's impact points."""
        sig = self.sig
        if not sig.impacts:
            return
        points = [p if p >= 0 else sig.duty for p in sig.impacts]
        # Crossings of k + p (integer k) in (prev, last], in time order so the random draws
        # happen in the same order whatever the block sizes.
        crossings = []
        for p in points:
            for k in range(math.floor(prev - p) + 1, math.floor(cyc_pos[-1] - p) + 1):
                crossings.append(k + p)
        for c in sorted(crossings):
            j = min(int(np.searchsorted(cyc_pos, c)), len(cyc_pos) - 1)
            at = start + j + int(self._rng_imp.integers(0, int(0.004 * self.sr)))
            scale = math.prod(a.resonance_factor(at) for a in active)
            wave = self._impact_wave(scale) * self._rng_imp.uniform(0.85, 1.15)
            if any(a.drops_impact(at) for a in active):
                continue
            self._impacts.add(at, wave)


@lru_cache(maxsize=256)
def _machine_rms(machine_type: str, machine_id: int, sr: int) -> float:
    """RMS of the machine part of the ID (no background), measured once on 4 s of sound.

    The SNR and the levels are set relative to it, and a stream cannot measure its own clip.
    """
    probe = MachineSoundStream(machine_type, machine_id, seed=0x5EED, sr=sr, _calibrating=True)
    x = probe.read(4 * sr).astype(np.float64)
    return float(np.sqrt(np.mean(x**2)) + 1e-9)


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def render_clip(
    machine_type: str,
    machine_id: int,
    seed: int,
    anomaly: str | None = None,
    seconds: float = 10.0,
    sr: int = SAMPLE_RATE,
    snr_db: float = DEFAULT_SNR_DB,
    severity: float = 1.0,
) -> np.ndarray:
    """One clip of ``seconds`` of the machine, float32 in [-1, 1], the same for the same seed.

    With ``anomaly`` (one of ``ANOMALY_KINDS``) the anomaly lasts the whole clip; ``severity``
    about 0.3-0.5 makes it subtle.
    """
    stream = MachineSoundStream(machine_type, machine_id, seed=seed, sr=sr, snr_db=snr_db)
    if anomaly is not None:
        stream.schedule_anomaly(anomaly, 0.0, None, severity=severity)
    return stream.read(int(round(seconds * sr)))


def make_stream_recording(
    machine_type: str,
    machine_id: int,
    seconds: float,
    anomaly_at_s: float | None,
    anomaly_seconds: float = 10.0,
    anomaly_kind: str = "rattle",
    seed: int = 0,
    sr: int = SAMPLE_RATE,
    snr_db: float = DEFAULT_SNR_DB,
    severity: float = 1.0,
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Continuous normal audio of ``seconds`` with one anomaly spliced in.

    Returns ``(audio, (start_s, end_s))`` (the span is None when ``anomaly_at_s`` is None). Up
    to the span the audio is exactly what ``MachineSoundStream(type, id, seed)`` produces;
    after it the machine runs on as before (an anomaly that slowed it leaves its phase
    shifted). It is rendered as one stream, so it sounds like that ID's training clips and
    has no seams.
    """
    stream = MachineSoundStream(machine_type, machine_id, seed=seed, sr=sr, snr_db=snr_db)
    span = None
    if anomaly_at_s is not None:
        span = stream.schedule_anomaly(anomaly_kind, anomaly_at_s, anomaly_seconds, severity=severity)
    n = int(round(seconds * sr))
    chunks = [stream.read(min(sr * 10, n - i)) for i in range(0, n, sr * 10)]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return audio, span


def resolve_types(types: int | Sequence[str]) -> list[str]:
    """``2`` -> the first two of ``MACHINE_TYPES``; a list of names is checked. SynthError if bad."""
    if isinstance(types, int):
        if not 1 <= types <= len(MACHINE_TYPES):
            raise SynthError(f"--types must be 1..{len(MACHINE_TYPES)}, got {types}")
        return list(MACHINE_TYPES[:types])
    names = list(types)
    for name in names:
        _check_type(name)
    if not names:
        raise SynthError("no machine types given: name at least one of " + ", ".join(MACHINE_TYPES))
    return names


def resolve_ids(machine_type: str, ids: int | Sequence[int]) -> list[int]:
    """``2`` -> the first two of ``DEFAULT_IDS[type]``; a list of IDs is checked. SynthError if bad."""
    available = DEFAULT_IDS[machine_type]
    if isinstance(ids, int):
        if not 1 <= ids <= len(available):
            raise SynthError(
                f"{machine_type} has {len(available)} machine IDs ({', '.join(f'{i:02d}' for i in available)}); "
                f"asked for {ids}: use --ids 1..{len(available)}"
            )
        return list(available[:ids])
    chosen = [int(i) for i in ids]
    bad = [i for i in chosen if i not in available]
    if bad:
        raise SynthError(f"{machine_type} has no machine ID {bad[0]:02d}: use one of {list(available)}")
    return chosen


def _clip_seed(seed: int, *parts: object) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, _stable_seed(*parts)]).generate_state(1)[0])


def make_dataset(
    out_dir: str | Path,
    types: int | Sequence[str] = 2,
    ids: int | Sequence[int] = 2,
    train_clips: int = 50,
    test_clips: int = 20,
    seed: int = 0,
    snr_db: float = DEFAULT_SNR_DB,
    subtle_fraction: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write a DCASE 2020 development tree of synthetic clips under ``out_dir/dev_data``.

    Per machine ID: ``train_clips`` normal training clips and ``test_clips`` normal plus
    ``test_clips`` anomalous test clips (kinds cycle through ``ANOMALY_KINDS``; about
    ``subtle_fraction`` of them subtle). Files are 16 kHz mono int16, 10 s, named
    ``normal_id_XX_NNNNNNNN.wav`` / ``anomaly_id_XX_NNNNNNNN.wav``. ``progress(done, total)`` is
    called after each file. Returns a summary (counts, types, IDs, anomaly kinds).
    """
    out = Path(out_dir)
    type_list = resolve_types(types)
    plan: list[tuple[str, int, str, str, int, str | None, float]] = []
    kinds_used: dict[str, int] = {}
    for machine_type in type_list:
        for machine_id in resolve_ids(machine_type, ids):
            for i in range(train_clips):
                plan.append((machine_type, machine_id, "train", "normal", i, None, 0.0))
            for i in range(test_clips):
                plan.append((machine_type, machine_id, "test", "normal", i, None, 0.0))
            rng = np.random.default_rng(_clip_seed(seed, "kinds", machine_type, machine_id))
            order = list(ANOMALY_KINDS)
            rng.shuffle(order)
            for i in range(test_clips):
                kind = order[i % len(order)]
                subtle = rng.uniform() < subtle_fraction
                severity = rng.uniform(0.45, 0.6) if subtle else rng.uniform(1.0, 1.5)
                plan.append((machine_type, machine_id, "test", "anomaly", i, kind, float(severity)))
    total = len(plan)
    for done, (machine_type, machine_id, split, label, i, kind, severity) in enumerate(plan, 1):
        clip_seed = _clip_seed(seed, machine_type, machine_id, split, label, i)
        audio = render_clip(machine_type, machine_id, clip_seed, kind, snr_db=snr_db, severity=severity or 1.0)
        name = f"{label}_id_{machine_id:02d}_{i:08d}.wav"
        write_wav(out / "dev_data" / machine_type / split / name, audio)
        if kind is not None:
            kinds_used[kind] = kinds_used.get(kind, 0) + 1
        if progress is not None:
            progress(done, total)
    summary = {
        "root": str(out),
        "types": type_list,
        "ids": {t: resolve_ids(t, ids) for t in type_list},
        "train_clips": sum(1 for p in plan if p[2] == "train"),
        "test_normal": sum(1 for p in plan if p[2] == "test" and p[3] == "normal"),
        "test_anomaly": sum(1 for p in plan if p[3] == "anomaly"),
        "files": total,
        "anomaly_kinds": kinds_used,
        "seed": seed,
        "snr_db": snr_db,
        "synth_version": SYNTH_VERSION,
    }
    logger.info("synthetic dataset: %d files under %s", total, out)
    return summary


__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_IDS",
    "DEFAULT_SNR_DB",
    "MACHINE_TYPES",
    "SYNTH_VERSION",
    "MachineSoundStream",
    "SynthError",
    "make_dataset",
    "make_stream_recording",
    "render_clip",
    "resolve_ids",
    "resolve_types",
]
