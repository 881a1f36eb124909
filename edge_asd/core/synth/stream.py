"""The renderer of the DCASE-like machines: ``MachineSoundStream``, ``render_clip``, recordings.

One stateful renderer works block by block on absolute sample indices: oscillators keep their
phase, noise is filtered by an FIR with its state carried over, impacts are events that may
span blocks. A 10 s clip is simply the first 10 s of a stream, and ``make_stream_recording``
produces long seamless audio (no boundary clicks that a detector could mistake for anomalies).
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np

from edge_asd.core.constants import SAMPLE_RATE
from edge_asd.core.synth.anomalies import Anomaly
from edge_asd.core.synth.dsp import (
    EventTrack,
    FirNoise,
    background_fir,
    harmonic_wavetable,
    read_wavetable,
    resonant_click,
    shaped_fir,
    sine,
)
from edge_asd.core.synth.machines import DEFAULT_SNR_DB, machine_signature, stable_seed

logger = logging.getLogger(__name__)


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
        self.sig = sig = machine_signature(machine_type, int(machine_id))
        self._pos = 0
        self._anomalies: list[Anomaly] = []
        root = np.random.SeedSequence([self.seed & 0xFFFFFFFF, stable_seed(machine_type, machine_id)])
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
        self._table = harmonic_wavetable(amps[:max_k], phases[:max_k])
        self._cycles = float(rng_clip.uniform(0.0, 1.0))  # oscillator phase, in cycles (kept mod 2)
        self._cycle_phase = float(rng_clip.uniform(0.0, 1.0))  # working-cycle phase, in cycles
        self._noise = FirNoise(shaped_fir(self.sr, sig.noise_fc, sig.noise_oct, 0.02, sig.peaks), rng_noise)
        self._bg = FirNoise(background_fir(self.sr), rng_bg)
        self._rng_imp = rng_imp
        self._impacts = EventTrack()
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
        anomaly = Anomaly(kind, self.sig, start, end, severity, seed, self.sr)
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

    def _render(self, start: int, n: int) -> np.ndarray:
        sig, sr = self.sig, self.sr
        active = [a for a in self._anomalies if a.overlaps(start, n)]

        speed = np.ones(n, dtype=np.float64)
        if sig.wobble:
            wob = sum(
                sine(float(r), start, n, sr, float(p))
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
            machine += sig.tone_gain * read_wavetable(self._table, cyc)

        am = 1.0 + sig.am_depth * sine(self._am_rate, start, n, sr, self._am_phase)
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
            bg += (3.0 * self._bg_hum / k) * sine(50.0 * k, start, n, sr, float(ph))
        out = self._level * (machine + bg * np.float32(10 ** (-self.snr_db / 20)))
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def _impact_wave(self, scale: float = 1.0) -> np.ndarray:
        sig = self.sig
        res = (sig.impact_res[0] * scale, sig.impact_res[1] * scale)
        return resonant_click(self._rng_imp, self.sr, res, sig.impact_decay_s)

    def _schedule_impacts(self, prev: float, cyc_pos: np.ndarray, start: int, active: list[Anomaly]) -> None:
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
