"""Site machines: one machine as one site hears it, in a few operating modes.

A plant enrols a detector on minutes of one machine through its own microphone. These
machines stand in for that: each ``SITE_FAMILIES`` entry is a kind of machine (a press, a fan,
a compressor, a belt drive) whose anomalies (``site_anomalies``) move the classic condition
indicators and a learned embedding differently. A site is drawn from ``(family, seed)``
alone: the same seed is the same machine in the same room in every process. Normal operation
has modes (speed and load, hence level and stroke rate), because a real machine's normal is
multimodal and an enrolment has to cover it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from edge_asd.core.synth.dsp import background_fir, shaped_fir
from edge_asd.core.synth.machines import SynthError, stable_seed

logger = logging.getLogger(__name__)

SITE_FAMILIES: tuple[str, ...] = ("impacts", "tone", "level", "modulation")
"""Kinds of site machine, each named after the anomaly it is built to test (see ``site_anomalies``):

- ``impacts``: a press whose strokes get weaker, stronger or go missing;
- ``tone``: a fan whose bearing starts to whine (a narrow tone that barely moves the level);
- ``level``: a compressor that gets louder or quieter with the same spectral shape;
- ``modulation``: a belt drive whose belt slap changes rate or depth, same average spectrum.
"""

N_MODES = 3
"""Operating modes of every site machine (nominal, slower and faster, each at its own load)."""

TONE_FFT = 1024
"""FFT size in which a ``tone`` anomaly's prominence is stated (15.6 Hz bins at 16 kHz)."""


@dataclass(frozen=True)
class _FamilySpec:
    """Ranges from which a family's sites draw their machine (every site varies inside them)."""

    machine: str  # what it stands for, in words
    f0: tuple[float, float]  # shaft rotation / mains-locked hum fundamental (Hz)
    n_harm: int
    hum_db: tuple[float, float]  # hum power relative to the broadband part
    noise_fc: tuple[float, float]  # centre of the broadband (flow, friction) noise (Hz)
    noise_oct: tuple[float, float]  # its width in octaves
    am_rate: tuple[float, float]  # loudness modulation of the broadband part at nominal speed (Hz)
    am_depth: tuple[float, float]
    impact_rate: tuple[float, float] | None  # strokes per second at nominal speed, None: none
    impact_db: tuple[float, float]  # an impact's peak over the continuous part's RMS
    impact_res: tuple[float, float]  # range of the first resonance of an impact (Hz)
    impact_decay_ms: tuple[float, float]
    level_dbfs: tuple[float, float]  # RMS of the continuous part at nominal speed
    snr_db: tuple[float, float]  # machine to room background
    blades: tuple[int, int] | None = None  # fan blades: blade-pass tones at k x blades x f0, None: none
    line_db: tuple[float, float] = (14.0, 22.0)  # their prominence over the broadband sound


_FAMILIES: dict[str, _FamilySpec] = {
    "impacts": _FamilySpec(
        machine="a mechanical press (one stamping stroke per cycle) driven by a motor",
        f0=(50.0, 100.0), n_harm=10, hum_db=(-8.0, -4.0), noise_fc=(400.0, 1200.0), noise_oct=(2.0, 3.0),
        am_rate=(0.3, 1.0), am_depth=(0.05, 0.1), impact_rate=(0.8, 2.0), impact_db=(20.0, 24.0),
        impact_res=(500.0, 2500.0), impact_decay_ms=(15.0, 35.0), level_dbfs=(-42.0, -38.0), snr_db=(10.0, 16.0),
    ),
    "tone": _FamilySpec(
        machine="a fan on rolling bearings: rotation hum, blade-pass tones and broadband air noise",
        f0=(90.0, 200.0), n_harm=8, hum_db=(-6.0, -2.0), noise_fc=(600.0, 1800.0), noise_oct=(2.5, 3.5),
        am_rate=(0.4, 1.2), am_depth=(0.04, 0.1), impact_rate=None, impact_db=(0.0, 0.0),
        impact_res=(500.0, 1000.0), impact_decay_ms=(10.0, 20.0), level_dbfs=(-30.0, -26.0), snr_db=(8.0, 14.0),
        blades=(5, 9),
    ),
    "level": _FamilySpec(
        machine="a compressor: a strong low hum with many harmonics and flow noise",
        f0=(45.0, 110.0), n_harm=14, hum_db=(-4.0, 0.0), noise_fc=(300.0, 1100.0), noise_oct=(2.0, 3.0),
        am_rate=(2.0, 5.0), am_depth=(0.1, 0.2), impact_rate=None, impact_db=(0.0, 0.0),
        impact_res=(500.0, 1000.0), impact_decay_ms=(10.0, 20.0), level_dbfs=(-30.0, -26.0), snr_db=(10.0, 16.0),
    ),
    "modulation": _FamilySpec(
        machine="a belt-driven fan: broadband noise modulated by the belt's slap",
        f0=(60.0, 150.0), n_harm=6, hum_db=(-12.0, -8.0), noise_fc=(600.0, 2000.0), noise_oct=(2.0, 3.0),
        am_rate=(3.0, 7.0), am_depth=(0.45, 0.6), impact_rate=None, impact_db=(0.0, 0.0),
        impact_res=(500.0, 1000.0), impact_decay_ms=(10.0, 20.0), level_dbfs=(-30.0, -26.0), snr_db=(12.0, 18.0),
    ),
}


