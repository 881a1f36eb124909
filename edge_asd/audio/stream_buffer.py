"""The newest seconds of one 16 kHz stream, ready to be cut into model windows.

One ``StreamBuffer`` per channel. The capture worker appends resampled audio and the gaps it
carried through from the capture ring; the scheduler asks for the newest 10 s window. A
window that spans a gap (an input overflow, an overrun of the ring, a device restart) comes
back flagged so it is skipped, never scored: a splice of two unrelated sounds is exactly the
kind of discontinuity the model would call anomalous.

Two threads touch a buffer (worker writes, scheduler reads) at a few Hz, so a plain lock is
fine here; nothing on the real-time audio thread ever sees it.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from edge_asd.audio.ring import GapLog
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES

logger = logging.getLogger(__name__)


class StreamBuffer:
    """Bounded mono float32 history with monotonic sample indices and gap bookkeeping.

    ``capacity`` must be at least the longest window asked for (default: 12 s at 16 kHz, so
    the newest 10 s window is always there plus room for the scheduler being late).
    """

    def __init__(self, capacity: int = 12 * SAMPLE_RATE, sample_rate: int = SAMPLE_RATE, gap_slots: int = 64) -> None:
        if capacity < 1:
            raise ValueError("StreamBuffer capacity must be >= 1")
        self.capacity = int(capacity)
        self.sample_rate = int(sample_rate)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._end = 0
        self._start_index = 0
        self._gaps = GapLog(gap_slots)
        self._lock = threading.Lock()
        self._last_gapped_end = -1
        self.gapped_windows = 0
        """Distinct windows returned with ``has_gap`` (counted once per end index)."""

    @property
    def end_index(self) -> int:
        """Index one past the newest sample (= samples appended so far, counting from 0)."""
        return self._end

    @property
    def first_index(self) -> int:
        """Index of the oldest sample still held."""
        return max(self._start_index, self._end - self.capacity)

    def append(self, samples: np.ndarray) -> int:
        """Append mono samples; returns the index of the first one."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        with self._lock:
            first = self._end
            n = x.shape[0]
            if n > self.capacity:
                x = x[n - self.capacity :]
            pos = (first + n - x.shape[0]) % self.capacity
            m = x.shape[0]
            head = min(m, self.capacity - pos)
            self._buf[pos : pos + head] = x[:head]
            if head < m:
                self._buf[: m - head] = x[head:]
            self._end = first + n
        return first

    def mark_gap(self, start: int, end: int) -> None:
        """Mark samples ``[start, end)`` (or the splice ``[p, p)``) as not scorable."""
        with self._lock:
            self._gaps.add(int(start), int(end))

    def has_gap(self, start: int, end: int) -> bool:
        with self._lock:
            return self._gaps.overlaps(start, end)

    def get(self, start: int, n: int) -> tuple[np.ndarray, bool] | None:
        """Samples ``[start, start + n)`` and whether they span a gap; None if not held."""
        with self._lock:
            if not self._holds(start, n):
                return None
            return self._copy(start, n), self._gaps.overlaps(start, start + n)

    def get_with_lead(self, start: int, n: int, lead: int) -> tuple[np.ndarray, int, bool, bool] | None:
        """Samples ``[start - lead, start + n)`` in one copy, as ``(samples, lead, has_gap,
        moved_gap)``: whether ``[start, start + n)`` spans a gap, and whether the same length
        moved back by ``lead``, ``[start - lead, start - lead + n)``, does. Where the lead has
        left the buffer the copy starts at ``start`` (lead 0, ``moved_gap`` = ``has_gap``).
        None if ``[start, start + n)`` itself is not held.

        Why: the daemon scores each window twice over, the model on the log-mel frame grid (up
        to 511 samples earlier) and the indicators on the hop's grid; one copy of both spans,
        taken under one lock, serves both (``Stream.due_window``)."""
        with self._lock:
            if not self._holds(start, n):
                return None
            lead = int(lead) if 0 < lead <= start - self.first_index and n + lead <= self.capacity else 0
            lo = start - lead
            has_gap = self._gaps.overlaps(start, start + n)
            return self._copy(lo, n + lead), lead, has_gap, self._gaps.overlaps(lo, lo + n) if lead else has_gap

    def _holds(self, start: int, n: int) -> bool:
        """Whether ``[start, start + n)`` is held (under the lock); a window longer than the
        buffer is a ValueError."""
        if n < 1 or n > self.capacity:
            raise ValueError(f"window of {n} samples does not fit a buffer of {self.capacity}")
        return self.first_index <= start and start + n <= self._end

    def _copy(self, start: int, n: int) -> np.ndarray:
        """A copy of the held samples ``[start, start + n)`` (under the lock)."""
        out = np.empty(n, dtype=np.float32)
        pos = start % self.capacity
        head = min(n, self.capacity - pos)
        out[:head] = self._buf[pos : pos + head]
        if head < n:
            out[head:] = self._buf[: n - head]
        return out

    def latest_window(self, n: int = WINDOW_SAMPLES) -> tuple[np.ndarray, int, bool] | None:
        """The newest ``n`` samples as ``(audio, end_sample_index, has_gap)``, or None.

        None until ``n`` samples have arrived. ``end_sample_index`` is one past the last
        sample, so the window's audio time ends at ``end_sample_index / sample_rate``.
        """
        with self._lock:
            end = self._end
        got = self.get(end - n, n) if end - n >= self.first_index else None
        if got is None:
            return None
        audio, has_gap = got
        if has_gap and end != self._last_gapped_end:
            self._last_gapped_end = end
            self.gapped_windows += 1
        return audio, end, has_gap
