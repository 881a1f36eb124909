"""The DCASE metrics equal sklearn's and aggregate per type and over types as the paper does."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from trainer.metrics import evaluate_scores, harmonic_mean, roc_auc


def test_auc_and_pauc_equal_sklearn_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(6, 60))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        s = rng.normal(size=n) + 0.7 * y
        if trial % 3 == 0:
            s = np.round(s, 1)  # ties
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        for max_fpr in (0.1, 0.3, 0.5):
            assert roc_auc(y, s, max_fpr) == pytest.approx(roc_auc_score(y, s, max_fpr=max_fpr), abs=1e-12)


def test_handmade_auc_values():
    # 4 normals, 2 anomalies; one anomaly ranks below one normal: 7 of 8 pairs ordered.
    y = [0, 0, 0, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.9, 0.8, 1.0]
    assert roc_auc(y, s) == pytest.approx(7 / 8)
    assert roc_auc([0, 1], [0.0, 1.0], 0.1) == pytest.approx(1.0)
    assert roc_auc([0, 1], [1.0, 0.0]) == pytest.approx(0.0)


def test_roc_needs_both_classes():
    with pytest.raises(ValueError):
        roc_auc([0, 0], [0.1, 0.2])


def test_aggregation_per_type_and_average_rows():
    # fan: id_00 perfect, id_02 half the pairs wrong; pump: id_00 perfect only.
    types, ids, labels, scores = [], [], [], []

    def add(t, i, y, s):
        types.extend([t] * len(y))
        ids.extend([i] * len(y))
        labels.extend(y)
        scores.extend(s)

    add("fan", "id_00", [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    add("fan", "id_02", [0, 0, 1, 1], [0.1, 0.8, 0.2, 0.9])
    add("pump", "id_00", [0, 0, 0, 1], [0.1, 0.2, 0.3, 0.9])
    res = evaluate_scores(types, ids, labels, scores)
    fan, pump = res.types  # the paper's order: fan before pump
    assert fan.machine_type == "fan" and pump.machine_type == "pump"
    fan02 = roc_auc_score([0, 0, 1, 1], [0.1, 0.8, 0.2, 0.9])
    assert fan02 == pytest.approx(0.75)
    assert fan.auc == pytest.approx((1.0 + 0.75) / 2)
    assert fan.mauc == pytest.approx(0.75)
    p00 = roc_auc_score([0, 0, 1, 1], [0.1, 0.8, 0.2, 0.9], max_fpr=0.1)
    assert fan.pauc == pytest.approx((1.0 + p00) / 2)
    assert pump.auc == pump.mauc == pump.pauc == pytest.approx(1.0)
    assert res.arithmetic["auc"] == pytest.approx((0.875 + 1.0) / 2)
    assert res.arithmetic["mauc"] == pytest.approx((0.75 + 1.0) / 2)
    assert res.harmonic["auc"] == pytest.approx(2 / (1 / 0.875 + 1 / 1.0))
    assert res.harmonic["mauc"] == pytest.approx(2 / (1 / 0.75 + 1.0))
    d = res.to_dict()
    assert d["average_arithmetic"]["auc"] == pytest.approx(0.9375)
    assert len(d["types"][0]["ids"]) == 2


def test_paper_average_row_reproduces_the_published_numbers():
    aucs = [98.32, 95.44, 99.53, 99.95, 96.76, 77.90]
    assert sum(aucs) / 6 == pytest.approx(94.65, abs=0.005)
    assert 100 * harmonic_mean([a / 100 for a in aucs]) == pytest.approx(93.94, abs=0.01)


def test_ids_without_both_labels_are_skipped():
    res = evaluate_scores(["fan"] * 4, ["id_00", "id_00", "id_01", "id_01"], [0, 1, 0, 0], [0.1, 0.9, 0.2, 0.3])
    assert [r.machine_id for r in res.types[0].ids] == ["id_00"]
    assert math.isclose(res.types[0].auc, 1.0)
