"""knn score, rank normalisation and the ensemble on handmade vectors (numpy only: device)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.device


def test_scoring_imports_no_torch(no_torch_guard):
    import importlib

    import edge_asd.core.scoring

    importlib.reload(edge_asd.core.scoring)


def test_knn_mean_cosine_distance_of_the_k_nearest():
    from edge_asd.core.scoring import knn_scores

    refs = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # Unnormalised query along x: distances 0, 1, 2, 1 -> nearest two: 0 and 1.
    d = knn_scores(np.array([[3.0, 0.0]]), refs, k=2)
    assert d.shape == (1,)
    assert d[0] == pytest.approx(0.5)
    assert knn_scores(np.array([3.0, 0.0]), refs, k=1)[0] == pytest.approx(0.0, abs=1e-7)
    # 45 degrees between x and y: cos = 0.7071 to both -> distance 1 - 0.7071.
    d45 = knn_scores(np.array([[1.0, 1.0]]), refs, k=2)[0]
    assert d45 == pytest.approx(1 - np.sqrt(0.5), abs=1e-6)
    # k larger than the reference set: all references are used.
    assert knn_scores(np.array([[1.0, 0.0]]), refs, k=10)[0] == pytest.approx(1.0)


def test_knn_rejects_bad_shapes():
    from edge_asd.core.scoring import knn_scores

    with pytest.raises(ValueError):
        knn_scores(np.ones((1, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError):
        knn_scores(np.ones((1, 2)), np.zeros((0, 2)))


def test_rank_normalise_is_an_interpolated_empirical_cdf():
    from edge_asd.core.scoring import rank_normalise

    ref = np.array([1.0, 2.0, 3.0, 4.0])
    # Positions (i + 0.5) / n: 0.125, 0.375, 0.625, 0.875.
    got = rank_normalise(np.array([1.0, 2.5, 4.0]), ref)
    assert got == pytest.approx([0.125, 0.5, 0.875])
    # Outside the range: strictly monotone tails inside (0, 1).
    tails = rank_normalise(np.array([-10.0, 0.0, 5.0, 50.0]), ref)
    assert 0 < tails[0] < tails[1] < 0.125
    assert 0.875 < tails[2] < tails[3] < 1.0
    # Ties share their mean position; unsorted input is sorted.
    assert rank_normalise(2.0, np.array([2.0, 1.0, 2.0, 3.0])) == pytest.approx(0.5)


def test_ensemble_is_the_mean_of_both_ranks():
    from edge_asd.core.scoring import ensemble, rank_normalise

    ref_ce = np.array([0.1, 0.2, 0.3, 0.4])
    ref_knn = np.array([0.01, 0.02, 0.03, 0.04])
    got = ensemble(np.array([0.25, 0.4]), np.array([0.01, 0.04]), ref_ce, ref_knn)
    assert got == pytest.approx([(0.5 + 0.125) / 2, 0.875])
    assert got == pytest.approx(0.5 * (rank_normalise([0.25, 0.4], ref_ce) + rank_normalise([0.01, 0.04], ref_knn)))
    # A clip far above both references scores above every normal one.
    assert ensemble(10.0, 1.0, ref_ce, ref_knn) > ensemble(0.4, 0.04, ref_ce, ref_knn)


def test_a_rank_table_made_once_gives_rank_normalise_s_numbers():
    """The site scores keep one table per component instead of finding the tie groups per window."""
    from edge_asd.core.scoring import RankTable, rank_normalise
    from edge_asd.core.site.normalise import SurpriseFit

    rng = np.random.default_rng(4)
    ref = np.sort(np.round(rng.gamma(2.0, 1.0, 300), 1))  # rounded: tie groups
    values = np.concatenate([[-5.0, ref[0], ref[-1], 50.0, np.nan], rng.gamma(2.0, 1.0, 50)])
    table = RankTable.of(ref)
    np.testing.assert_array_equal(table.normalise(values), rank_normalise(values, ref))
    np.testing.assert_array_equal(RankTable.of(ref[::-1]).normalise(values), table.normalise(values))  # unsorted
    with pytest.raises(ValueError):
        RankTable.of(np.array([]))
    fit = SurpriseFit(ref)  # the empirical tail: its table is made at the first call and kept
    first = fit.surprise(values[:-1])
    assert fit._rank is not None
    np.testing.assert_array_equal(fit.surprise(values[:-1]), first)
    expected = -np.log10(np.maximum(np.clip(1.0 - rank_normalise(values[:-1], ref), 0.0, 1.0), 1e-50))
    np.testing.assert_allclose(first, np.clip(expected, 0.0, 50.0), rtol=0, atol=0)


def test_knn_against_a_bank_normalised_once_is_the_same():
    from edge_asd.core.scoring import knn_scores, l2_normalise

    rng = np.random.default_rng(5)
    bank = rng.standard_normal((40, 16)).astype(np.float32) * 3.0
    emb = rng.standard_normal((3, 16)).astype(np.float32)
    unit = l2_normalise(bank)
    np.testing.assert_array_equal(knn_scores(emb, unit, 4, references_normalised=True), knn_scores(emb, bank, 4))
