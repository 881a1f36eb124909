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
from edge_asd.core.constants import SAMPLE_RATE

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


BLOCK_SAMPLES = SAMPLE_RATE
"""A window's levels are merged from those of its 1 s blocks (the live path's hop), so that the
daemon measures only the newest second of each window (``LevelMonitor.check``) and gets what
``measure`` gives for the whole window."""


@dataclass(frozen=True)
class BlockLevels:
    """What a window's report needs from one block: exact to merge (extremes, counts, a sum)."""

    hi: float
    """Largest finite sample (-inf when none is finite)."""
    lo: float
    """Smallest finite sample (+inf when none is finite)."""
    sumsq: float
    """Sum of the finite samples' squares (a float32 dot product)."""
    finite: int
    nonfinite: int
    clipped: int
    """Finite samples at or above the clip level in magnitude."""


def block_levels(blocks: np.ndarray, level: float) -> list[BlockLevels]:
    """``BlockLevels`` of each row of float32 ``blocks`` (k, n), with the clip level ``level``
    (linear), in a few passes over all rows at once."""
    # The extremes first: they also tell whether a row is finite (a NaN makes both NaN, an
    # infinity shows in one), so a whole row needs no isfinite pass.
    his, los = blocks.max(axis=1).tolist(), blocks.min(axis=1).tolist()
    out = []
    for row, hi, lo in zip(blocks, his, los):
        nonfinite = 0
        xf = row
        if not (math.isfinite(hi) and math.isfinite(lo)):
            finite = np.isfinite(row)
            nonfinite = int(row.size - np.count_nonzero(finite))
            xf = row[finite]
            if not xf.size:
                out.append(BlockLevels(-math.inf, math.inf, 0.0, 0, nonfinite, 0))
                continue
            hi, lo = float(xf.max()), float(xf.min())
        # A float32 dot (one BLAS call, no temporary) is good to 1e-6 relative over a block.
        sumsq = max(float(np.dot(xf, xf)), 0.0)
        clipped = int(np.count_nonzero(np.abs(xf) >= level)) if max(hi, -lo) >= level else 0
        out.append(BlockLevels(hi, lo, sumsq, int(xf.size), nonfinite, clipped))
    return out


def merge_levels(blocks: list[BlockLevels], config: LevelsConfig) -> LevelReport:
    """The report of a window from its blocks' levels (every block counts, in any order)."""
    nonfinite = sum(b.nonfinite for b in blocks)
    finite = sum(b.finite for b in blocks)
    if finite:
        hi, lo = max(b.hi for b in blocks), min(b.lo for b in blocks)
        rms = math.sqrt(max(math.fsum(b.sumsq for b in blocks), 0.0) / finite)
        peak = max(hi, -lo)
        constant = hi == lo
        clipped = sum(b.clipped for b in blocks) / (finite + nonfinite)
    else:
        rms = peak = 0.0
        constant = True
        clipped = 0.0
    rms_db, peak_db = _db(rms), _db(peak)
    crest = peak_db - rms_db if rms > 0 else 0.0
    if nonfinite or constant:
        state = "dead"
    elif clipped > config.clip_fraction:
        state = "clipping"
    elif rms_db < config.silent_dbfs:
        state = "silent"
    else:
        state = "ok"
    return LevelReport(rms_db, peak_db, crest, clipped, nonfinite, state)


def measure(audio: np.ndarray, config: LevelsConfig | None = None) -> LevelReport:
    """RMS and peak in dBFS (full scale = 1.0), crest factor in dB, and the window's state:
    ``merge_levels`` of its 1 s blocks (the last one may be shorter)."""
    t = config or LevelsConfig()
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return LevelReport(_FLOOR_DB, _FLOOR_DB, 0.0, 0.0, 0, "dead")
    level = clip_level(t)
    whole = x.size // BLOCK_SAMPLES * BLOCK_SAMPLES
    blocks = block_levels(x[:whole].reshape(-1, BLOCK_SAMPLES), level) if whole else []
    if whole < x.size:
        blocks += block_levels(x[whole:][None, :], level)
    return merge_levels(blocks, t)


@dataclass
class _StreamLevels:
    last: LevelReport | None = None
    blocks: dict[int, BlockLevels] = field(default_factory=dict)
    """Levels of the blocks of the last window, by block number on the stream's sample clock."""
    counts: dict = field(default_factory=lambda: dict.fromkeys(LEVEL_STATES, 0))
    state: str = "ok"
    run: int = 0  # consecutive windows in a state different from ``state``
    candidate: str = "ok"


class LevelMonitor:
    """Per-stream level bookkeeping with a debounced stream state for status messages.

    ``check(stream, audio, end_index)`` classifies one window (that verdict alone decides whether
    the window is scored). The *stream* state changes only after ``debounce_windows`` consecutive
    windows agree, so one loud bang does not flip the published status to ``clipping`` and back.
    """

    def __init__(self, config: LevelsConfig | None = None) -> None:
        self.config = config or LevelsConfig()
        self.debounce = self.config.debounce_windows
        self._streams: dict[str, _StreamLevels] = {}

    def check(self, stream: str, audio: np.ndarray, end_index: int | None = None) -> LevelReport:
        """Classify one window of ``stream``; ``end_index``: the sample index one past its end
        on the stream's clock. With it, a window of whole blocks that ends on a block boundary
        reuses the levels of the blocks the previous windows held and measures only the new
        ones (the daemon's hop of 1 s: one block in ten); the report is ``measure``'s."""
        s = self._streams.setdefault(stream, _StreamLevels())
        report = self._measure_blocks(s, audio, end_index)
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

    def _measure_blocks(self, s: _StreamLevels, audio: np.ndarray, end_index: int | None) -> LevelReport:
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        if end_index is None or x.size == 0 or x.size % BLOCK_SAMPLES or end_index % BLOCK_SAMPLES:
            return measure(x, self.config)  # off the block grid: nothing to reuse or keep
        first = (end_index - x.size) // BLOCK_SAMPLES
        rows = x.reshape(-1, BLOCK_SAMPLES)
        keys = range(first, first + rows.shape[0])
        missing = [i for i, key in enumerate(keys) if key not in s.blocks]
        if missing:  # usually the newest block alone: a view, no copy
            contiguous = missing[-1] - missing[0] + 1 == len(missing)
            part = rows[missing[0] : missing[-1] + 1] if contiguous else rows[missing]
            s.blocks.update(zip((keys[i] for i in missing), block_levels(part, clip_level(self.config))))
        blocks = [s.blocks[key] for key in keys]
        s.blocks = dict(zip(keys, blocks))  # the next window's candidates only
        return merge_levels(blocks, self.config)

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
