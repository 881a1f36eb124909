"""TASTgram-MFN structure, the per-class score and the float32 head (issue: foundation)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import margin_logits, noisy_arcmix
from trainer.model import TASTgramMFN, tagram

WINDOW = 160000


@pytest.fixture(scope="module")
def model() -> TASTgramMFN:
    torch.manual_seed(0)
    return TASTgramMFN(41).eval()


def test_parameter_count_without_fc_out() -> None:
    assert sum(p.numel() for p in TASTgramMFN(41).parameters()) == 1_156_566
    # STgram-MFN ablation: 2 input channels, so 576 fewer conv1 weights... minus TAgram's channel.
    assert sum(p.numel() for p in TASTgramMFN(41, arch="stgram").parameters()) == 1_156_566 - 576


def test_tagram_on_a_handmade_tensor() -> None:
    x = torch.tensor([[[1.0, -2.0, 0.5], [3.0, -4.0, 0.5]]])  # (B=1, F=2, T=3)
    gate = torch.sigmoid(torch.tensor([3.0 + 2.0, -2.0 + -3.0, 0.5 + 0.5]))
    expected = gate * x
    torch.testing.assert_close(tagram(x), expected)


def test_shapes_and_embedding(model: TASTgramMFN) -> None:
    audio = 0.1 * torch.randn(2, WINDOW)
    with torch.no_grad():
        logmel = model.logmel(audio)
        emb = model.embed(audio)
        cos = model.cosine(audio)
        scores, emb2 = model(audio)
    assert logmel.shape == (2, 128, 313)
    assert emb.shape == (2, 128) and cos.shape == (2, 41) and scores.shape == (2, 41)
    torch.testing.assert_close(emb, emb2)
    assert (cos.abs() < 1).all()
    assert (scores >= 0).all()


def test_scores_equal_cross_entropy_with_margin_on_each_class(model: TASTgramMFN) -> None:
    audio = 0.1 * torch.randn(3, WINDOW)
    with torch.no_grad():
        cos = model.cosine(audio)
        scores = model.scores_from_cosine(cos)
        for c in range(cos.shape[1]):
            y = torch.full((3,), c, dtype=torch.long)
            expected = F.cross_entropy(margin_logits(cos, y, 30.0, 0.7), y, reduction="none")
            torch.testing.assert_close(scores[:, c], expected, atol=1e-5, rtol=1e-5)


def test_scores_keep_resolution_when_the_target_dominates() -> None:
    """A normal clip's target probability is close to 1: the score must not cancel to 0."""
    model = TASTgramMFN(3)
    cos = torch.tensor([[0.999, -0.3, -0.2]])
    got = model.scores_from_cosine(cos)[0, 0].item()
    phi = math.cos(math.acos(0.999) + 0.7)
    expected = math.log1p((math.exp(30 * -0.3) + math.exp(30 * -0.2)) / math.exp(30 * phi))
    assert got == pytest.approx(expected, rel=1e-4)
    assert got > 0


def test_backward_gives_finite_gradients_everywhere() -> None:
    torch.manual_seed(1)
    model = TASTgramMFN(5).train()
    audio = 0.1 * torch.randn(4, WINDOW)
    y = torch.tensor([0, 1, 2, 3])
    logmel = model.logmel(audio)
    loss = noisy_arcmix(model.cosine(audio, logmel), y, y.flip(0), 0.3)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cosine_of_one_under_autocast_gives_no_nan(dtype: torch.dtype) -> None:
    model = TASTgramMFN(4)
    embedding = model.arc_weight.detach()[:2].clone() * 3.0  # exactly on the class centres
    with torch.autocast(device_type="cpu", dtype=dtype):
        cos = model.head_cosine(embedding)
        scores = model.scores_from_cosine(cos)
        loss = noisy_arcmix(cos, torch.tensor([0, 1]), torch.tensor([1, 0]), 0.6)
    assert cos.dtype == torch.float32
    assert torch.isfinite(cos).all() and torch.isfinite(scores).all() and torch.isfinite(loss)
    assert cos[0, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_unknown_architecture_is_rejected() -> None:
    with pytest.raises(ValueError, match="architecture"):
        TASTgramMFN(3, arch="resnet")  # type: ignore[arg-type]
