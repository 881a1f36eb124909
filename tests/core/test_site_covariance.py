"""Ledoit-Wolf shrinkage written in numpy, against its closed form and against sklearn."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.core.site.covariance import ledoit_wolf, stable_inverse

pytestmark = pytest.mark.device


def _closed_form(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf (2004), lemmas 3.2-3.4, written out with loops over the samples."""
    n, p = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    m = np.trace(s) / p
    d2 = np.linalg.norm(s - m * np.eye(p), "fro") ** 2 / p
    b_bar2 = sum(np.linalg.norm(np.outer(row, row) - s, "fro") ** 2 / p for row in xc) / n**2
    b2 = min(b_bar2, d2)
    a = b2 / d2
    return a * m * np.eye(p) + (1 - a) * s, a


@pytest.mark.parametrize(("n", "p"), [(40, 5), (12, 30), (200, 42)])
def test_ledoit_wolf_matches_the_closed_form(n: int, p: int) -> None:
    rng = np.random.default_rng(n + p)
    x = rng.standard_normal((n, p)) @ rng.standard_normal((p, p)) + 3.0
    cov, shrink = ledoit_wolf(x)
    ref_cov, ref_shrink = _closed_form(x)
    assert shrink == pytest.approx(ref_shrink, rel=1e-9)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-9, atol=1e-12)
    assert 0.0 <= shrink <= 1.0


def test_ledoit_wolf_matches_sklearn() -> None:
    sklearn_cov = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(7)
    for n, p in ((50, 10), (15, 40), (300, 42)):
        x = rng.standard_normal((n, p)) * rng.uniform(0.1, 5.0, p)
        ref = sklearn_cov.LedoitWolf().fit(x)
        cov, shrink = ledoit_wolf(x)
        assert shrink == pytest.approx(ref.shrinkage_, rel=1e-8)
        np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-8, atol=1e-12)


def test_more_indicators_than_windows_stay_invertible() -> None:
    x = np.random.default_rng(1).standard_normal((8, 42))  # rank 7 sample covariance
    cov, shrink = ledoit_wolf(x)
    assert shrink > 0.0
    prec = stable_inverse(cov)
    np.testing.assert_allclose(prec @ cov, np.eye(42), atol=1e-8)


def test_constant_columns_do_not_break_the_inverse() -> None:
    x = np.zeros((20, 3))
    x[:, 0] = np.random.default_rng(2).standard_normal(20)
    prec = stable_inverse(ledoit_wolf(x)[0])
    assert np.all(np.isfinite(prec))
