"""The anomalies of the site machines, one class per family, each saying which score catches it.

They exist to show why a fused score is needed: a level-type condition indicator (RMS, crest
factor, kurtosis, band levels) and a learned, level-normalised spectro-temporal embedding each
miss some of them. Their strength is that of an early fault, not of a broken machine: a few dB,
a line a little above its surroundings, a modulation at another rate; ``severity`` 1 is the
stated strength, and amplitudes and shifts scale with it.

Measured with plain numpy stand-ins on three sites per family (40 enrolment, 30 normal and 30
anomalous clips each, severities 0.7-1.3; AUC of a robust z-score of one indicator, of a
shrunk-covariance distance over third-octave band levels relative to the total, and of the
same over a level-normalised 128-band log-mel mean and spread, the "embedding"):

- impacts: kurtosis 0.86-0.97, crest factor 0.82-0.88; third-octaves 0.98-1.0; embedding 0.95-1.0;
- tone: level, crest factor, kurtosis 0.44-0.65; third-octaves 0.75-0.92; embedding 0.85-0.97;
- level: RMS level 0.99-1.0; third-octaves 0.47-0.64; embedding 0.47-0.63;
- modulation: envelope-peak rate 0.85-0.91, depth 0.65-0.84; third-octaves 0.52-0.61;
  embedding 0.97-0.98.

An anomaly is active in ``[start, end)`` (absolute samples) with raised-cosine ramps at its
edges; it only answers the renderer's questions for a block (gain of the output, modulation,
added sound, an impact's force and whether it happens), so the stream stays in charge of state
and any block sizes give the same audio. All its random parameters are drawn when it is
created.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar

import numpy as np

from edge_asd.core.synth.dsp import Span
from edge_asd.core.synth.machines import SynthError
from edge_asd.core.synth.site_machines import SiteMachine, check_family, line_amplitude

logger = logging.getLogger(__name__)

_RAMP_S = 0.5  # fade in/out of a site anomaly spliced into a stream (a fault sets in, not a switch)


class SiteAnomaly(Span):
    """Base: the active span, its ramps and the renderer's hooks (all neutral here)."""

    family: ClassVar[str] = ""
    variants: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, variant: str, machine: SiteMachine, start: int, end: int, severity: float, seed: int, sr: int
    ) -> None:
        if variant not in self.variants:
            raise SynthError(
                f"unknown {self.family} anomaly {variant!r}: use one of {', '.join(self.variants)} "
                f"(or {self.family!r} for a random one)"
            )
        self.variant = variant
        self.machine = machine
        self.start, self.end = int(start), int(end)
        self.severity = float(severity)
        self.sr = int(sr)
        self.rng = np.random.default_rng(seed)
        self.ramp = 0 if start <= 0 else int(_RAMP_S * sr)  # a clip anomalous from its first sample
        self._draw()

    def _draw(self) -> None:
        """Draw the anomaly's own parameters from ``self.rng`` (subclasses)."""

    def weight_at(self, at: int) -> float:
        return float(self.window(at, 1)[0])

    def describe(self) -> dict:
        """What was drawn, for a data set's manifest (JSON-ready)."""
        return {"variant": self.variant, "severity": round(self.severity, 4)}

    # -- hooks the renderer calls --------------------------------------------------------------

    def output_gain(self, start: int, n: int) -> np.ndarray | None:
        """Multiplier of the whole sound (machine and room), or None."""
        return None

    def modulation(self, start: int, n: int, depth: float) -> tuple[np.ndarray, np.ndarray] | None:
        """(rate multiplier, depth) of the broadband part's loudness modulation, or None."""
        return None

    def additive(self, start: int, n: int, rotations: np.ndarray) -> np.ndarray | None:
        """Sound added to the machine (units of its continuous RMS), or None. ``rotations``:
        shaft rotations since the stream began, per sample (a tone locked to the speed)."""
        return None

    def impact(self, at: int) -> tuple[float, bool]:
        """(force multiplier, dropped?) of a stroke due at sample ``at``."""
        return 1.0, False


