"""One training step: mixup, the forward pass under mixed precision, and the chosen loss.

Also the reproducibility helpers the loop needs: per-epoch randomness is drawn from
generators derived from ``(seed, epoch, rank, stream)`` rather than from a global RNG stream,
so a resumed run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from torch import nn

from trainer import losses
from trainer.config import TrainConfig

logger = logging.getLogger(__name__)

Amp = tuple[bool, torch.dtype]
"""``(autocast enabled, autocast dtype)`` of the training forward pass."""

SHUFFLE_STREAM, MIXUP_STREAM, BN_SUBSET_STREAM = 0, 1, 2
"""The ``stream`` numbers of ``epoch_generator``: one independent generator per use."""


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (the released code seeds all three with 2023)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, rank: int, stream: int) -> torch.Generator:
    """A generator whose draws depend only on (seed, epoch, rank, stream): resumable."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0]))
    return g


def unwrap(model: nn.Module) -> nn.Module:
    """The TASTgramMFN inside a DDP wrapper (DDP -> BackboneForward -> net)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "net", model)


def amp_for(device: torch.device) -> Amp:
    """Autocast for *training* on CUDA (bf16 where supported: no loss scaling), never on the CPU.

    Only the training forward pass uses it; validation, embeddings, calibration and evaluation
    run in float32 (as the reference code evaluates): bf16 turns embeddings by about 3 degrees.
    """
    if device.type != "cuda":
        return False, torch.float32
    return True, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


class BackboneForward(nn.Module):
    """DDP wraps a module's ``forward``; training needs ``head_cosine(backbone(audio, logmel))``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, audio: torch.Tensor, logmel: torch.Tensor) -> torch.Tensor:
        return self.net.head_cosine(self.net.backbone(audio, logmel))


def compute_loss(
    model: nn.Module,
    audio: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    amp: Amp,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step's loss and the logits used for the accuracy (margin on ``y_a``).

    The log-mel of the clean batch is computed without gradients (it has no parameters). For
    ArcMix and Noisy-ArcMix, waveform and log-mel are then mixed with one lambda and one
    permutation per batch, the log-mel in the dB domain (not recomputed from the mixed
    waveform), as the released code does; ArcFace trains on the clean batch.
    """
    net = unwrap(model)
    with torch.no_grad():
        logmel = net.logmel(audio)
    enabled, dtype = amp
    if cfg.loss == "arcface":
        y_a, y_b, lam = y, y, 1.0
    else:
        audio, logmel, y_a, y_b, lam = losses.mixup(audio, logmel, y, cfg.alpha, generator)
        y_b = y_b.to(y.device)
    with torch.autocast(device_type=audio.device.type, dtype=dtype, enabled=enabled):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            cosine = model(audio, logmel)
        else:
            cosine = net.head_cosine(net.backbone(audio, logmel))
    if cfg.loss == "arcface":
        loss = losses.arcface(cosine, y_a, cfg.s, cfg.m)
    elif cfg.loss == "arcmix":
        loss = losses.arcmix(cosine, y_a, y_b, lam, cfg.s, cfg.m)
    else:
        loss = losses.noisy_arcmix(cosine, y_a, y_b, lam, cfg.s, cfg.m)
    logits = losses.margin_logits(cosine.detach(), y_a, cfg.s, cfg.m)
    return loss, logits


__all__ = [
    "BN_SUBSET_STREAM",
    "MIXUP_STREAM",
    "SHUFFLE_STREAM",
    "Amp",
    "BackboneForward",
    "amp_for",
    "compute_loss",
    "epoch_generator",
    "seed_everything",
    "unwrap",
]
