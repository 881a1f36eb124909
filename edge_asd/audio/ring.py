"""Preallocated multichannel ring buffer between the PortAudio callback and the worker thread.

Why it looks like this: the sounddevice callback runs on PortAudio's real-time thread and
needs the GIL, so anything slow in it (allocating a copy per block, logging, waiting on a
lock) makes the device overflow. ``write`` therefore only copies the block into a buffer that
was allocated once (at most two slices for the wrap-around), records an overflow flag into a
preallocated gap table and then *publishes* the new sample count.

Memory model (single writer, single reader, CPython GIL): the writer updates the data first
and the counters after; a Python attribute store of an int is atomic under the GIL, so a
reader that loads ``written`` sees every sample below it fully copied. The reader copies out
the samples it wants and then re-reads ``written``: anything the writer may have overwritten
meanwhile (the reader was more than a ring length behind) is discarded and reported as lost
("overrun"), never returned half-written. No locks are taken on either side.

Sample indices are monotonic counts since the ring was created (``int``, never wraps).
Gaps (input overflows, samples missing after a source restart) are kept as half-open
intervals ``[start, end)`` of sample indices; a zero-length interval ``[p, p)`` is a
discontinuity between samples ``p-1`` and ``p``. A span ``[a, b)`` "contains" a gap when
``start < b and end > a``: that covers both samples marked invalid and a splice strictly
inside the span.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


class GapLog:
    """A bounded table of gap intervals in sample-index space (preallocated, no allocation).

    Keeps the newest ``size`` gaps. When older gaps are overwritten, the end of the newest
    overwritten one is remembered so that a query reaching back that far conservatively
    reports a gap instead of silently forgetting it.
    """

    def __init__(self, size: int = 64) -> None:
        if size < 1:
            raise ValueError("GapLog size must be >= 1")
        self._starts = np.zeros(size, dtype=np.int64)
        self._ends = np.zeros(size, dtype=np.int64)
        self._size = size
        self.count = 0
        """Gaps recorded since creation (monotonic; also the publish counter)."""
        self._forgotten_end = -1

    def add(self, start: int, end: int) -> None:
        """Record ``[start, end)``; safe to call from the real-time callback."""
        slot = self.count % self._size
        if self.count >= self._size:
            old_end = int(self._ends[slot])
            if old_end > self._forgotten_end:
                self._forgotten_end = old_end
        self._starts[slot] = start
        self._ends[slot] = max(start, end)
        self.count += 1

    def overlaps(self, a: int, b: int) -> bool:
        """True if the span ``[a, b)`` contains any recorded gap (see module docstring)."""
        n = min(self.count, self._size)
        if n == 0:
            return False
        if self._forgotten_end >= a:
            return True
        starts = self._starts[:n]
        ends = self._ends[:n]
        return bool(np.any((starts < b) & (ends > a)))

    def intervals(self, since: int = 0) -> list[tuple[int, int]]:
        """Gaps ending at or after ``since``, oldest first (for carrying them downstream)."""
        n = min(self.count, self._size)
        order = [(self.count - n + i) % self._size for i in range(n)]
        out = []
        for slot in order:
            s, e = int(self._starts[slot]), int(self._ends[slot])
            if e >= since:
                out.append((s, e))
        return out


@dataclass(frozen=True)
class RingRead:
    """Samples a reader took from the ring.

    ``start`` is the sample index of ``data[0]``; ``lost`` counts samples between the
    reader's cursor and ``start`` that were overwritten before the reader got to them.
    """

    start: int
    data: np.ndarray
    lost: int

    @property
    def end(self) -> int:
        return self.start + self.data.shape[0]


class CaptureRing:
    """Fixed-size ``(capacity, channels)`` float32 ring with monotonic sample indices."""

    def __init__(self, capacity: int, channels: int, gap_slots: int = 64) -> None:
        if capacity < 1 or channels < 1:
            raise ValueError(f"ring needs capacity >= 1 and channels >= 1, got {capacity}, {channels}")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self.written = 0
        """Samples (frames) written so far; published after the data copy."""
        self.overflows = 0
        """Blocks that arrived with the device's input-overflow flag."""
        self.blocks = 0
        self.last_write_monotonic: float | None = None
        self.consumed = 0
        """Set by the reader: how far it has read. Non-real-time sources use it to wait."""
        self.gaps = GapLog(gap_slots)

    # -- writer side (real-time thread) -------------------------------------------------
    def write(self, block: np.ndarray, overflow: bool = False) -> None:
        """Append ``block`` (frames, channels); no allocation, logging or locking.

        ``overflow`` says samples were lost *before* this block (PortAudio's
        ``input_overflow``): a discontinuity is recorded at the block's first index.
        """
        n = block.shape[0]
        w = self.written
        if overflow:
            self.overflows += 1
            self.gaps.add(w, w)
        if n > self.capacity:
            # Only the newest ``capacity`` frames can be kept; the ones skipped are lost.
            self.gaps.add(w, w + n - self.capacity)
            block = block[n - self.capacity :]
            w_copy = w + n - self.capacity
            m = self.capacity
        else:
            w_copy = w
            m = n
        pos = w_copy % self.capacity
        first = min(m, self.capacity - pos)
        self._buf[pos : pos + first] = block[:first]
        if first < m:
            self._buf[: m - first] = block[first:m]
        self.blocks += 1
        self.last_write_monotonic = time.monotonic()
        self.written = w + n  # publish last

    def mark_gap(self, missing: int = 0) -> None:
        """Record a discontinuity at the current write position (source restart, lost data).

        ``missing`` is informational only: no samples are inserted, so indices stay
        contiguous and the gap is the zero-length splice ``[written, written)``.
        """
        w = self.written
        self.gaps.add(w, w)
        logger.debug("capture ring: gap at sample %d (%d samples missing)", w, missing)

    # -- reader side ---------------------------------------------------------------------
    def read(self, cursor: int, max_frames: int | None = None) -> RingRead:
        """Copy out the samples written since ``cursor`` (at most ``max_frames``).

        If the writer has lapped the reader, the oldest still-valid samples are returned and
        ``lost`` says how many were skipped. The returned array is a fresh copy.
        """
        w = self.written
        start = max(cursor, w - self.capacity)
        end = w if max_frames is None else min(w, start + max(0, max_frames))
        n = max(0, end - start)
        out = np.empty((n, self.channels), dtype=np.float32)
        if n:
            pos = start % self.capacity
            first = min(n, self.capacity - pos)
            out[:first] = self._buf[pos : pos + first]
            if first < n:
                out[first:] = self._buf[: n - first]
            # The writer may have overwritten the head of what we copied while we copied it.
            safe = self.written - self.capacity
            if safe > start:
                cut = min(safe, end) - start
                out = out[cut:]
                start += cut
        self.consumed = start + out.shape[0]
        return RingRead(start=start, data=out, lost=start - cursor)

    def has_gap(self, a: int, b: int) -> bool:
        """Does the span ``[a, b)`` contain an overflow or other gap?"""
        return self.gaps.overlaps(a, b)
