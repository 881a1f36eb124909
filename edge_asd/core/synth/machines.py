"""The DCASE-like machine catalogue: what each machine type and each machine ID sounds like.

A machine ID's signature (fundamental, harmonic profile, noise colour, cycle period, impact
and structural resonances) is drawn from generators seeded by ``(type)`` and ``(type, id)``
alone, so it is the same in every clip, every seed and every process. The renderer
(``stream``) turns a signature into sound; nothing here makes audio.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

MACHINE_TYPES: tuple[str, ...] = ("fan", "ToyCar", "slider", "valve", "pump", "ToyConveyor")
"""The six DCASE 2020 Task 2 machine types, each with its own synthetic sound.

``make_dataset(types=N)`` takes the first N: fan and ToyCar come first because with only two
IDs per type a classifier's cross-entropy score separates their anomalies best (measured:
fan + ToyCar reach a CE AUC of about 0.92 after three CPU epochs, fan + pump about 0.83; the
kNN score is near 1.0 for both)."""

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

SYNTH_VERSION = 8
"""Bumped whenever the generated sound changes: caches of generated data sets key on it.
(8: the site machines and ``make_site_set``; the DCASE-like machines sound as in 7.)"""

DEFAULT_SNR_DB = 6.0
"""Machine-to-background ratio (MIMII was mixed at +6, 0 and -6 dB; +6 keeps it learnable)."""

_N_SLOTS = 8  # distinct signature slots per type (>= the most IDs of any type)
_PEAK_LO, _PEAK_HI = 900.0, 7200.0  # where the IDs' narrow resonances lie
_PEAKS_PER_ID = 3


class SynthError(UserError):
    """A bad request to the generator (unknown machine type or anomaly, too many IDs)."""


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
class Signature:
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


def stable_seed(*parts: object) -> int:
    """A seed from strings and ints that is the same in every process (unlike ``hash``)."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def clip_seed(seed: int, *parts: object) -> int:
    """The seed of one clip of a data set: the set's ``seed`` mixed with the clip's place in it,
    so every clip is independent of the others and of the order they are written in."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, stable_seed(*parts)]).generate_state(1)[0])


def check_type(machine_type: str) -> _TypeSpec:
    """The type's spec, or a ``SynthError`` that lists the known types."""
    try:
        return _SPECS[machine_type]
    except KeyError:
        raise SynthError(
            f"unknown machine type {machine_type!r}: use one of {', '.join(MACHINE_TYPES)}"
        ) from None


@lru_cache(maxsize=256)
def machine_signature(machine_type: str, machine_id: int) -> Signature:
    """Draw the ID's signature from generators seeded by (type) and (type, id) only.

    IDs of one type are the same kind of machine: they share the type's sound (fundamental
    region, noise colour, loudness, cycle) and differ in details, like the machine IDs of
    DCASE. The details are spread over the whole spectrum (a fundamental a few per cent apart,
    the harmonic profile, three narrow resonances between 0.9 and 7.2 kHz, the impact
    resonances), so a classifier of IDs has to look everywhere and an anomaly anywhere disturbs
    it. Fundamental, cycle and noise centre come from permutations of ``_N_SLOTS`` evenly
    spaced slots, so two IDs always differ by at least one slot, not by chance.
    """
    spec = check_type(machine_type)
    type_rng = np.random.default_rng(stable_seed("type", machine_type))
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
    rng = np.random.default_rng(stable_seed("id", machine_type, machine_id))

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
    return Signature(
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
