"""Signal levels of each window and the microphone faults they reveal.

A dead, silent or clipping microphone must raise a *stream fault*, not an anomaly: the model
has never heard digital zeros or a saturated ADC, so it would score them as wildly anomalous
and page someone about a loose cable as if a bearing were failing. NaN/inf samples (a broken
driver or a float file) must never reach the model at all. So every window is measured first
and only ``ok`` windows are scored.

The thresholds are the stream's ``LevelsConfig`` (``streams[].levels`` in the config, which
holds the defaults; this module has none of its own): RMS below ``silent_dbfs`` is ``silent`` (a muted or
unplugged analogue input: a running machine is far louder); more than ``clip_fraction`` of the
samples at or above ``clip_dbfs`` is ``clipping``; any NaN/inf, or a constant signal (digital
zero, a stuck ADC), is ``dead``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from edge_asd.config import LevelsConfig

logger = logging.getLogger(__name__)

LEVEL_STATES = ("ok", "silent", "dead", "clipping")
_FLOOR_DB = -200.0  # reported instead of -inf for exact zeros, keeps the JSON finite


@dataclass(frozen=True)
class LevelReport:
    """Levels of one window. ``state`` is one of ``LEVEL_STATES``; anything but ok is a fault."""

    rms_dbfs: float
    peak_dbfs: float
    crest_db: float
    clipped_fraction: float
    nonfinite: int
    state: str

    @property
    def fault(self) -> bool:
        return self.state != "ok"

    @property
    def scorable(self) -> bool:
        """Only ok windows may be given to the model."""
        return self.state == "ok"

    def to_dict(self) -> dict:
        # Built by hand: ``dataclasses.asdict`` deep-copies every field, and this runs for every
        # window of every stream.
        return {
            "rms_dbfs": self.rms_dbfs,
            "peak_dbfs": self.peak_dbfs,
            "crest_db": self.crest_db,
            "clipped_fraction": self.clipped_fraction,
            "nonfinite": self.nonfinite,
            "state": self.state,
        }


def _db(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else _FLOOR_DB


def clip_level(config: LevelsConfig) -> float:
    """``clip_dbfs`` as a linear sample magnitude (full scale = 1.0)."""
    return float(10.0 ** (config.clip_dbfs / 20.0))


def measure(audio: np.ndarray, config: LevelsConfig | None = None) -> LevelReport:
    """RMS and peak in dBFS (full scale = 1.0), crest factor in dB, and the window's state."""
    t = config or LevelsConfig()
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return LevelReport(_FLOOR_DB, _FLOOR_DB, 0.0, 0.0, 0, "dead")
    # Every hop, for every stream: as few passes over the window as the answer needs. The
    # extremes come first because they also tell whether every sample is finite (a NaN makes
    # both NaN, an infinity shows in one), so a whole window needs no isfinite pass.
    hi, lo = float(x.max()), float(x.min())
    nonfinite = 0
    xf = x
    if not (math.isfinite(hi) and math.isfinite(lo)):
        finite = np.isfinite(x)
        nonfinite = int(x.size - np.count_nonzero(finite))
        xf = x[finite]
        if xf.size:
            hi, lo = float(xf.max()), float(xf.min())
    if xf.size:
        # A float32 dot of 160 000 squares is good to 1e-4 relative, far below a tenth of a dB.
        rms = math.sqrt(max(float(np.dot(xf, xf)), 0.0) / xf.size)
        peak = max(hi, -lo)
        constant = hi == lo
        level = clip_level(t)
        clipped = float(np.count_nonzero(np.abs(xf) >= level)) / x.size if peak >= level else 0.0
    else:
        rms = peak = 0.0
        constant = True
        clipped = 0.0
    rms_db, peak_db = _db(rms), _db(peak)
    crest = peak_db - rms_db if rms > 0 else 0.0
    if nonfinite or constant:
        state = "dead"
    elif clipped > t.clip_fraction:
        state = "clipping"
    elif rms_db < t.silent_dbfs:
        state = "silent"
    else:
        state = "ok"
    return LevelReport(rms_db, peak_db, crest, clipped, nonfinite, state)


@dataclass
class _StreamLevels:
    last: LevelReport | None = None
    counts: dict = field(default_factory=lambda: dict.fromkeys(LEVEL_STATES, 0))
    state: str = "ok"
    run: int = 0  # consecutive windows in a state different from ``state``
    candidate: str = "ok"


class LevelMonitor:
    """Per-stream level bookkeeping with a debounced stream state for status messages.

    ``check(stream, audio)`` classifies one window (that verdict alone decides whether the
    window is scored). The *stream* state changes only after ``debounce_windows`` consecutive
    windows agree, so one loud bang does not flip the published status to ``clipping`` and back.
    """

    def __init__(self, config: LevelsConfig | None = None) -> None:
        self.config = config or LevelsConfig()
        self.debounce = self.config.debounce_windows
        self._streams: dict[str, _StreamLevels] = {}

    def check(self, stream: str, audio: np.ndarray) -> LevelReport:
        report = measure(audio, self.config)
        s = self._streams.setdefault(stream, _StreamLevels())
        s.last = report
        s.counts[report.state] += 1
        if report.state == s.state:
            s.run = 0
        else:
            if report.state == s.candidate:
                s.run += 1
            else:
                s.candidate, s.run = report.state, 1
            if s.run >= self.debounce:
                if report.state != "ok":
                    logger.warning("stream %s: level state %s -> %s (rms %.1f dBFS, peak %.1f dBFS)",
                                   stream, s.state, report.state, report.rms_dbfs, report.peak_dbfs)
                else:
                    logger.info("stream %s: level state back to ok", stream)
                s.state, s.run = report.state, 0
        return report

    def state(self, stream: str) -> str:
        """Debounced state of ``stream`` (``ok`` before any window)."""
        s = self._streams.get(stream)
        return s.state if s else "ok"

    def faulted(self, stream: str) -> bool:
        return self.state(stream) != "ok"

    def stats(self, stream: str) -> dict:
        """For the stats message: last levels, debounced state and counts per state."""
        s = self._streams.get(stream)
        if s is None:
            return {"state": "ok", "dbfs": None, "peak_dbfs": None, "counts": dict.fromkeys(LEVEL_STATES, 0)}
        return {
            "state": s.state,
            "dbfs": None if s.last is None else round(s.last.rms_dbfs, 1),
            "peak_dbfs": None if s.last is None else round(s.last.peak_dbfs, 1),
            "counts": dict(s.counts),
        }
