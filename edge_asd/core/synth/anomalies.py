"""The DCASE-like anomalies a ``MachineSoundStream`` can splice in (``ANOMALY_KINDS``).

Each breaks its machine ID's signature in one way (a bearing tone, an imbalance wobble, a
rattle, missing or extra impacts, a speed drift, a squeal), so that a model that learnt the
IDs apart notices it. An anomaly only answers the renderer's questions (speed factor, gain,
gate floor, dropped impacts, added sound) for a block; the renderer stays in charge of state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from edge_asd.core.synth.dsp import EventTrack, Span, resonant_click, sine, sine_phase
from edge_asd.core.synth.machines import Signature, SynthError

logger = logging.getLogger(__name__)

_RAMP_S = 0.08  # fade in/out of anomalies spliced into a stream

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

# How much a fault of each kind slows the machine down at severity 1 (relative speed).
_LOAD = {"bearing": 0.05, "imbalance": 0.03, "rattle": 0.03, "impact_missing": 0.04, "impact_extra": 0.03, "squeal": 0.04}


class Anomaly(Span):
    """One anomaly of a kind, active in [start, end) (absolute samples), of a given severity.

    Severity 1 is clearly audible in the log-mel; about 0.3-0.5 is subtle. All its random
    parameters are drawn when it is created, so it sounds the same however the stream is read.
    """

    def __init__(
        self, kind: str, sig: Signature, start: int, end: int, severity: float, seed: int, sr: int
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
        self.track = EventTrack()
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
            return 1.0 + depth * sine(self.imb_rate, start, n, self.sr, self.phase[0]) * self.window(start, n)
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
            am = 1.0 + 0.8 * sine(self.bearing_mod, start, n, sr, self.phase[1])
            tone = sine(self.bearing_f, start, n, sr, self.phase[2])
            tone += 0.5 * sine(self.bearing_f * 2.03, start, n, sr, self.phase[3])
            return (0.45 * s) * self.window(start, n) * am * tone
        if self.kind == "imbalance":
            if self.sig.f0 > 0:  # half order of the rotation, locked to the machine's own phase
                hum = np.sin((np.pi * cycles + self.phase[1]).astype(np.float32))
            else:  # a machine without a motor hum: the unbalanced part hums on its own
                hum = sine(self.imb_hum, start, n, sr, self.phase[1])
                hum += 0.5 * sine(2 * self.imb_hum, start, n, sr, self.phase[2])
            return (0.7 * s) * self.window(start, n) * hum
        if self.kind == "squeal":
            # frequency wanders +-3 % at 0.7 Hz: the phase is the integral of that frequency
            fm = (-0.03 * self.squeal_f / 0.7) * np.cos(sine_phase(0.7, start, n, sr, self.phase[1]))
            ph = sine_phase(self.squeal_f, start, n, sr) + fm
            bursts = 0.3 + 0.7 * (0.5 + 0.5 * sine(self.squeal_rate, start, n, sr, self.phase[2]))
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
                maker = lambda: gain * resonant_click(  # noqa: E731
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
        return resonant_click(self.rng, self.sr, res, float(self.rng.uniform(decay_lo, decay_hi)), noise)

    def _dropout(self) -> np.ndarray:
        n = int(self.sr * self.rng.uniform(0.15, 0.4))
        depth = 0.5 + 0.45 * self.severity
        return (depth * np.sin(np.pi * np.arange(n) / n) ** 0.5).astype(np.float32)