@dataclass(frozen=True)
class OperatingMode:
    """One way the machine runs: its speed (relative), and the level and stroke force it brings."""

    speed: float  # multiplies the hum's pitch, the modulation rate and the stroke rate
    level_db: float  # added to the site level
    impact_db: float  # added to the strokes' force


@dataclass(frozen=True)
class SiteMachine:
    """One site: the machine of a family as this site's microphone hears it, the same in every clip."""

    family: str
    seed: int
    description: str
    f0: float
    harm_amps: tuple[float, ...]
    hum_gain: float  # amplitude of the unit-RMS hum relative to the unit-RMS broadband part
    noise_fc: float
    noise_oct: float
    peaks: tuple[tuple[float, float], ...]  # structural resonances of the casing (Hz, gain)
    am_rate: float
    am_depth: float
    impact_rate: float  # 0: no strokes
    impact_gain: float
    impact_res: tuple[float, float]
    impact_decay_s: float
    level_dbfs: float
    snr_db: float
    modes: tuple[OperatingMode, ...]
    lines: tuple[tuple[float, float], ...] = ()  # steady tones: (order of the shaft speed, prominence dB)


def check_family(family: str) -> _FamilySpec:
    """The family's spec, or a ``SynthError`` that lists the families."""
    try:
        return _FAMILIES[family]
    except KeyError:
        raise SynthError(f"unknown site family {family!r}: use one of {', '.join(SITE_FAMILIES)}") from None


