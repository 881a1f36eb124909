"""The hold-out rule of site enrolment: whole stretches of time, and no overlapping reference."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.core.site.holdout import (
    HoldoutError,
    WindowRef,
    assign_folds,
    cross_fit_plan,
    reference_mask,
)

pytestmark = pytest.mark.device

HOP = SAMPLE_RATE  # 1 s


def _recording(name: str, seconds: float) -> list[WindowRef]:
    n = int((seconds * SAMPLE_RATE - WINDOW_SAMPLES) // HOP) + 1
    return [WindowRef(name, i * HOP) for i in range(n)]


def _assert_no_overlap(refs: list[WindowRef]) -> None:
    plan = cross_fit_plan(refs)
    held_all = np.concatenate([h for h, _ in plan])
    assert sorted(held_all.tolist()) == list(range(len(refs)))  # every window held out exactly once
    for held, ref_idx in plan:
        assert ref_idx.size > 0
        assert not set(held.tolist()) & set(ref_idx.tolist())
        for h in held:
            for r in ref_idx:
                a, b = refs[h], refs[r]
                if a.segment == b.segment:
                    assert abs(a.start - b.start) >= WINDOW_SAMPLES, (a, b)


def test_one_long_recording_is_cut_into_blocks_of_a_minute_or_more() -> None:
    refs = _recording("rec", 10 * 60)  # 591 windows
    folds = assign_folds(refs)
    assert folds.max() + 1 == 5
    for f in range(5):
        starts = np.array([r.start for r, g in zip(refs, folds) if g == f])
        # contiguous in time, and at least 60 s long
        assert np.all(np.diff(starts) == HOP)
        assert (starts.max() + WINDOW_SAMPLES - starts.min()) / SAMPLE_RATE >= 60.0 - 1.0
    _assert_no_overlap(refs)


def test_guard_band_removes_every_neighbour_of_a_held_out_block() -> None:
    refs = _recording("rec", 6 * 60)
    folds = assign_folds(refs)
    mask = reference_mask(refs, folds, 1)
    held = np.flatnonzero(folds == 1)
    lo, hi = refs[held[0]].start, refs[held[-1]].start
    for r, ok in zip(refs, mask):
        near = lo - WINDOW_SAMPLES < r.start < hi + WINDOW_SAMPLES
        assert ok == (not near), r


def test_with_five_or_more_clips_folds_are_whole_clips_in_order() -> None:
    refs = []
    for c in range(12):
        refs += _recording(f"clip{c:02d}.wav", 10.0) if c % 2 else _recording(f"clip{c:02d}.wav", 30.0)
    folds = assign_folds(refs)
    assert folds.max() + 1 == 5
    by_clip: dict[str, set[int]] = {}
    for r, f in zip(refs, folds):
        by_clip.setdefault(r.segment, set()).add(int(f))
    assert all(len(s) == 1 for s in by_clip.values())  # a clip is never split
    order = [next(iter(by_clip[f"clip{c:02d}.wav"])) for c in range(12)]
    assert order == sorted(order)  # contiguous groups in clip order
    _assert_no_overlap(refs)


def test_few_short_recordings_become_one_fold_each() -> None:
    refs = _recording("a", 90) + _recording("b", 100)
    folds = assign_folds(refs)
    assert sorted(set(folds.tolist())) == [0, 1]
    assert {int(f) for r, f in zip(refs, folds) if r.segment == "a"} == {0}
    _assert_no_overlap(refs)


def test_one_short_recording_is_halved() -> None:
    refs = _recording("rec", 60)  # 51 windows, shorter than two blocks
    folds = assign_folds(refs)
    assert sorted(set(folds.tolist())) == [0, 1]
    _assert_no_overlap(refs)


def test_too_little_audio_is_a_user_error() -> None:
    with pytest.raises(HoldoutError, match="at least 2 windows"):
        assign_folds([WindowRef("x", 0)])
    with pytest.raises(HoldoutError, match="no reference"):
        cross_fit_plan(_recording("rec", 15))  # 6 windows, all overlapping each other
