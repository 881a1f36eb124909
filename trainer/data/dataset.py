"""The one torch ``Dataset`` of training: 10 s waveforms read from the decoded-audio cache.

It returns raw waveforms; the log-mel is computed on the fly by the model's front end, so the
cache stays model-agnostic and mixup can act on the waveform and on the log-mel (the released
code mixes both with one lambda). Training side only: the device never imports it, and
``trainer.data`` does not import it either (it needs torch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.data.cache import load_audio_cache

logger = logging.getLogger(__name__)

_INT16_SCALE = 1.0 / 32768.0


class WaveDataset(torch.utils.data.Dataset):
    """``(audio float32 (160000,), label)`` for each of ``rows``.

    ``audio[r]`` is the int16 clip of row ``r`` (an ``AudioCache`` or any array-like) and
    ``labels[r]`` its class; ``rows`` selects the clips of this dataset (a split's train or
    held-out rows), so both splits share one cache and one label array.
    """

    def __init__(self, audio: Any, labels: Sequence[int], rows: Sequence[int]) -> None:
        self.audio = audio
        self.labels = np.asarray(labels, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r = int(self.rows[i])
        x = np.asarray(self.audio[r], dtype=np.float32) * _INT16_SCALE
        return torch.from_numpy(x), int(self.labels[r])


@dataclass
class AudioStore:
    """Decoded int16 clips, row i = training clip i, plus which rows are usable."""

    audio: Any
    good: np.ndarray

    def ok(self, i: int) -> bool:
        return bool(self.good[i])


def load_training_audio(
    paths: Sequence[Any],
    cache_dir: str | None,
    skip_bad: bool,
    progress: Callable[[int, int], None] | None = None,
) -> AudioStore:
    """The memory-mapped int16 cache of ``paths`` (decoded on the first call, then reused).

    Under ``torchrun`` rank 0 calls this first and the others after a barrier, so only one
    process decodes and the others open the finished cache.
    """
    cache = load_audio_cache(list(paths), cache_dir=cache_dir, skip_bad=skip_bad, progress=progress)
    return AudioStore(cache.audio, np.asarray(cache.ok, dtype=bool))


__all__ = ["AudioStore", "WaveDataset", "load_training_audio"]