class ImpactsAnomaly(SiteAnomaly):
    """The press's strokes get weaker (-5 to -8 dB), stronger (+4 to +7 dB) or some go missing
    (35-60 % of them): a die that no longer closes, a loose or hardened part, a misfeed.

    Caught by the condition indicators of impulsiveness: peak level, crest factor, kurtosis and
    the spread of short-frame energies (weaker: all down; stronger: all up; missing: fewer loud
    frames and a weaker stroke-rate line in the envelope spectrum, while crest factor and
    kurtosis may even rise, the strokes left being sparser). The overall level moves by 0.5-3 dB.
    The strokes' ringing also weighs in the band levels and in an embedding that keeps each
    band's spread over time, so this is the family every component should catch: the control.
    """

    family = "impacts"
    variants = ("weaker", "stronger", "missing")

    def _draw(self) -> None:
        s, rng = self.severity, self.rng
        self.gain_db = 0.0
        self.drop_prob = 0.0
        if self.variant == "weaker":
            self.gain_db = -float(rng.uniform(5.0, 8.0)) * s
        elif self.variant == "stronger":
            self.gain_db = float(rng.uniform(4.0, 7.0)) * s
        else:
            self.drop_prob = min(0.95, float(rng.uniform(0.35, 0.6)) * s)
        # Drop decisions have their own generator, drawn once per stroke in time order.
        self.drop_rng = np.random.default_rng([int(self.rng.integers(2**32)), 1])

    def describe(self) -> dict:
        return {**super().describe(), "gain_db": round(self.gain_db, 3), "drop_prob": round(self.drop_prob, 4)}

    def impact(self, at: int) -> tuple[float, bool]:
        w = self.weight_at(at)
        if w <= 0.0:
            return 1.0, False
        dropped = self.drop_prob > 0 and bool(self.drop_rng.uniform() < self.drop_prob * w)
        return float(10 ** (w * self.gain_db / 20)), dropped


class ToneAnomaly(SiteAnomaly):
    """A narrow tone appears (bearing whine, a gear-mesh line): a non-integer order of the shaft
    speed between 2 and 5 kHz, 8-11 dB above the broadband sound around it in a 1024-point FFT
    bin, following the machine's speed. The fan already has blade-pass tones that are stronger.

    The overall level moves by under 0.1 dB, crest factor and kurtosis not at all, its
    third-octave band by 0.5-0.9 dB (normal takes spread it by 0.1-0.4 dB), while its mel band
    moves by 4-6 dB; a tonal-peak indicator that keeps only the strongest peaks still sees the
    blade-pass tones. Caught by a learned spectro-temporal embedding and by a comparison of the
    fine spectrum with the enrolled one; band levels alone catch it only in part.
    """

    family = "tone"
    variants = ("tone",)

    def _draw(self) -> None:
        m, rng = self.machine, self.rng
        target = float(np.exp(rng.uniform(np.log(2000.0), np.log(5000.0))))
        # Between two harmonics of the rotation, never on one (a bearing's orders are not integers).
        self.order = math.floor(target / m.f0) + float(rng.uniform(0.3, 0.7))
        self.freq_hz = self.order * m.f0
        self.prominence_db = float(rng.uniform(8.0, 11.0))
        self.amplitude = self.severity * line_amplitude(m, self.freq_hz, self.prominence_db, self.sr)
        self.phase = float(rng.uniform(0.0, 2 * np.pi))

    def describe(self) -> dict:
        return {
            **super().describe(),
            "freq_hz": round(self.freq_hz, 2),
            "prominence_db": round(self.prominence_db + 20 * math.log10(max(self.severity, 1e-6)), 3),
        }

    def additive(self, start: int, n: int, rotations: np.ndarray) -> np.ndarray | None:
        ph = np.mod(self.order * rotations, 1.0) * (2 * np.pi) + self.phase
        return (self.amplitude * self.window(start, n) * np.sin(ph)).astype(np.float32)


