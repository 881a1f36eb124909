"""The torch ``Dataset`` over the audio cache (training side only; the device never imports it).

It returns raw 10 s waveforms; the log-mel is computed on the fly by the model's front end, so
the cache stays model-agnostic and mixup can act on the waveform.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from trainer.data.cache import AudioCache

logger = logging.getLogger(__name__)


class CachedAudioDataset(Dataset):
    """``(audio float32 (length,), label int)`` for each (path, label) pair, read from the cache."""

    def __init__(self, cache: AudioCache, paths: Sequence[Path | str], labels: Sequence[int]) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.cache = cache
        self.rows = [cache.row(p) for p in paths]  # on-disk rows
        self.labels = [int(x) for x in labels]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.cache.row_audio(self.rows[i])), self.labels[i]


__all__ = ["CachedAudioDataset"]
