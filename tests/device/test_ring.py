"""CaptureRing and StreamBuffer against a plain list-based reference model."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.audio.ring import CaptureRing, GapLog
from edge_asd.audio.stream_buffer import StreamBuffer

pytestmark = pytest.mark.device


class ListRing:
    """Reference: keeps every sample ever written in a list; the ring must agree with it."""

    def __init__(self, capacity: int, channels: int) -> None:
        self.capacity = capacity
        self.frames: list[list[float]] = []
        self.overflows = 0
        self.gaps: list[tuple[int, int]] = []

    def write(self, block: np.ndarray, overflow: bool = False) -> None:
        if overflow:
            self.overflows += 1
            self.gaps.append((len(self.frames), len(self.frames)))
        self.frames.extend(block.tolist())

    def read(self, cursor: int) -> tuple[int, np.ndarray, int]:
        start = max(cursor, len(self.frames) - self.capacity)
        return start, np.array(self.frames[start:], dtype=np.float32).reshape(-1, 2), start - cursor


def test_wraparound_and_overflow_accounting_match_reference() -> None:
    rng = np.random.default_rng(0)
    ring, ref = CaptureRing(1000, 2), ListRing(1000, 2)
    cursor = 0
    counter = 0
    for step in range(300):
        n = int(rng.integers(1, 400))
        block = (np.arange(counter, counter + n, dtype=np.float32)[:, None] * np.array([1, -1], np.float32))
        counter += n
        overflow = bool(rng.random() < 0.1)
        ring.write(block, overflow)
        ref.write(block, overflow)
        if step % 3 == 0:  # a reader that is sometimes too slow
            got = ring.read(cursor)
            start, data, lost = ref.read(cursor)
            assert got.start == start and got.lost == lost
            np.testing.assert_array_equal(got.data, data)
            cursor = got.end
    assert ring.written == len(ref.frames)
    assert ring.overflows == ref.overflows
    for a, b in [(0, 10), (500, 2000), (len(ref.frames) - 900, len(ref.frames))]:
        expected = any(s < b and e > a for s, e in ref.gaps)
        assert ring.has_gap(a, b) == expected


def test_reader_overrun_reports_lost_samples() -> None:
    ring = CaptureRing(100, 1)
    ring.write(np.arange(50, dtype=np.float32)[:, None])
    first = ring.read(0)
    assert (first.start, first.lost, first.data.shape[0]) == (0, 0, 50)
    ring.write(np.arange(50, 300, dtype=np.float32)[:, None])  # 250 more: the reader is lapped
    got = ring.read(first.end)
    assert got.start == 200 and got.lost == 150
    np.testing.assert_array_equal(got.data[:, 0], np.arange(200, 300, dtype=np.float32))
    assert ring.read(got.end).data.shape[0] == 0


def test_block_larger_than_ring_keeps_newest_and_marks_gap() -> None:
    ring = CaptureRing(10, 1)
    ring.write(np.arange(25, dtype=np.float32)[:, None])
    assert ring.written == 25
    got = ring.read(0)
    assert got.start == 15 and got.lost == 15
    np.testing.assert_array_equal(got.data[:, 0], np.arange(15, 25, dtype=np.float32))
    assert ring.has_gap(0, 16)


def test_max_frames_and_mark_gap() -> None:
    ring = CaptureRing(64, 1)
    ring.write(np.ones((20, 1), np.float32))
    ring.mark_gap()
    ring.write(np.ones((20, 1), np.float32))
    part = ring.read(0, max_frames=5)
    assert part.data.shape[0] == 5 and part.end == 5
    assert ring.has_gap(10, 30)  # the splice at 20 is strictly inside
    assert not ring.has_gap(0, 20) and not ring.has_gap(20, 40)  # ending / starting at it is fine


def test_gaplog_is_bounded_but_conservative() -> None:
    log = GapLog(4)
    for i in range(10):
        log.add(100 * i, 100 * i + 1)
    assert len(log.intervals()) == 4
    assert log.overlaps(0, 50)  # forgotten gap: reported conservatively
    assert log.overlaps(900, 950)
    assert not log.overlaps(950, 999)


def test_streambuffer_window_and_gap() -> None:
    buf = StreamBuffer(capacity=1000)
    assert buf.latest_window(500) is None
    buf.append(np.arange(400, dtype=np.float32))
    assert buf.latest_window(500) is None
    buf.append(np.arange(400, 1300, dtype=np.float32))
    audio, end, has_gap = buf.latest_window(500)
    assert end == 1300 and not has_gap
    np.testing.assert_array_equal(audio, np.arange(800, 1300, dtype=np.float32))
    assert buf.first_index == 300 and buf.get(200, 100) is None
    buf.mark_gap(1350, 1360)
    buf.append(np.zeros(100, np.float32))
    audio, end, has_gap = buf.latest_window(500)
    assert end == 1400 and has_gap  # a window spanning a gap is flagged, not scorable
    buf.latest_window(500)
    assert buf.gapped_windows == 1  # counted once per window
    buf.append(np.zeros(500, np.float32))
    assert buf.latest_window(500)[2] is False