class LevelAnomaly(SiteAnomaly):
    """The whole sound gets louder (+3.5 to +5 dB) or quieter (the same, negative), with the
    same spectral shape and the same time structure: a machine working against a higher or
    lower load, a clogged or a freed flow path.

    Caught by the level indicators (RMS level, and every band level alike); a level-normalised
    embedding, the crest factor, kurtosis and the spectral shape see nothing. Normal operation
    already spreads the level by about +-1.5 dB over modes and takes, so it is not trivial.
    """

    family = "level"
    variants = ("louder", "quieter")

    def _draw(self) -> None:
        sign = 1.0 if self.variant == "louder" else -1.0
        self.gain_db = sign * float(self.rng.uniform(3.5, 5.0)) * self.severity

    def describe(self) -> dict:
        return {**super().describe(), "gain_db": round(self.gain_db, 3)}

    def output_gain(self, start: int, n: int) -> np.ndarray | None:
        return (10 ** (self.window(start, n) * (self.gain_db / 20))).astype(np.float32)


class ModulationAnomaly(SiteAnomaly):
    """The belt slap changes: its rate 35-60 % faster or slower (a belt slipping, a pulley
    worn) or its depth 0.25-0.35 deeper (a belt gone slack), with the same average spectrum
    (the modulated part keeps its power).

    Caught by the amplitude-modulation indicator (the envelope spectrum's peak moves for
    ``faster``/``slower``, grows for ``deeper``; a rate-only or a depth-only indicator sees
    two of the three variants) and by a spectro-temporal embedding that keeps how each band's
    loudness varies in time. Level, band levels and spectral shape do not move; crest factor
    and kurtosis only for ``deeper``.
    """

    family = "modulation"
    variants = ("faster", "slower", "deeper")

    def _draw(self) -> None:
        s, rng = self.severity, self.rng
        shift = float(rng.uniform(0.35, 0.6)) * s
        self.rate_factor = {"faster": 1.0 + shift, "slower": 1.0 / (1.0 + shift)}.get(self.variant, 1.0)
        extra = float(rng.uniform(0.25, 0.35)) * s if self.variant == "deeper" else 0.0
        self.depth = min(0.95, self.machine.am_depth + extra)

    def describe(self) -> dict:
        return {**super().describe(), "rate_factor": round(self.rate_factor, 4), "depth": round(self.depth, 4)}

    def modulation(self, start: int, n: int, depth: float) -> tuple[np.ndarray, np.ndarray] | None:
        w = self.window(start, n).astype(np.float64)
        return 1.0 + (self.rate_factor - 1.0) * w, depth + (self.depth - depth) * w


SITE_ANOMALIES: dict[str, type[SiteAnomaly]] = {
    cls.family: cls for cls in (ImpactsAnomaly, ToneAnomaly, LevelAnomaly, ModulationAnomaly)
}
"""The anomaly class of each site family; its docstring says which score should catch it."""

SITE_VARIANTS: dict[str, tuple[str, ...]] = {family: cls.variants for family, cls in SITE_ANOMALIES.items()}
"""The anomaly variants of each site family (``make_site_set`` cycles through them)."""


def family_doc(family: str) -> str:
    """The family's anomaly in words, and which score should catch it (its class docstring)."""
    check_family(family)
    doc = SITE_ANOMALIES[family].__doc__ or ""
    return " ".join(doc.split())


__all__ = [
    "SITE_ANOMALIES",
    "SITE_VARIANTS",
    "ImpactsAnomaly",
    "LevelAnomaly",
    "ModulationAnomaly",
    "SiteAnomaly",
    "ToneAnomaly",
    "family_doc",
]
