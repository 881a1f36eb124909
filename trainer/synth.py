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

from trainer.audio_io import SAMPLE_RATE, write_wav
from trainer.errors import UserError

logger = logging.getLogger(__name__)

MACHINE_TYPES: tuple[str, ...] = ("fan", "pump", "slider", "valve", "ToyCar", "ToyConveyor")
"""The six DCASE 2020 Task 2 machine types, each with its own synthetic sound."""

ANOMALY_KINDS: tuple[str, ...] = (
    "bearing",  # a high tone modulated by the rotation, plus a small speed drop
    "imbalance",  # strong wobble of the loudness at a low rate, plus a half-order hum
    "rattle",  # random metallic clicks
    "impact_missing",  # impacts skipped (or the motor cutting out on machines without impacts)
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

DEFAULT_SNR_DB = 6.0
"""Machine-to-background ratio (MIMII was mixed at +6, 0 and -6 dB; +6 keeps it learnable)."""

_N_SLOTS = 8  # distinct signature slots per type (>= the most IDs of any type)
_TABLE = 2048  # wavetable length of the harmonic oscillator
_FIR_TAPS = 512
_RAMP_S = 0.08  # fade in/out of anomalies spliced into a stream


class SynthError(UserError):
    """A bad request to the generator (unknown machine type or anomaly, too many IDs)."""


# --------------------------------------------------------------------------------------------
# Machine signatures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TypeSpec:
    """Ranges from which each ID of a type draws its signature."""

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
        cycle=(0.9, 2.2), duty=(0.35, 0.6), impacts=(-1.0,), impact_db=2.0, impact_res=(700.0, 3000.0),
        impact_decay_ms=(15.0, 35.0),
    ),
    "valve": _TypeSpec(
        f0=None, n_harm=0, tilt_db=0.0, tone_db=-60.0, noise_fc=(2500.0, 6000.0),
        noise_oct=(1.0, 2.0), noise_db=-4.0, am_rate=(6.0, 12.0), am_depth=(0.1, 0.2), wobble=0.0,
        cycle=(0.55, 1.6), duty=(0.2, 0.5), impacts=(0.0, -1.0), impact_db=6.0,
        impact_res=(900.0, 5000.0), impact_decay_ms=(8.0, 25.0),
    ),
    "ToyCar": _TypeSpec(
        f0=(120.0, 390.0), n_harm=40, tilt_db=-1.2, tone_db=0.0, noise_fc=(150.0, 900.0),
        noise_oct=(2.0, 3.0), noise_db=-5.0, am_rate=(2.0, 6.0), am_depth=(0.05, 0.2), wobble=0.012,
        cycle=None, duty=(1.0, 1.0), impacts=(), impact_db=-60.0, impact_res=(400.0, 1200.0),
        impact_decay_ms=(10.0, 20.0),
    ),
    "ToyConveyor": _TypeSpec(
        f0=(50.0, 160.0), n_harm=12, tilt_db=-3.0, tone_db=-3.0, noise_fc=(300.0, 1600.0),
        noise_oct=(1.5, 2.5), noise_db=-4.0, am_rate=(0.5, 2.0), am_depth=(0.05, 0.15), wobble=0.004,
        cycle=(0.25, 0.8), duty=(1.0, 1.0), impacts=(0.0,), impact_db=-4.0,
        impact_res=(1000.0, 3500.0), impact_decay_ms=(5.0, 12.0),
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
    """Draw the ID's signature from a generator seeded by (type, id) only.

    The main cues (fundamental, cycle period, noise centre) come from separate permutations of
    ``_N_SLOTS`` evenly spaced slots, so two IDs of one type always differ by at least one slot
    (about 15 % in frequency) in each cue, not by chance.
    """
    spec = _check_type(machine_type)
    type_rng = np.random.default_rng(_stable_seed("type", machine_type))
    perms = [type_rng.permutation(_N_SLOTS) for _ in range(4)]
    slot = int(machine_id) % _N_SLOTS
    rng = np.random.default_rng(_stable_seed("id", machine_type, machine_id))

    def in_slot(bounds: tuple[float, float], perm: np.ndarray) -> float:
        lo, hi = bounds
        frac = (perm[slot] + 0.5 + rng.uniform(-0.15, 0.15)) / _N_SLOTS
        return float(lo * (hi / lo) ** frac)

    f0 = in_slot(spec.f0, perms[0]) if spec.f0 else 0.0
    harm = []
    for k in range(1, spec.n_harm + 1):
        harm.append(10 ** ((spec.tilt_db * (k - 1) + rng.uniform(-7.0, 5.0)) / 20))
    cycle_s = in_slot(spec.cycle, perms[1]) if spec.cycle else 0.0
    noise_fc = in_slot(spec.noise_fc, perms[2])
    res_lo, res_hi = spec.impact_res
    res1 = in_slot((res_lo, res_hi), perms[3])
    res2 = res1 * rng.uniform(1.6, 2.6)
    return _Signature(
        machine_type=machine_type,
        machine_id=int(machine_id),
        f0=f0,
        harm_amps=tuple(harm),
        tone_gain=10 ** (spec.tone_db / 20) if spec.f0 else 0.0,
        noise_fc=noise_fc,
        noise_oct=float(rng.uniform(*spec.noise_oct)),
        noise_gain=10 ** (spec.noise_db / 20),
        am_rate=float(rng.uniform(*spec.am_rate)),
        am_depth=float(rng.uniform(*spec.am_depth)),
        wobble=spec.wobble,
        cycle_s=cycle_s,
        duty=float(rng.uniform(*spec.duty)),
        impacts=spec.impacts,
        impact_gain=10 ** (spec.impact_db / 20),
        impact_res=(res1, float(res2)),
        impact_decay_s=float(rng.uniform(*spec.impact_decay_ms)) / 1000.0,
        level=float(10 ** (rng.uniform(-27.0, -22.0) / 20)),
    )


# --------------------------------------------------------------------------------------------
# Building blocks that keep state across blocks
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _shaped_fir(sr: int, centre: float, octaves: float, floor: float, taps: int = _FIR_TAPS) -> np.ndarray:
    """Unit-energy linear-phase FIR whose magnitude is a hump in log frequency over a floor.

    Unit energy makes unit-variance white noise come out at unit variance, so levels are set
    by gains alone.
    """
    f = np.fft.rfftfreq(taps, 1.0 / sr)
    lf = np.log2(np.maximum(f, 20.0) / centre)
    mag = np.exp(-0.5 * (lf / (octaves / 2.0)) ** 2) + floor
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
    """White Gaussian noise through an FIR, continuous across blocks (overlap-save)."""

    def __init__(self, h: np.ndarray, rng: np.random.Generator) -> None:
        self._h = h
        self._rng = rng
        self._tail = rng.standard_normal(len(h) - 1, dtype=np.float32)

    def render(self, n: int) -> np.ndarray:
        white = self._rng.standard_normal(n, dtype=np.float32)
        x = np.concatenate([self._tail, white])
        self._tail = x[len(x) - (len(self._h) - 1) :]
        size = 1 << int(math.ceil(math.log2(len(x) + len(self._h) - 1)))
        y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(self._h, size), size)
        return y[len(self._h) - 1 : len(self._h) - 1 + n].astype(np.float32)


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


