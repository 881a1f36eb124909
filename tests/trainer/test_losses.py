"""Each loss on a small handmade cosine matrix against values worked out here (issue: foundation)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import arcface, arcmix, mixup, noisy_arcmix

S, M = 30.0, 0.7
TH = math.cos(math.pi - M)  # -0.7648...
MM = math.sin(math.pi - M) * M  # 0.4509...

COS = [[0.8, 0.1, -0.2], [-0.9, 0.3, 0.0]]  # row 1 on class 0 is below cos(pi - m): fallback


def margin(c: float) -> float:
    if c > TH:
        return c * math.cos(M) - math.sqrt(1 - c * c) * math.sin(M)
    return c - MM


def ce(logits: list[float], target: int) -> float:
    peak = max(logits)
    return -(logits[target] - peak - math.log(sum(math.exp(v - peak) for v in logits)))


def arcface_row(row: list[float], y: int) -> list[float]:
    return [S * (margin(c) if j == y else c) for j, c in enumerate(row)]


def test_fallback_branch_value() -> None:
    assert TH > -0.9
    assert margin(-0.9) == pytest.approx(-0.9 - MM)


def test_arcface() -> None:
    y = [0, 0]
    expected = sum(ce(arcface_row(r, t), t) for r, t in zip(COS, y)) / 2
    got = arcface(torch.tensor(COS), torch.tensor(y), S, M)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_arcmix() -> None:
    y_a, y_b, lam = [0, 0], [1, 2], 0.3
    a = sum(ce(arcface_row(r, t), t) for r, t in zip(COS, y_a)) / 2
    b = sum(ce(arcface_row(r, t), t) for r, t in zip(COS, y_b)) / 2
    got = arcmix(torch.tensor(COS), torch.tensor(y_a), torch.tensor(y_b), lam, S, M)
    assert got.item() == pytest.approx(lam * a + (1 - lam) * b, rel=1e-5)


def test_noisy_arcmix_margin_stays_on_y_a() -> None:
    y_a, y_b, lam = [0, 0], [1, 2], 0.3
    rows = [arcface_row(r, t) for r, t in zip(COS, y_a)]  # one Z, margin on y_a
    a = sum(ce(z, t) for z, t in zip(rows, y_a)) / 2
    b = sum(ce(z, t) for z, t in zip(rows, y_b)) / 2
    got = noisy_arcmix(torch.tensor(COS), torch.tensor(y_a), torch.tensor(y_b), lam, S, M)
    assert got.item() == pytest.approx(lam * a + (1 - lam) * b, rel=1e-5)
    # and it differs from ArcMix, whose second term carries the margin on y_b
    other = arcmix(torch.tensor(COS), torch.tensor(y_a), torch.tensor(y_b), lam, S, M)
    assert abs(got.item() - other.item()) > 1e-3


@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0])
def test_noisy_arcmix_reduces_to_arcface_when_labels_agree(lam: float) -> None:
    y = torch.tensor([0, 1])
    got = noisy_arcmix(torch.tensor(COS), y, y, lam, S, M)
    assert got.item() == pytest.approx(arcface(torch.tensor(COS), y, S, M).item(), rel=1e-6)


def test_mixup_one_lambda_and_one_permutation_for_both_inputs() -> None:
    torch.manual_seed(0)
    audio = torch.randn(6, 32)
    logmel = torch.randn(6, 4, 5)
    y = torch.arange(6)
    gen = torch.Generator().manual_seed(123)
    audio_mix, logmel_mix, y_a, y_b, lam = mixup(audio, logmel, y, alpha=0.5, generator=gen)
    assert 0.0 <= lam <= 1.0
    assert torch.equal(y_a, y)
    index = y_b  # labels are the indices, so y_b is the permutation
    assert sorted(index.tolist()) == list(range(6))
    torch.testing.assert_close(audio_mix, lam * audio + (1 - lam) * audio[index])
    torch.testing.assert_close(logmel_mix, lam * logmel + (1 - lam) * logmel[index])
    again = mixup(audio, logmel, y, alpha=0.5, generator=torch.Generator().manual_seed(123))
    assert again[4] == lam and torch.equal(again[3], y_b)


def test_mixup_lambda_follows_beta() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.zeros(4, 2)
    lams = [mixup(x, x, torch.arange(4), alpha=0.5, generator=gen)[4] for _ in range(2000)]
    mean = sum(lams) / len(lams)
    var = sum((v - mean) ** 2 for v in lams) / len(lams)
    assert mean == pytest.approx(0.5, abs=0.03)  # Beta(0.5, 0.5): mean 1/2, variance 1/8
    assert var == pytest.approx(0.125, abs=0.015)