@lru_cache(maxsize=64)
def site_machine(family: str, seed: int) -> SiteMachine:
    """Draw the site's machine from a generator seeded by ``(family, seed)`` only.

    Modes: mode 0 runs at nominal speed, mode 1 5-10 % slower, mode 2 5-10 % faster; the
    level follows the speed (about 1 dB per 10 %, like a fan's or a pump's sound power) and
    the stroke force varies by up to 1 dB between modes. So the normal level spreads over
    about +-1.5 dB across modes and takes, which any level-type anomaly has to beat.
    """
    spec = check_family(family)
    rng = np.random.default_rng(stable_seed("site", family, seed))

    def log_uniform(bounds: tuple[float, float]) -> float:
        lo, hi = bounds
        return float(lo * (hi / lo) ** rng.uniform())

    f0 = log_uniform(spec.f0)
    harm = tuple(float(10 ** ((-2.5 * k + rng.uniform(-6.0, 4.0)) / 20)) for k in range(spec.n_harm))
    noise_fc = log_uniform(spec.noise_fc)
    noise_oct = float(rng.uniform(*spec.noise_oct))
    peaks = tuple(sorted((log_uniform((800.0, 6000.0)), float(rng.uniform(0.2, 0.4))) for _ in range(2)))
    am_rate = float(rng.uniform(*spec.am_rate))
    am_depth = float(rng.uniform(*spec.am_depth))
    impact_rate = float(rng.uniform(*spec.impact_rate)) if spec.impact_rate else 0.0
    impact_gain = float(10 ** (rng.uniform(*spec.impact_db) / 20))
    res1 = log_uniform(spec.impact_res)
    impact_res = (res1, float(res1 * rng.uniform(1.6, 2.6)))
    impact_decay_s = float(rng.uniform(*spec.impact_decay_ms)) / 1000.0
    hum_gain = float(10 ** (rng.uniform(*spec.hum_db) / 20))
    level_dbfs = float(rng.uniform(*spec.level_dbfs))
    snr_db = float(rng.uniform(*spec.snr_db))
    speeds = (1.0, float(rng.uniform(0.9, 0.95)), float(rng.uniform(1.05, 1.1)))
    modes = tuple(
        OperatingMode(
            speed=s,
            level_db=float(20 * math.log10(s) * rng.uniform(1.0, 1.5) + rng.uniform(-0.3, 0.3)),
            impact_db=float(rng.uniform(-1.0, 1.0)),
        )
        for s in speeds
    )
    lines: tuple[tuple[float, float], ...] = ()
    if spec.blades:
        # Blade-pass harmonics up to 6 kHz, each weaker than the one below: the tones a fan has
        # anyway, so that a new tone is not the only tonal line above the hum.
        blades = int(rng.integers(spec.blades[0], spec.blades[1] + 1))
        top = float(rng.uniform(*spec.line_db))
        lines = tuple(
            (float(k * blades), top - 3.0 * (k - 1) + float(rng.uniform(-2.0, 2.0)))
            for k in range(1, 9)
            if k * blades * f0 * 1.1 < 6000.0
        )
    return SiteMachine(
        family=family, seed=int(seed), description=spec.machine, f0=f0, harm_amps=harm, hum_gain=hum_gain,
        noise_fc=noise_fc, noise_oct=noise_oct, peaks=peaks, am_rate=am_rate, am_depth=am_depth,
        impact_rate=impact_rate, impact_gain=impact_gain, impact_res=impact_res, impact_decay_s=impact_decay_s,
        level_dbfs=level_dbfs, snr_db=snr_db, modes=modes, lines=lines,
    )


def broadband_density(machine: SiteMachine, freq_hz: float, sr: int) -> float:
    """Power per Hz of the site's normal broadband sound at ``freq_hz``, in units of the machine's
    continuous power (the hum excluded: a new tone is placed between its harmonics).

    Unit-energy FIRs turn unit-variance white noise into a one-sided density of
    ``2 |H(f)|^2 / sr``; the broadband part carries ``1 / (1 + hum_gain^2)`` of the machine's
    power and the room background sits ``snr_db`` below it. A ``tone`` anomaly states its
    level against this, so "10 dB above its surroundings" means the same on every site.
    """
    n_fft = 8192
    k = int(round(freq_hz * n_fft / sr))
    h_machine = shaped_fir(sr, machine.noise_fc, machine.noise_oct, 0.02, machine.peaks)
    h_room = background_fir(sr)
    machine_part = 2.0 * abs(np.fft.rfft(h_machine, n_fft)[k]) ** 2 / sr / (1.0 + machine.hum_gain**2)
    room_part = 2.0 * abs(np.fft.rfft(h_room, n_fft)[k]) ** 2 / sr * 10 ** (-machine.snr_db / 10)
    return float(machine_part + room_part)


def line_amplitude(machine: SiteMachine, freq_hz: float, prominence_db: float, sr: int) -> float:
    """Amplitude of a sine ``prominence_db`` above the broadband sound around ``freq_hz`` in one
    ``TONE_FFT``-point bin (units of the machine's continuous RMS)."""
    power = 10 ** (prominence_db / 10) * broadband_density(machine, freq_hz, sr) * sr / TONE_FFT
    return math.sqrt(2.0 * power)


__all__ = [
    "N_MODES",
    "SITE_FAMILIES",
    "TONE_FFT",
    "OperatingMode",
    "SiteMachine",
    "broadband_density",
    "check_family",
    "line_amplitude",
    "site_machine",
]
