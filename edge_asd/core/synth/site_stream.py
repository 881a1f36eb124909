"""The renderer of the site machines: ``SiteMachineStream``, ``render_site_clip``, ``make_site_recording``.

Like ``MachineSoundStream`` it works block by block on absolute sample indices, so any block
sizes give the same audio, a clip is the start of a stream, and a long recording has no
seams. Everything that moves with the machine's speed (the hum's pitch, the belt's modulation,
the stroke rate, a bearing tone) is driven by one count of shaft rotations, integrated from a
speed that follows the operating mode; a continuous stream changes mode every half minute or
so with a 3 s ramp, as a machine on a production line does.

Signal: ``level(mode) * (hum + modulated broadband noise + strokes [+ anomaly]) + room``,
where the room is pinkish background noise with a little mains hum, ``snr_db`` below the
machine, not following the machine's mode. The machine's continuous part has unit RMS before
its level, so ``SiteMachine.level_dbfs`` is its RMS in dBFS.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from edge_asd.core.constants import SAMPLE_RATE
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
from edge_asd.core.synth.machines import SynthError, stable_seed
from edge_asd.core.synth.site_anomalies import SITE_ANOMALIES, SITE_VARIANTS, SiteAnomaly
from edge_asd.core.synth.site_machines import OperatingMode, check_family, line_amplitude, site_machine

logger = logging.getLogger(__name__)

_MODE_RAMP_S = 3.0  # how long a change of operating mode takes


class _ModeSchedule:
    """Which operating mode the machine is in at each sample: one fixed mode, or a new one
    every ``mode_seconds`` (x 0.6-1.4) with a raised-cosine ramp from the previous one.

    Segments are drawn lazily in time order from their own generator, so the schedule does not
    depend on how the stream is read.
    """

    def __init__(
        self, modes: tuple[OperatingMode, ...], fixed: int | None, rng: np.random.Generator, sr: int, mode_seconds: float
    ) -> None:
        self._values = np.array([[m.speed, m.level_db, m.impact_db] for m in modes], dtype=np.float64)
        self._fixed = fixed
        self._rng = rng
        self._seg_len = max(1.0, float(mode_seconds)) * sr
        self._ramp = _MODE_RAMP_S * sr
        first = int(rng.integers(len(modes))) if fixed is None else fixed
        self._starts = [0]
        self._modes = [first]

    def _extend(self, upto: int) -> None:
        n_modes = len(self._values)
        while self._starts[-1] <= upto:
            length = int(self._seg_len * self._rng.uniform(0.6, 1.4))
            self._starts.append(self._starts[-1] + length)
            self._modes.append((self._modes[-1] + int(self._rng.integers(1, n_modes))) % n_modes)

    @property
    def fixed(self) -> int | None:
        return self._fixed

    def weights(self, start: int, n: int) -> np.ndarray:
        """(n_modes, n) float64: how much each mode is "on" at samples start..start+n-1 (one
        column sums to 1; two modes share a column only during a ramp)."""
        n_modes = len(self._values)
        w = np.zeros((n_modes, n), dtype=np.float64)
        if self._fixed is not None:
            w[self._fixed] = 1.0
            return w
        self._extend(start + n)
        idx = start + np.arange(n, dtype=np.int64)
        starts = np.asarray(self._starts, dtype=np.int64)
        modes = np.asarray(self._modes, dtype=np.int64)
        seg = np.searchsorted(starts, idx, side="right") - 1
        frac = np.clip((idx - starts[seg]) / self._ramp, 0.0, 1.0)
        shape = np.where(seg == 0, 1.0, 0.5 - 0.5 * np.cos(np.pi * frac))
        cols = np.arange(n)
        np.add.at(w, (modes[np.maximum(seg - 1, 0)], cols), 1.0 - shape)
        np.add.at(w, (modes[seg], cols), shape)
        return w

    def values(self, weights: np.ndarray) -> np.ndarray:
        """(3, n) float64 for ``weights(...)``: speed, level (dB) and stroke force (dB)."""
        return self._values.T @ weights

    def mode_at(self, sample: int) -> int:
        """The mode the machine is in (or ramping to) at ``sample``."""
        if self._fixed is not None:
            return self._fixed
        self._extend(sample)
        return self._modes[int(np.searchsorted(np.asarray(self._starts), sample, side="right")) - 1]


class SiteMachineStream:
    """Endless, seamless sound of one site machine (``family``, ``seed``) in its room.

    ``take`` is one recording of it (noise, phases, a little level and speed jitter); ``mode``
    fixes the operating mode (0..N_MODES-1), None lets it change every ``mode_seconds``.
    ``read(n)`` returns the next ``n`` samples; ``schedule_anomaly`` splices the family's
    anomaly in, with the same call as ``MachineSoundStream.schedule_anomaly`` (``kind`` is
    the family name for a random variant, or one of ``SITE_VARIANTS[family]``).
    """

    def __init__(
        self,
        family: str,
        seed: int = 0,
        take: int = 0,
        *,
        mode: int | None = None,
        sr: int = SAMPLE_RATE,
        mode_seconds: float = 30.0,
    ) -> None:
        check_family(family)
        self.family = family
        self.seed = int(seed)
        self.take = int(take)
        self.sr = int(sr)
        self.machine = m = site_machine(family, self.seed)
        if mode is not None and not 0 <= int(mode) < len(m.modes):
            raise SynthError(f"operating mode {mode} does not exist: use 0..{len(m.modes) - 1} or None")
        self._pos = 0
        self._anomalies: list[SiteAnomaly] = []
        self._described: list[dict] = []
        root = np.random.SeedSequence([self.take & 0xFFFFFFFF, stable_seed("site-take", family, self.seed)])
        seq_take, seq_noise, seq_room, seq_strokes, seq_modes = root.spawn(5)
        rng_take = np.random.default_rng(seq_take)
        self._anomaly_seeds = root.spawn(1)[0]
        # One take: small enough that it is the same machine in the same mode.
        self._f0 = m.f0 * float(rng_take.uniform(0.995, 1.005))
        self._take_db = float(rng_take.uniform(-0.5, 0.5))
        self._room_db = float(rng_take.uniform(-2.0, 2.0))
        amps = np.array(m.harm_amps) * 10 ** (rng_take.uniform(-1.0, 1.0, len(m.harm_amps)) / 20)
        self._table = harmonic_wavetable(amps, rng_take.uniform(0, 2 * np.pi, len(amps)))
        self._rotations = float(rng_take.uniform(0.0, 1.0))  # shaft rotations so far (unwrapped)
        self._am_cycles = float(rng_take.uniform(0.0, 1.0))
        self._mains = 10 ** (float(rng_take.uniform(-32.0, -24.0)) / 20)
        self._mains_phases = rng_take.uniform(0, 2 * np.pi, 3)
        self._room = FirNoise(background_fir(self.sr), np.random.default_rng(seq_room))
        # Flow noise gets brighter with speed: one noise colour per mode (a machine in a given
        # mode sounds a little different, take to take too), cross-faded when the mode changes.
        colour = m.noise_fc * float(rng_take.uniform(0.98, 1.02))
        self._noises = {
            k: FirNoise(shaped_fir(self.sr, colour * mode_k.speed, m.noise_oct, 0.02, m.peaks), np.random.default_rng(s))
            for k, (mode_k, s) in enumerate(zip(m.modes, seq_noise.spawn(len(m.modes)), strict=True))
            if mode is None or k == int(mode)
        }
        self._lines = self._line_table(rng_take) if m.lines else None
        self._rng_strokes = np.random.default_rng(seq_strokes)
        self._strokes = EventTrack()
        self._modes = _ModeSchedule(
            m.modes, None if mode is None else int(mode), np.random.default_rng(seq_modes), self.sr, mode_seconds
        )

    @property
    def position(self) -> int:
        """Samples produced so far."""
        return self._pos

    def mode_at(self, seconds: float) -> int:
        """The operating mode at ``seconds`` into the stream (what a test may want to know)."""
        return self._modes.mode_at(int(round(seconds * self.sr)))

    def schedule_anomaly(
        self, kind: str, start_s: float, duration_s: float | None = None, severity: float = 1.0
    ) -> tuple[float, float]:
        """Add the family's anomaly from ``start_s`` for ``duration_s`` seconds (None: for ever).

        ``kind``: the family name (a variant drawn at random) or one of its variants. Returns
        the (start_s, end_s) it got (end_s inf when open-ended); a start in the stream's past
        is moved to its current position. ``anomalies`` lists what was drawn.
        """
        seed = int(self._anomaly_seeds.spawn(1)[0].generate_state(1)[0])
        variants = SITE_VARIANTS[self.family]
        if kind == self.family:
            kind = variants[int(np.random.default_rng([seed, 2]).integers(len(variants)))]
        start = max(int(round(start_s * self.sr)), self._pos)
        end = 2**62 if duration_s is None else start + int(round(duration_s * self.sr))
        cls = SITE_ANOMALIES[self.family]
        self._anomalies.append(cls(kind, self.machine, start, end, severity, seed, self.sr))
        self._described.append(self._anomalies[-1].describe())
        return start / self.sr, (math.inf if duration_s is None else end / self.sr)

    @property
    def anomalies(self) -> list[dict]:
        """What each scheduled anomaly drew (variant, severity, its own parameters), in order."""
        return list(self._described)

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

    def _line_table(self, rng: np.random.Generator) -> np.ndarray:
        """The machine's steady tones (whole orders of the shaft speed) as one wavetable at their
        own amplitudes: reading a table is far cheaper than a sine per tone."""
        m = self.machine
        n_orders = int(max(order for order, _ in m.lines))
        amps, phases = np.zeros(n_orders), np.zeros(n_orders)
        for order, db in m.lines:
            amps[int(order) - 1] = line_amplitude(m, order * m.f0, db, self.sr)
            phases[int(order) - 1] = rng.uniform(0, 2 * np.pi)
        return harmonic_wavetable(amps, phases) * np.float32(math.sqrt(np.sum(amps**2) / 2))

    def _render(self, start: int, n: int) -> np.ndarray:
        m, sr = self.machine, self.sr
        active = [a for a in self._anomalies if a.overlaps(start, n)]
        weights = self._modes.weights(start, n)
        speed, level_db, stroke_db = self._modes.values(weights)

        prev_rotations = self._rotations
        rotations = prev_rotations + np.cumsum(speed * (self._f0 / sr))
        self._rotations = float(rotations[-1])
        hum = read_wavetable(self._table, rotations)

        # Broadband part, its loudness modulated at a rate that follows the speed; normalised
        # by the modulation's mean power so that rate and depth never change the spectrum.
        rate = speed * (m.am_rate / sr)
        depth: np.ndarray | float = m.am_depth
        for a in active:
            mod = a.modulation(start, n, m.am_depth)
            if mod is not None:
                rate = rate * mod[0]
                depth = mod[1]
        am_cycles = self._am_cycles + np.cumsum(rate)
        self._am_cycles = float(am_cycles[-1] % 1.0)
        am = (1.0 + depth * np.sin(2 * np.pi * am_cycles)) / np.sqrt(1.0 + 0.5 * np.square(depth))
        if self._modes.fixed is not None:
            broadband = self._noises[self._modes.fixed].render(n)
        else:  # equal-power cross-fade of the modes' noises (independent, so powers add)
            broadband = sum(
                (np.sqrt(weights[k]) * noise.render(n)).astype(np.float32) for k, noise in self._noises.items()
            )
        broadband = broadband * am.astype(np.float32)
        machine = (m.hum_gain * hum + broadband) / np.float32(math.sqrt(1.0 + m.hum_gain**2))
        if self._lines is not None:
            machine += read_wavetable(self._lines, rotations)

        if m.impact_rate > 0:
            ratio = m.impact_rate / m.f0  # strokes per shaft rotation
            self._schedule_strokes(prev_rotations * ratio, rotations * ratio, stroke_db, start, active)
            strokes = np.zeros(n, dtype=np.float32)
            self._strokes.render_into(strokes, start)
            machine += strokes

        for a in active:
            extra = a.additive(start, n, rotations)
            if extra is not None:
                machine += extra

        level = 10 ** ((m.level_dbfs + self._take_db + level_db) / 20)
        room = self._room.render(n)
        for k, ph in enumerate(self._mains_phases, start=1):
            room += (self._mains / k) * sine(50.0 * k, start, n, sr, float(ph))
        room_gain = 10 ** ((m.level_dbfs - m.snr_db + self._room_db) / 20)
        out = level.astype(np.float32) * machine + np.float32(room_gain) * room
        for a in active:
            gain = a.output_gain(start, n)
            if gain is not None:
                out *= gain
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def _schedule_strokes(
        self, prev: float, cycles: np.ndarray, stroke_db: np.ndarray, start: int, active: list[SiteAnomaly]
    ) -> None:
        """A stroke wherever the stroke cycle passes a whole number; its random draws happen
        in time order, whether or not an anomaly then drops it."""
        m, rng = self.machine, self._rng_strokes
        for k in range(math.floor(prev) + 1, math.floor(cycles[-1]) + 1):
            j = min(int(np.searchsorted(cycles, k)), len(cycles) - 1)
            at = start + j + int(rng.integers(0, int(0.005 * self.sr)))
            wave = resonant_click(rng, self.sr, m.impact_res, m.impact_decay_s)
            force = float(rng.uniform(0.89, 1.12)) * m.impact_gain * 10 ** (stroke_db[j] / 20)
            dropped = False
            for a in active:
                gain, drop = a.impact(at)
                force *= gain
                dropped = dropped or drop
            if not dropped:
                self._strokes.add(at, force * wave)


def render_site_clip(
    family: str,
    seed: int = 0,
    take: int = 0,
    *,
    anomaly: str | None = None,
    severity: float = 1.0,
    mode: int | None = None,
    seconds: float = 10.0,
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """One clip of the site machine, float32 in [-1, 1], the same for the same arguments.

    ``anomaly`` (the family name or one of its variants) lasts the whole clip. ``mode`` None:
    the mode the take starts in (drawn from ``take``).
    """
    stream = SiteMachineStream(family, seed, take, mode=mode, sr=sr)
    if anomaly is not None:
        stream.schedule_anomaly(anomaly, 0.0, None, severity=severity)
    return stream.read(int(round(seconds * sr)))


def make_site_recording(
    family: str,
    seconds: float,
    anomaly_at_s: float | None,
    anomaly_seconds: float | None = None,
    anomaly_kind: str | None = None,
    *,
    seed: int = 0,
    take: int = 0,
    severity: float = 1.0,
    mode_seconds: float = 30.0,
    sr: int = SAMPLE_RATE,
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Continuous audio of the site machine (changing mode now and then) with one anomaly.

    The anomaly sets in at ``anomaly_at_s`` (over 0.5 s) and lasts ``anomaly_seconds`` (None:
    to the end); ``anomaly_kind`` None is a random variant of the family. Returns
    ``(audio, (start_s, end_s))`` (None without an anomaly). Up to the span the audio is
    exactly the anomaly-free recording of the same arguments; ``seed`` is the site, the same
    machine as ``make_site_set(..., seed=seed)``.
    """
    stream = SiteMachineStream(family, seed, take, sr=sr, mode_seconds=mode_seconds)
    span = None
    if anomaly_at_s is not None:
        span = stream.schedule_anomaly(anomaly_kind or family, anomaly_at_s, anomaly_seconds, severity=severity)
    n = int(round(seconds * sr))
    chunks = [stream.read(min(sr * 10, n - i)) for i in range(0, n, sr * 10)]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return audio, span


__all__ = ["SiteMachineStream", "make_site_recording", "render_site_clip"]
