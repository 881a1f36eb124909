"""Run a trained model over sound files: scores for every class and the embedding of each clip.

One routine (``run_model``) serves the knn references, the threshold calibration and the
evaluation. It always runs in float32, also on a GPU that trained under bf16 autocast: the
reference code evaluates in float32, the exported CPU graph is float32, and bf16 turns the
embeddings by about 3 degrees, enough to move knn scores and thresholds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edge_asd.core.audio_io import AudioFileError, fit_length, read_audio
from edge_asd.core.constants import EMBEDDING_DIM, WINDOW_SAMPLES
from trainer.progress import Progress, as_progress

logger = logging.getLogger(__name__)


class _FileDataset(torch.utils.data.Dataset):
    """Reads clips straight from their files (one pass: no cache needed); bad files flagged."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            audio = fit_length(read_audio(self.paths[i]))
            return torch.from_numpy(audio), True
        except AudioFileError as err:
            logger.warning("skipping %s", err)
            return torch.zeros(WINDOW_SAMPLES, dtype=torch.float32), False


def pick_device(device: str | torch.device | None) -> torch.device:
    """A ``torch.device`` from ``auto``/``cpu``/``cuda[:N]`` (None means ``auto``)."""
    if isinstance(device, torch.device):
        return device
    from trainer.distributed import resolve_device

    return resolve_device(device or "auto")


def prepare_model(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Float32, eval mode, on ``device``; the CPU uses the faster ``torch.stft`` front end (same numbers)."""
    net.float().eval()
    if device.type == "cpu":
        net.frontend.lowering = "stft"
    return net.to(device)


@torch.no_grad()
def run_model(
    net: torch.nn.Module,
    paths: Sequence[Path],
    device: torch.device,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool | Progress = True,
    description: str = "scoring",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores (N, C), embeddings (N, 128), ok (N,))`` for the clips at ``paths``, in float32.

    ``ok`` is False for files that could not be read (their rows are zeros); callers drop them.
    """
    n = len(paths)
    c = int(net.config.num_classes)
    scores = np.zeros((n, c), np.float32)
    embeddings = np.zeros((n, EMBEDDING_DIM), np.float32)
    ok = np.zeros(n, bool)
    if n == 0:
        return scores, embeddings, ok
    loader = torch.utils.data.DataLoader(_FileDataset(paths), batch_size=batch_size, num_workers=workers)
    bar = as_progress(progress)
    task = bar.start(description, total=n)
    i = 0
    for audio, good in loader:
        audio = audio.to(device)
        emb = net.embed(audio)
        sc = net.scores_from_cosine(net.head_cosine(emb))
        b = audio.shape[0]
        scores[i : i + b] = sc.float().cpu().numpy()
        embeddings[i : i + b] = emb.float().cpu().numpy()
        ok[i : i + b] = good.numpy()
        i += b
        bar.update(task, advance=b)
    bar.finish(task, f"{int(ok.sum())} of {n} clips")
    return scores, embeddings, ok


__all__ = ["pick_device", "prepare_model", "run_model"]