def _smooth_window(idx: np.ndarray, start: int, end: int, ramp: int) -> np.ndarray:
    """1 inside [start, end) with raised-cosine ramps of ``ramp`` samples inside the edges."""
    w = np.ones(len(idx), dtype=np.float64)
    if ramp > 0:
        up = np.clip((idx - start) / ramp, 0.0, 1.0)
        down = np.clip((end - idx) / ramp, 0.0, 1.0)
        w = np.minimum(0.5 - 0.5 * np.cos(np.pi * up), 0.5 - 0.5 * np.cos(np.pi * down))
    w[(idx < start) | (idx >= end)] = 0.0
    return w


# --------------------------------------------------------------------------------------------
# Anomalies
# --------------------------------------------------------------------------------------------


class _Anomaly:
    """One anomaly of a kind, active in [start, end) (absolute samples), of a given severity.

    Severity 1 is clearly audible in the log-mel; about 0.3-0.5 is subtle.
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
        self.ramp = 0 if start <= 0 else int(_RAMP_S * sr)
        self.track = _EventTrack()
        self._next_event = float(self.start)
        rng, s = self.rng, self.severity
        # Parameters are drawn here, once, so the anomaly is the same however the stream is read.
        self.bearing_f = rng.uniform(2500.0, 6000.0)
        self.bearing_mod = max(sig.f0, 40.0) / rng.uniform(2.5, 4.0)
        self.phase = rng.uniform(0, 2 * np.pi, 4)
        self.imb_rate = rng.uniform(2.0, 6.0)
        self.squeal_f = rng.uniform(1200.0, 3800.0)
        self.squeal_rate = rng.uniform(0.6, 1.8)
        self.rattle_res = (rng.uniform(1500.0, 3500.0), rng.uniform(3500.0, 6500.0))
        self.drift = (0.07 + 0.08 * s) * rng.choice([-1.0, 1.0])
        self.knock_res = (rng.uniform(180.0, 450.0), rng.uniform(600.0, 1200.0))
        self.drop_prob = min(0.95, 0.45 + 0.45 * s)

    def window(self, idx: np.ndarray) -> np.ndarray:
        return _smooth_window(idx, self.start, self.end, self.ramp)

    def speed_factor(self, idx: np.ndarray) -> np.ndarray | None:
        """Multiplier of the machine's speed (fundamental and cycle rate)."""
        if self.kind == "drift":
            length = max(1, self.end - self.start) if self.end < 2**62 else 10 * self.sr
            ramp_len = min(2 * self.sr, length) if self.start > 0 else length
            base = 0.0 if self.start > 0 else 0.4
            progress = np.clip((idx - self.start) / ramp_len, 0.0, 1.0)
            progress = base + (1 - base) * progress
            return 1.0 + self.drift * progress * (idx >= self.start) * (idx < self.end + self.ramp)
        if self.kind == "bearing":
            return 1.0 - 0.02 * self.severity * self.window(idx)
        return None

    def machine_gain(self, idx: np.ndarray, t: np.ndarray) -> np.ndarray | None:
        """Multiplier of the whole machine sound (imbalance wobble, motor cut-outs)."""
        if self.kind == "imbalance":
            depth = 0.35 + 0.45 * self.severity
            mod = 1.0 + depth * np.sin(2 * np.pi * self.imb_rate * t + self.phase[0])
            return 1.0 + (mod - 1.0) * self.window(idx)
        if self.kind == "impact_missing" and not self.sig.impacts:
            dips = np.zeros(len(idx))
            self._schedule(idx, rate=0.9, maker=self._dropout)
            self.track.render_into(dips, int(idx[0]))
            return np.clip(1.0 - dips, 0.03, 1.0)
        return None

    def drops_impact(self, at: int) -> bool:
        """Whether a scheduled machine impact at sample ``at`` is skipped."""
        if self.kind != "impact_missing" or not (self.start <= at < self.end):
            return False
        return bool(self.rng.uniform() < self.drop_prob)

    def additive(
        self, idx: np.ndarray, t: np.ndarray, cycles: np.ndarray, impact_wave: Callable[[], np.ndarray]
    ) -> np.ndarray | None:
        """Sound added to the normalised machine (unit RMS), or None."""
        s = self.severity
        if self.kind == "bearing":
            w = self.window(idx)
            am = 1.0 + 0.8 * np.sin(2 * np.pi * self.bearing_mod * t + self.phase[1])
            tone = np.sin(2 * np.pi * self.bearing_f * t + self.phase[2])
            tone += 0.5 * np.sin(2 * np.pi * self.bearing_f * 2.03 * t + self.phase[3])
            return (0.45 * s) * w * am * tone
        if self.kind == "imbalance" and self.sig.f0 > 0:
            w = self.window(idx)
            return (0.5 * s) * w * np.sin(np.pi * cycles + self.phase[1])  # half order of the rotation
        if self.kind == "squeal":
            w = self.window(idx)
            wander = 1.0 + 0.03 * np.sin(2 * np.pi * 0.7 * t + self.phase[1])
            ph = 2 * np.pi * self.squeal_f * (t + 0.03 / (2 * np.pi * 0.7) * -np.cos(2 * np.pi * 0.7 * t))
            bursts = (0.5 + 0.5 * np.sin(2 * np.pi * self.squeal_rate * t + self.phase[2])) ** 2
            del wander
            return (0.6 * s) * w * bursts * (np.sin(ph) + 0.3 * np.sin(2 * ph + self.phase[3]))
        if self.kind == "rattle":
            out = np.zeros(len(idx))
            self._schedule(idx, rate=6.0 + 8.0 * s, maker=lambda: (2.5 * s) * self._rattle_click())
            self.track.render_into(out, int(idx[0]))
            return out
        if self.kind == "impact_extra":
            out = np.zeros(len(idx))
            if self.sig.impacts:
                maker = lambda: (1.0 + s) * self.sig.impact_gain * impact_wave()  # noqa: E731
            else:
                maker = lambda: (3.0 * s) * self._knock()  # noqa: E731
            self._schedule(idx, rate=1.2 + 1.0 * s, maker=maker)
            self.track.render_into(out, int(idx[0]))
            return out
        return None

    def _schedule(self, idx: np.ndarray, rate: float, maker: Callable[[], np.ndarray]) -> None:
        """Poisson events in the active window up to the end of this block."""
        block_end = int(idx[-1]) + 1
        while self._next_event < min(block_end, self.end):
            self.track.add(int(self._next_event), maker())
            self._next_event += self.rng.exponential(self.sr / rate)

    def _rattle_click(self) -> np.ndarray:
        return _resonant_click(self.rng, self.sr, self.rattle_res, self.rng.uniform(0.004, 0.012), 0.6)

    def _knock(self) -> np.ndarray:
        return _resonant_click(self.rng, self.sr, self.knock_res, self.rng.uniform(0.015, 0.03), 0.2)

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
        self.sig = _signature(machine_type, int(machine_id))
        self._pos = 0
        self._anomalies: list[_Anomaly] = []
        sig = self.sig
        root = np.random.SeedSequence([self.seed & 0xFFFFFFFF, _stable_seed(machine_type, machine_id)])
        rng_clip, rng_noise, rng_bg, rng_imp = (np.random.default_rng(s) for s in root.spawn(4))
        self._anomaly_seeds = root.spawn(1)[0]
        # Per-clip (per-seed) variation: small enough that the ID stays recognisable.
        self._f0 = sig.f0 * rng_clip.uniform(0.992, 1.008)
        self._cycle_hz = 1.0 / sig.cycle_s * rng_clip.uniform(0.985, 1.015) if sig.cycle_s else 0.0
        self._level = sig.level * 10 ** (rng_clip.uniform(-1.0, 1.0) / 20)
        self._wobble_rates = rng_clip.uniform(0.1, 1.5, 3)
        self._wobble_phases = rng_clip.uniform(0, 2 * np.pi, 3)
        self._am_phase = rng_clip.uniform(0, 2 * np.pi)
        self._am_rate = sig.am_rate * rng_clip.uniform(0.9, 1.1)
        self._hum_phases = rng_clip.uniform(0, 2 * np.pi, 3)
        self._bg_hum = 10 ** (rng_clip.uniform(-30.0, -22.0) / 20)
        amps = np.array(sig.harm_amps) * 10 ** (rng_clip.uniform(-1.0, 1.0, len(sig.harm_amps)) / 20)
        self._table = self._wavetable(amps, rng_clip.uniform(0, 2 * np.pi, len(amps)))
        self._cycles = rng_clip.uniform(0.0, 1.0)  # oscillator phase, in cycles (kept mod 2)
        self._cycle_phase = rng_clip.uniform(0.0, 1.0)  # working-cycle phase, in cycles
        self._noise = _FirNoise(_shaped_fir(self.sr, sig.noise_fc, sig.noise_oct, 0.02), rng_noise)
        self._bg = _FirNoise(_background_fir(self.sr), rng_bg)
        self._rng_imp = rng_imp
        self._impacts = _EventTrack()
        self._norm = 1.0 if _calibrating else _machine_rms(machine_type, self.machine_id, self.sr)
        self._with_background = not _calibrating

    # -- public -------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Samples produced so far."""
        return self._pos

    def schedule_anomaly(
        self, kind: str, start_s: float, duration_s: float | None = None, severity: float = 1.0
    ) -> tuple[float, float]:
        """Add an anomaly from ``start_s`` for ``duration_s`` seconds (None: for ever).

        Returns (start_s, end_s) with end_s = inf for an open-ended one. It may start in the
        past of the stream only from its current position on.
        """
        start = max(int(round(start_s * self.sr)), self._pos)
        end = 2**62 if duration_s is None else start + int(round(duration_s * self.sr))
        seed = int(self._anomaly_seeds.spawn(1)[0].generate_state(1)[0])
        self._anomalies.append(_Anomaly(kind, self.sig, start, end, severity, seed, self.sr))
        return start / self.sr, (math.inf if duration_s is None else end / self.sr)

    def read(self, n_samples: int) -> np.ndarray:
        """The next ``n_samples`` samples, float32 in [-1, 1]."""
        n = int(n_samples)
        if n <= 0:
            return np.zeros(0, dtype=np.float32)
        out = self._render(n)
        self._pos += n
        return out

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _wavetable(amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
        if len(amps) == 0:
            return np.zeros(_TABLE + 1)
        x = np.arange(_TABLE) / _TABLE
        k = np.arange(1, len(amps) + 1)[:, None]
        table = np.sum(amps[:, None] * np.sin(2 * np.pi * k * x[None, :] + phases[:, None]), axis=0)
        table /= np.sqrt(np.mean(table**2))
        return np.append(table, table[0])  # guard point for interpolation

    def _render(self, n: int) -> np.ndarray:
        sig, sr = self.sig, self.sr
        idx = np.arange(self._pos, self._pos + n, dtype=np.int64)
        t = idx / sr
        active = [a for a in self._anomalies if a.start < self._pos + n and a.end + a.ramp > self._pos]

        speed = 1.0 + sig.wobble * np.sum(
            np.sin(2 * np.pi * self._wobble_rates[:, None] * t[None, :] + self._wobble_phases[:, None]), axis=0
        ) / 3.0
        for a in active:
            factor = a.speed_factor(idx)
            if factor is not None:
                speed = speed * factor

        # Tonal part: a wavetable oscillator whose phase integrates the (varying) speed.
        cyc = self._cycles + np.cumsum(self._f0 * speed / sr)
        self._cycles = float(cyc[-1] % 2.0)
        cycles = np.mod(cyc, 2.0)
        tone = np.zeros(n)
        if sig.tone_gain > 0:
            half_harm = len(sig.harm_amps)
            max_k = int(7600.0 / (self._f0 * 1.2))
            if half_harm > max_k:  # keep harmonics below Nyquist (built once per renderer)
                self._table = self._table_limited(max_k)
            pos = np.mod(cyc, 1.0) * _TABLE
            i0 = pos.astype(np.int64)
            frac = pos - i0
            tone = self._table[i0] * (1.0 - frac) + self._table[i0 + 1] * frac

        # Working cycle (stroke, valve opening): gate and impacts follow the cycle phase.
        gate = np.ones(n)
        cyc_pos = None
        if self._cycle_hz:
            cyc_pos = self._cycle_phase + np.cumsum(self._cycle_hz * speed / sr)
            self._cycle_phase = float(cyc_pos[-1])
            if sig.duty < 1.0:
                frac = np.mod(cyc_pos, 1.0)
                edge = 0.04
                on = np.clip(frac / edge, 0, 1) * np.clip((sig.duty - frac) / edge, 0, 1)
                gate = 0.08 + 0.92 * (0.5 - 0.5 * np.cos(np.pi * on))
            self._schedule_impacts(cyc_pos, idx, active)

        am = 1.0 + sig.am_depth * np.sin(2 * np.pi * self._am_rate * t + self._am_phase)
        noise = self._noise.render(n) * am
        machine = gate * (sig.tone_gain * tone + sig.noise_gain * noise)
        impacts = np.zeros(n)
        self._impacts.render_into(impacts, self._pos)
        machine = machine + sig.impact_gain * impacts
        machine = machine / self._norm

        for a in active:
            gain = a.machine_gain(idx, t)
            if gain is not None:
                machine = machine * gain
            extra = a.additive(idx, t, cycles, self._impact_wave)
            if extra is not None:
                machine = machine + extra

        if not self._with_background:
            return machine.astype(np.float32)
        bg = self._bg.render(n).astype(np.float64)
        for k, ph in zip((1, 2, 3), self._hum_phases):
            bg += self._bg_hum * (1.0 / k) * np.sin(2 * np.pi * 50.0 * k * t + ph) * 3.0
        out = self._level * (machine + bg * 10 ** (-self.snr_db / 20))
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def _table_limited(self, max_k: int) -> np.ndarray:
        amps = np.array(self.sig.harm_amps[:max_k])
        phases = np.random.default_rng(_stable_seed("phases", self.seed)).uniform(0, 2 * np.pi, len(amps))
        # Only rebuilt once: the guard below keeps the limited table from being rebuilt.
        self.sig = _replace_harmonics(self.sig, tuple(amps))
        return self._wavetable(amps, phases)

    def _impact_wave(self) -> np.ndarray:
        sig = self.sig
        return _resonant_click(self._rng_imp, self.sr, sig.impact_res, sig.impact_decay_s)

    def _schedule_impacts(self, cyc_pos: np.ndarray, idx: np.ndarray, active: list[_Anomaly]) -> None:
        """Place an impact wherever the cycle phase crosses one of the signature's impact points."""
        sig = self.sig
        if not sig.impacts:
            return
        prev = cyc_pos[0] - (cyc_pos[1] - cyc_pos[0] if len(cyc_pos) > 1 else self._cycle_hz / self.sr)
        points = [p if p >= 0 else sig.duty for p in sig.impacts]
        for p in points:
            # crossings of k + p for integer k in (prev, last]
            k_lo = math.floor(prev - p) + 1
            k_hi = math.floor(cyc_pos[-1] - p)
            for k in range(k_lo, k_hi + 1):
                j = int(np.searchsorted(cyc_pos, k + p))
                at = int(idx[min(j, len(idx) - 1)]) + int(self._rng_imp.integers(0, int(0.004 * self.sr)))
                wave = self._impact_wave() * self._rng_imp.uniform(0.85, 1.15)
                if any(a.drops_impact(at) for a in active):
                    continue
                self._impacts.add(at, wave)


def _replace_harmonics(sig: _Signature, amps: tuple[float, ...]) -> _Signature:
    from dataclasses import replace

    return replace(sig, harm_amps=amps)


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

    Returns ``(audio, (start_s, end_s))`` (the span is None when ``anomaly_at_s`` is None). The
    audio outside the span is exactly what ``MachineSoundStream(type, id, seed)`` produces, so
    it sounds like that ID's training clips and has no seams.
    """
    stream = MachineSoundStream(machine_type, machine_id, seed=seed, sr=sr, snr_db=snr_db)
    span = None
    if anomaly_at_s is not None:
        span = stream.schedule_anomaly(anomaly_kind, anomaly_at_s, anomaly_seconds, severity=severity)
    n = int(round(seconds * sr))
    chunks = [stream.read(min(sr * 10, n - i)) for i in range(0, n, sr * 10)]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return audio, span


def _resolve_types(types: int | Sequence[str]) -> list[str]:
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


def _resolve_ids(machine_type: str, ids: int | Sequence[int]) -> list[int]:
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
    subtle_fraction: float = 0.15,
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
    type_list = _resolve_types(types)
    plan: list[tuple[str, int, str, str, int, str | None, float]] = []
    kinds_used: dict[str, int] = {}
    for machine_type in type_list:
        for machine_id in _resolve_ids(machine_type, ids):
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
                severity = rng.uniform(0.35, 0.5) if subtle else rng.uniform(0.9, 1.4)
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
        "ids": {t: _resolve_ids(t, ids) for t in type_list},
        "train_clips": sum(1 for p in plan if p[2] == "train"),
        "test_normal": sum(1 for p in plan if p[2] == "test" and p[3] == "normal"),
        "test_anomaly": sum(1 for p in plan if p[3] == "anomaly"),
        "files": total,
        "anomaly_kinds": kinds_used,
        "seed": seed,
        "snr_db": snr_db,
    }
    logger.info("synthetic dataset: %d files under %s", total, out)
    return summary


__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_IDS",
    "DEFAULT_SNR_DB",
    "MACHINE_TYPES",
    "MachineSoundStream",
    "SynthError",
    "make_dataset",
    "make_stream_recording",
    "render_clip",
]
