"""Which enrolment windows may score which: cross-fitting over whole stretches of time.

Why this exists: an enrolment cuts a stream's normal audio into 10 s windows on a 1 s hop, so
neighbouring windows share 90 % of their samples. If a window were scored against references
that include its neighbours, its nearest reference would be almost itself; its score would be
far lower than any new audio ever gets, and a threshold fitted on such scores would
false-alarm. So thresholds are fitted on *out-of-fold* scores, and a fold is a stretch of time,
never single windows.

The rule (``HOLDOUT_RULE`` is the same text, stored with every enrolment):

* Segments are clips (one file each) or recordings (one continuous capture each); a window is
  ``WindowRef(segment, start)`` and spans samples ``[start, start + 160000)`` at 16 kHz.
* With at least ``MIN_SEGMENTS_FOR_CLIP_FOLDS`` (5) segments, the folds are ``N_FOLDS`` (5)
  groups of whole segments, contiguous in segment order (the order in which segments first
  appear), so recordings made one after the other stay together.
* With fewer segments, each segment is cut into contiguous blocks of at least
  ``MIN_BLOCK_S`` (60 s), at most ``N_FOLDS`` per segment, and block ``k`` of every segment
  belongs to fold ``k``. If that gives a single fold (all segments shorter than two blocks),
  several segments become one fold each; a single short segment is cut into two halves (with
  a warning: the blocks are then shorter than 60 s).
* While a fold is held out, the references are every window of the other folds that does not
  overlap in time, within the same segment, any window of the held-out fold (a guard band of
  one window length on each side). No neighbour of a held-out window stays in the references.

Every window is held out exactly once, so every window gets one out-of-fold score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

N_FOLDS = 5
"""Folds of the cross-fitting: each fit sees 80 % of the audio, and five out-of-fold passes
stay cheap even for an hour of enrolment."""

MIN_SEGMENTS_FOR_CLIP_FOLDS = 5
"""From this many clips (or recordings) on, whole segments form the folds."""

MIN_BLOCK_S = 60.0
"""Shortest block of time held out when segments are cut: six window lengths, so the guard band
(one window on each side) removes at most a third of the neighbouring block."""

HOLDOUT_RULE = (
    "cross-fitting over whole stretches of time: with >= 5 clips/recordings, 5 folds of whole "
    "clips contiguous in order; otherwise each recording cut into contiguous blocks of >= 60 s "
    "(block k of every recording in fold k, >= 2 folds); while a fold is held out, references "
    "are the other folds' windows that do not overlap any held-out window of the same recording "
    "(10 s guard band); thresholds are fitted on the out-of-fold scores"
)


class HoldoutError(UserError):
    """Too little enrolment audio to hold out a stretch of time and keep references."""


@dataclass(frozen=True, order=True)
class WindowRef:
    """Where an enrolment window came from: a segment (clip path or recording id) and its start.

    ``start`` counts samples at 16 kHz from the segment's beginning; the window spans
    ``[start, start + WINDOW_SAMPLES)``.
    """

    segment: str
    start: int

    @property
    def end(self) -> int:
        return self.start + WINDOW_SAMPLES


def segment_order(refs: Sequence[WindowRef]) -> list[str]:
    """Segment names in order of first appearance (the order the audio was given in)."""
    seen: dict[str, None] = {}
    for ref in refs:
        seen.setdefault(ref.segment, None)
    return list(seen)


def assign_folds(
    refs: Sequence[WindowRef], *, n_folds: int = N_FOLDS, min_block_s: float = MIN_BLOCK_S
) -> np.ndarray:
    """Fold index (0..F-1) of every window, by the rule in the module docstring; F >= 2."""
    n = len(refs)
    if n < 2:
        raise HoldoutError(
            f"enrolment needs at least 2 windows to hold some out, got {n}: give more normal audio "
            "(a few minutes, or several 10 s clips)"
        )
    segments = segment_order(refs)
    seg_index = {name: i for i, name in enumerate(segments)}
    seg_of = np.array([seg_index[r.segment] for r in refs], dtype=np.int64)
    starts = np.array([r.start for r in refs], dtype=np.int64)
    folds = np.zeros(n, dtype=np.int64)
    if len(segments) >= MIN_SEGMENTS_FOR_CLIP_FOLDS:
        groups = np.array_split(np.arange(len(segments)), min(n_folds, len(segments)))
        fold_of_segment = np.empty(len(segments), dtype=np.int64)
        for f, members in enumerate(groups):
            fold_of_segment[members] = f
        return fold_of_segment[seg_of]
    block = float(min_block_s) * SAMPLE_RATE
    n_blocks = []
    for s in range(len(segments)):
        mask = seg_of == s
        first, last = int(starts[mask].min()), int(starts[mask].max())
        duration = last + WINDOW_SAMPLES - first
        nb = int(np.clip(duration // block, 1, n_folds))
        nb = min(nb, int(mask.sum()))
        n_blocks.append(nb)
        width = duration / nb
        folds[mask] = np.minimum(((starts[mask] - first) / width).astype(np.int64), nb - 1)
    if max(n_blocks) >= 2:
        return folds
    if len(segments) >= 2:
        return seg_of.copy()
    # One short recording: two halves in time (shorter than MIN_BLOCK_S).
    logger.warning(
        "enrolment audio is only %.0f s of one recording: holding out halves shorter than %.0f s; "
        "enrol with a few minutes of audio for a reliable threshold",
        (int(starts.max()) + WINDOW_SAMPLES - int(starts.min())) / SAMPLE_RATE,
        min_block_s,
    )
    order = np.argsort(starts, kind="stable")
    folds = np.zeros(n, dtype=np.int64)
    folds[order[n // 2 :]] = 1
    return folds


def reference_mask(refs: Sequence[WindowRef], folds: np.ndarray, fold: int) -> np.ndarray:
    """Windows that may serve as references while ``fold`` is held out (boolean, shape (N,)).

    A window qualifies if it is not in ``fold`` and does not overlap, within its segment, any
    window of ``fold`` (overlap: starts less than one window length apart).
    """
    folds = np.asarray(folds)
    held = folds == fold
    mask = ~held
    held_by_segment: dict[str, list[int]] = {}
    for ref, h in zip(refs, held):
        if h:
            held_by_segment.setdefault(ref.segment, []).append(ref.start)
    sorted_held = {seg: np.sort(np.asarray(v, dtype=np.int64)) for seg, v in held_by_segment.items()}
    for i, ref in enumerate(refs):
        if not mask[i]:
            continue
        starts = sorted_held.get(ref.segment)
        if starts is None:
            continue
        j = int(np.searchsorted(starts, ref.start))
        near = []
        if j < starts.size:
            near.append(abs(int(starts[j]) - ref.start))
        if j > 0:
            near.append(abs(int(starts[j - 1]) - ref.start))
        if near and min(near) < WINDOW_SAMPLES:
            mask[i] = False
    return mask


def cross_fit_plan(refs: Sequence[WindowRef], folds: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(held_out_indices, reference_indices)]``, one pair per fold; every window held out once.

    Raises ``HoldoutError`` if a fold leaves no reference (too little audio around it).
    """
    if folds is None:
        folds = assign_folds(refs)
    plan = []
    for fold in np.unique(folds):
        held = np.flatnonzero(folds == fold)
        ref_idx = np.flatnonzero(reference_mask(refs, folds, int(fold)))
        if ref_idx.size == 0:
            raise HoldoutError(
                f"holding out {held.size} enrolment windows leaves no reference window outside the "
                "guard band: enrol with more normal audio (at least two minutes, or five clips)"
            )
        plan.append((held, ref_idx))
    return plan


__all__ = [
    "HOLDOUT_RULE",
    "MIN_BLOCK_S",
    "MIN_SEGMENTS_FOR_CLIP_FOLDS",
    "N_FOLDS",
    "HoldoutError",
    "WindowRef",
    "assign_folds",
    "cross_fit_plan",
    "reference_mask",
    "segment_order",
]
