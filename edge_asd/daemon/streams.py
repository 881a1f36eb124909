"""One monitored stream: a channel of a capture, its classes, its threshold and its state.

The scheduling rule lives here because it is per stream: windows end on a grid of ``hop``
samples of the stream's own audio clock, so a file replayed as fast as possible gives the
same windows as the same audio heard live (the offline path is the live path). A stream whose
audio ran more than one hop ahead of the scorer skips to the newest grid point and counts
the windows it skipped. ``EnabledStates`` keeps the operator's on/off switch of each stream
across restarts.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_asd.audio.capture import Capture
from edge_asd.audio.stream_buffer import StreamBuffer
from edge_asd.core.atomic import atomic_write_text
from edge_asd.core.constants import WINDOW_SAMPLES
from edge_asd.core.logmel import LogMelStream, grid_start
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
    unavailable_s: float = 0.0  # seconds the input was missing, failed or silent (no audio at all)


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
    logmel: LogMelStream = field(default_factory=lambda: LogMelStream(on_grid=True), repr=False)
    """Log-mel frames kept for this stream's next model windows (the CPU graph with a log-mel input)."""
    counters: StreamCounters = field(default_factory=StreamCounters)
    last_score: float | None = None
    last_threshold: float | None = None
    last_window_end_s: float | None = None
    level: dict = field(default_factory=dict)
    published_status: tuple[str, str] | None = None
    last_scored_mono: float | None = None
    """``time.monotonic()`` of the last scored window (None before the first one)."""
    _model: tuple[int, np.ndarray, int] | None = field(default=None, repr=False)
    """(end index, model window, its start) of the window ``due_window`` gave last, until
    ``model_window`` takes it."""

    def due_window(self) -> tuple[np.ndarray, int, bool] | None:
        """The next window to score, as ``(audio, end_index, has_gap)``, or None if not due.

        Skips ahead (and counts) when more than one hop of audio is waiting and the window
        on the grid has already left the buffer. The model's window for it (``model_window``)
        comes out of the same copy: the buffer is read once per window, 10 s and the up to 511
        samples before it, and ``audio`` is a view of that copy.
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
        start = target - WINDOW_SAMPLES
        got = self.buffer.get_with_lead(start, WINDOW_SAMPLES, start - grid_start(start))
        if got is None:  # the buffer moved under us: take the newest grid point next time
            return None
        span, lead, has_gap, moved_gap = got
        audio = span[lead:]
        if has_gap:  # an overflow or a capture restart: reuse no frame across it
            self.logmel.reset("gap in the stream's audio")
        # The model's window: on the frame grid where the samples before the window are held
        # and free of gaps, else the window itself (see model_window).
        self._model = (target, span[:WINDOW_SAMPLES], start - lead) if lead and not moved_gap else (target, audio, start)
        self.next_end = target + self.hop_samples
        return audio, target, has_gap

    def model_window(self, audio: np.ndarray, end_index: int) -> tuple[np.ndarray, int]:
        """The window the model scores for the window ``audio`` ending at ``end_index``, and its
        start: the same 10 s moved back onto the log-mel frame grid (at most 511 samples, see
        ``edge_asd.core.logmel``), so its frames are shared with the stream's previous window.
        The window itself when it already starts on the grid, or when the samples before it have
        left the buffer or hold a gap. For the window ``due_window`` just gave, the part of its
        copy it already made (no second copy)."""
        due, self._model = self._model, None
        if due is not None and due[0] == end_index:
            return due[1], due[2]
        start = end_index - WINDOW_SAMPLES
        moved = grid_start(start)
        if moved == start:
            return audio, start
        got = self.buffer.get(moved, WINDOW_SAMPLES)
        if got is None or got[1]:
            return audio, start
        return got[0], moved

    def drop_model_window(self) -> None:
        """Let the copy of the window ``due_window`` gave last go at the end of its tick, scored
        or not (a gap, a level fault, the stream switched off), rather than at the next due
        window: a faulted stream would otherwise hold 640 KB between hops."""
        self._model = None

    def hold_index(self) -> int:
        """First sample this stream still needs (backpressure for non-real-time sources): the
        start of the next window's model window (``model_window``), on the frame grid."""
        return grid_start(self.next_end - WINDOW_SAMPLES)

    def idle(self) -> None:
        """Not scored on purpose (disabled): let the grid follow the audio without counting
        the windows as skipped, so switching the stream on again scores the newest window."""
        end = self.buffer.end_index
        if end >= self.next_end:
            self.next_end += ((end - self.next_end) // self.hop_samples + 1) * self.hop_samples


ENABLED_FILE = "enabled.json"
"""Under the state directory: ``{"<stream>": true|false}`` as operators last switched them."""


class EnabledStates:
    """The operators' ``enabled/set`` choices, kept across restarts (atomically written).

    Why: an operator who switches a stream off (a machine under maintenance) expects it to stay
    off after a reboot or a watchdog restart; the config's ``enabled`` is only where a stream
    starts before anyone switched it. Entries of streams this node no longer has are ignored
    when read and dropped at the next write. Losing the file (unwritable state directory) is
    logged, never fatal: monitoring goes on with the config's values.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / ENABLED_FILE
        self._lock = threading.Lock()
        self._states: dict[str, bool] = {}

    def load(self, streams: list[str]) -> dict[str, bool]:
        """The kept states of ``streams`` (only those an operator switched)."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as err:
            logger.warning("ignoring %s (%s): streams start as the config says", self.path, err)
            raw = {}
        if not isinstance(raw, dict):
            logger.warning("ignoring %s: not a JSON object; streams start as the config says", self.path)
            raw = {}
        with self._lock:
            self._states = {k: v for k, v in raw.items() if k in streams and isinstance(v, bool)}
            return dict(self._states)

    def save(self, stream: str, enabled: bool, streams: list[str]) -> None:
        """Remember an operator's switch of ``stream`` (any thread)."""
        with self._lock:
            self._states[stream] = bool(enabled)
            self._states = {k: v for k, v in self._states.items() if k in streams}
            try:
                atomic_write_text(self.path, json.dumps(self._states, sort_keys=True) + "\n")
            except OSError as err:
                logger.error("cannot keep the enabled state of %s in %s (%s): it resets to the config's at "
                             "the next start", stream, self.path, err)  # fmt: skip
