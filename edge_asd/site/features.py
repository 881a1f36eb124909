"""Per-window features of audio for site learning: indicators, spectral profiles, embeddings and
ce, with provenance.

Enrolment, ``evaluate-site`` and feedback need, for every 10 s window on a hop grid, the
condition indicators (``edge_asd.core.indicators``), the spectral profile (fine spectrum and
envelope spectrum, ``edge_asd.core.spectra``), the bundle model's embedding and (for a stream
with classes) its cross-entropy score, plus where the window came from (``WindowRef``),
because the hold-out rule works on stretches of time. This module runs the model over audio
segments in batches and computes indicators and profiles from the same 1 s block statistics:
each block is analysed once per segment and shared by both and by the ten windows that contain
it (``combine`` and ``profile`` of the ten blocks are by definition the window's vectors), a
tenfold saving over computing every window from scratch, and exactly what the daemon does.

Device side: numpy and the runtime interface only (no torch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_asd.core import indicators as ind
from edge_asd.core import spectra
from edge_asd.core.audio_io import fit_length
from edge_asd.core.constants import EMBEDDING_DIM, SAMPLE_RATE, WINDOW_SAMPLES
from edge_asd.core.logmel import grid_start
from edge_asd.core.site.holdout import WindowRef
from engines.runtime.base import Runtime

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 8
"""Windows per inference call: the fastest batch on a CPU (docs/performance.md)."""


@dataclass
class WindowFeatures:
    """Features of N windows: refs, indicators (N, K), embeddings (N, 128), ce (N,) or None,
    spectral profiles (N, ``spectra.PROFILE_SIZE``) float32."""

    refs: list[WindowRef] = field(default_factory=list)
    indicators: np.ndarray = field(default_factory=lambda: np.zeros((0, len(ind.INDICATORS))))
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32))
    ce: np.ndarray | None = None
    samples: int = 0
    """Samples of audio given (16 kHz), for the enrolment's provenance."""
    profiles: np.ndarray = field(default_factory=lambda: np.zeros((0, spectra.PROFILE_SIZE), np.float32))

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def minutes(self) -> float:
        """Minutes of audio the windows were cut from (before padding)."""
        return self.samples / SAMPLE_RATE / 60.0

    def select(self, index: Sequence[int] | np.ndarray) -> WindowFeatures:
        idx = np.asarray(index, dtype=np.int64)
        return WindowFeatures(
            [self.refs[i] for i in idx], self.indicators[idx], self.embeddings[idx],
            None if self.ce is None else self.ce[idx], self.samples, self.profiles[idx],
        )  # fmt: skip


def window_starts(n_samples: int, hop_samples: int) -> list[int]:
    """Starts of the 10 s windows on a hop grid; a segment shorter than 10 s gives one (padded)."""
    if n_samples <= WINDOW_SAMPLES:
        return [0]
    return list(range(0, n_samples - WINDOW_SAMPLES + 1, hop_samples))


def _blocks(audio: np.ndarray, first_sample: int, n_blocks: int) -> list[ind.BlockStats]:
    return ind.block_stats_of(audio[first_sample:], n_blocks)


def _segment_features(audio: np.ndarray, starts: list[int], hop_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(indicator vectors, spectral profiles) of the windows at ``starts``, from 1 s block
    statistics computed once per segment (once per window when the hop is not whole seconds)."""
    if audio.size < WINDOW_SAMPLES:
        audio, starts = fit_length(audio), [0]
    if hop_samples % ind.BLOCK_SAMPLES:
        per_window = [_blocks(audio, s, ind.BLOCKS_PER_WINDOW) for s in starts]
    else:
        n_blocks = (starts[-1] + WINDOW_SAMPLES) // ind.BLOCK_SAMPLES
        blocks = _blocks(audio, 0, n_blocks)
        per_window = [blocks[f : f + ind.BLOCKS_PER_WINDOW] for f in (s // ind.BLOCK_SAMPLES for s in starts)]
    # The live path's batched functions (edge_asd.daemon.site.features_many): the same numbers.
    return ind.combine_many(per_window), spectra.profile_many(per_window)


def extract(
    audio_segments: Iterable[tuple[str, np.ndarray]],
    runtime: Runtime,
    *,
    hop_s: float = 1.0,
    class_indices: Sequence[int] | None = None,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
) -> WindowFeatures:
    """Features of every 10 s window (on a ``hop_s`` grid) of every segment.

    ``audio_segments`` yields ``(segment_id, float32 mono 16 kHz audio)``: a clip path or a
    recording id, and its samples. A segment shorter than 10 s is zero-padded to one window
    (like ``fit_length``). ``class_indices``: the stream's bundle classes; the ``ce`` score of
    a window is the minimum over them (as ``engines.scorer`` does); None = no ce.
    ``progress(windows_done)`` is called after every batch.
    """
    hop_samples = int(round(hop_s * SAMPLE_RATE))
    if hop_samples < 1:
        raise ValueError(f"hop_s must be positive, got {hop_s}")
    # Enough windows per call to keep every parallel run busy (onnxruntime spreads a call over them).
    per_call = int(getattr(runtime, "max_batch", batch)) * int(getattr(runtime, "parallel_runs", 1))
    batch = max(1, min(int(batch), per_call))
    cls = None if class_indices is None else np.asarray(list(class_indices), dtype=np.int64)
    if cls is not None and cls.size == 0:
        cls = None
    refs: list[WindowRef] = []
    indicators: list[np.ndarray] = []
    profiles: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    ce: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    samples = 0

    def flush() -> None:
        if not pending:
            return
        out = runtime.infer(np.stack(pending).astype(np.float32, copy=False))
        embeddings.append(np.asarray(out.embedding, dtype=np.float32))
        if cls is not None:
            ce.append(np.asarray(out.scores, dtype=np.float64)[:, cls].min(axis=1))
        pending.clear()
        if progress is not None:
            progress(sum(e.shape[0] for e in embeddings))

    for segment_id, audio in audio_segments:
        x = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
        if x.size == 0:
            logger.warning("segment %s holds no samples: skipped", segment_id)
            continue
        samples += x.size
        starts = window_starts(x.size, hop_samples)
        seg_indicators, seg_profiles = _segment_features(x, starts, hop_samples)
        indicators.append(seg_indicators)
        profiles.append(seg_profiles)
        for start in starts:
            refs.append(WindowRef(str(segment_id), int(start)))
            model_start = grid_start(start)  # the model's window, as listen moves it (Stream.model_window)
            pending.append(fit_length(x[model_start : model_start + WINDOW_SAMPLES]))
            if len(pending) >= batch:
                flush()
    flush()
    if not refs:
        return WindowFeatures(ce=None if cls is None else np.zeros(0))
    return WindowFeatures(
        refs=refs,
        indicators=np.concatenate(indicators, axis=0),
        embeddings=np.concatenate(embeddings, axis=0),
        ce=None if cls is None else np.concatenate(ce),
        samples=samples,
        profiles=np.concatenate(profiles, axis=0),
    )


__all__ = ["DEFAULT_BATCH", "WindowFeatures", "extract", "window_starts"]
