"""ArcFace, ArcMix and Noisy-ArcMix, as pure functions of a cosine matrix ``(B, C)``.

With ``M(cos, y)`` = cos with ``cos(theta_y + m)`` at column y, and mixup labels ``y_a`` (the
clip) and ``y_b`` (its permuted partner), mixing weight lambda:

* ArcFace: ``CE(s * M(cos, y), y)``, no mixup;
* ArcMix: ``lambda * CE(s * M(cos, y_a), y_a) + (1 - lambda) * CE(s * M(cos, y_b), y_b)``;
* Noisy-ArcMix: ``Z = s * M(cos, y_a)``, ``lambda * CE(Z, y_a) + (1 - lambda) * CE(Z, y_b)``:
  the margin always sits on ``y_a``, whatever lambda, so the second term's target gets no
  margin while its competitor is penalised (the authors' "inconsistent angular margin").

They take cosines rather than embeddings so the model's head (float32, clamped) is the only
place that normalises, and so the tests can check each loss on a handmade matrix.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainer.model import ARCFACE_M, ARCFACE_S, margin_cosine


def margin_logits(cosine: torch.Tensor, y: torch.Tensor, s: float = ARCFACE_S, m: float = ARCFACE_M) -> torch.Tensor:
    """``s * M(cos, y)``: the logits with the angular margin on each row's label ``y`` only."""
    onehot = F.one_hot(y, cosine.shape[1]).bool()
    return s * torch.where(onehot, margin_cosine(cosine, m), cosine)


def arcface(cosine: torch.Tensor, y: torch.Tensor, s: float = ARCFACE_S, m: float = ARCFACE_M) -> torch.Tensor:
    """Batch mean of ``CE(s * M(cos, y), y)``."""
    return F.cross_entropy(margin_logits(cosine, y, s, m), y)


def arcmix(
    cosine: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float,
    s: float = ARCFACE_S,
    m: float = ARCFACE_M,
) -> torch.Tensor:
    """``lam * ArcFace(y_a) + (1 - lam) * ArcFace(y_b)``: each term with the margin on its own label."""
    return lam * arcface(cosine, y_a, s, m) + (1.0 - lam) * arcface(cosine, y_b, s, m)


def noisy_arcmix(
    cosine: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float,
    s: float = ARCFACE_S,
    m: float = ARCFACE_M,
) -> torch.Tensor:
    """``lam * CE(Z, y_a) + (1 - lam) * CE(Z, y_b)`` with one ``Z = s * M(cos, y_a)``.

    The margin sits on ``y_a`` whatever ``lam`` is: the second term's target gets no margin
    while its competitor ``y_a`` carries it (the paper's "noisy" margin). With ``y_b == y_a``
    this is ArcFace.
    """
    logits = margin_logits(cosine, y_a, s, m)
    return lam * F.cross_entropy(logits, y_a) + (1.0 - lam) * F.cross_entropy(logits, y_b)


def mixup(
    audio: torch.Tensor,
    logmel: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mix a batch with a permutation of itself: one ``lam ~ Beta(alpha, alpha)`` per batch.

    The same permutation and ``lam`` apply to the waveform and to the log-mel, which is mixed
    in the dB domain and not recomputed from the mixed waveform, as in the released code. Returns
    ``(audio_mix, logmel_mix, y_a, y_b, lam)``.
    """
    # The torch generator (or torch's global RNG) seeds the Beta draw, so one seed decides both.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    index = torch.randperm(audio.shape[0], generator=generator).to(audio.device)
    audio_mix = lam * audio + (1.0 - lam) * audio[index]
    logmel_mix = lam * logmel + (1.0 - lam) * logmel[index]
    return audio_mix, logmel_mix, y, y[index], lam
