"""One monitored stream: a channel of a capture, its classes, its threshold and its state.

The scheduling rule lives here because it is per stream: windows end on a grid of ``hop``
samples of the stream's own audio clock, so a file replayed as fast as possible gives the
same windows as the same audio heard live (the offline path is the live path). A stream whose
audio ran more than one hop ahead of the scorer skips to the newest grid point and counts
the windows it skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from edge_asd.audio.capture import Capture
from edge_asd.audio.stream_buffer import StreamBuffer
from edge_asd.core.constants import WINDOW_SAMPLES
from edge_asd.daemon.site import StreamSite
from edge_asd.decisions import DecisionEngine
from edge_asd.levels import LevelMonitor

logger = logging.getLogger(__name__)


@dataclass
class StreamCounters:
    windows: int = 0  # scored
    skipped: int = 0  # grid windows never scored because the scorer lagged
    gapped: int = 0  # windows not scored because they span an overflow or gap
    faults: int = 0  # windows not scored because the microphone level is faulty
    events: int = 0


@dataclass
class Stream:
    """State of one stream between hops."""

    name: str
    capture: Capture
    buffer: StreamBuffer
    class_indices: list[int]
    class_names: list[str]
    threshold_override: float | None
    decisions: DecisionEngine
    levels: LevelMonitor
    hop_samples: int
    enabled: bool = True
    site: StreamSite | None = None
    """Site learning (enrolment, features, feedback); None when site learning is off."""
    next_end: int = WINDOW_SAMPLES  # end sample index of the next window on the hop grid
    counters: StreamCounters = field(default_factory=StreamCounters)
    last_score: float | None = None
    last_threshold: float | None = None
    last_window_end_s: float | None = None
    level: dict = field(default_factory=dict)
    published_status: tuple[str, str] | None = None

    def due_window(self) -> tuple[np.ndarray, int, bool] | None:
        """The next window to score, as ``(audio, end_index, has_gap)``, or None if not due.

        Skips ahead (and counts) when more than one hop of audio is waiting and the window
        on the grid has already left the buffer.
        """
        end = self.buffer.end_index
        if end < self.next_end:
            return None
        target = self.next_end
        oldest_possible = self.buffer.first_index + WINDOW_SAMPLES
        if target < oldest_possible:
            behind = (end - target) // self.hop_samples
            target += behind * self.hop_samples
            self.counters.skipped += behind
        got = self.buffer.get(target - WINDOW_SAMPLES, WINDOW_SAMPLES)
        if got is None:  # the buffer moved under us: take the newest grid point next time
            return None
        audio, has_gap = got
        self.next_end = target + self.hop_samples
        return audio, target, has_gap

    def hold_index(self) -> int:
        """First sample this stream still needs (backpressure for non-real-time sources)."""
        return self.next_end - WINDOW_SAMPLES
