"""Gamma calibration: a threshold near the true quantile; empirical fallback for few clips."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from scipy import stats

from trainer.calibrate import calibrate, fit_gamma, threshold_for, write_thresholds


def test_threshold_from_gamma_samples_is_near_the_true_ppf():
    a, scale = 3.0, 0.5
    x = stats.gamma.rvs(a, scale=scale, size=2000, random_state=np.random.default_rng(1))
    thr, fit = threshold_for(x, 1e-3)
    true = stats.gamma.ppf(1 - 1e-3, a, scale=scale)
    assert fit is not None and fit["dist"] == "gamma"
    assert thr == pytest.approx(true, rel=0.08)
    assert fit["shape"] > 0 and fit["scale"] > 0 and fit["loc"] <= x.min()


def test_shifted_gamma_keeps_its_location():
    x = 5.0 + stats.gamma.rvs(2.0, scale=0.2, size=3000, random_state=np.random.default_rng(2))
    thr, fit = threshold_for(x, 1e-2)
    true = 5.0 + stats.gamma.ppf(0.99, 2.0, scale=0.2)
    assert thr == pytest.approx(true, rel=0.03)


def test_too_few_clips_fall_back_to_an_empirical_quantile(caplog):
    with caplog.at_level(logging.WARNING):
        thr, fit = threshold_for(np.array([1.0, 2.0, 3.0]), 1e-3)
    assert fit is None
    assert thr == pytest.approx(np.quantile([1.0, 2.0, 3.0], 0.999))
    assert "empirical" in caplog.text
    assert fit_gamma(np.ones(20)) is None  # no spread: no fit


def test_calibrate_document_matches_the_contract(tmp_path):
    rng = np.random.default_rng(3)
    ce = {0: stats.gamma.rvs(2, scale=1, size=40, random_state=rng), 1: np.array([0.5, 0.7])}
    kn = {0: rng.uniform(0.01, 0.1, 40), 1: np.array([0.02, 0.03])}
    for score in ("ce", "knn", "ensemble"):
        doc = calibrate(["fan/id_00", "fan/id_02", "fan/id_04"], ce, kn, score=score, false_alarm_rate=1e-3, knn_k=4)
        assert doc["score"] == score and doc["knn_k"] == 4 and doc["false_alarm_rate"] == 1e-3
        assert set(doc["classes"]) == {"fan/id_00", "fan/id_02"}  # no clips: no entry
        entry = doc["classes"]["fan/id_00"]
        assert entry["n"] == 40
        assert entry["reference"]["ce"] == sorted(entry["reference"]["ce"])
        assert len(entry["reference"]["knn"]) == 40
        assert set(entry["quantiles"]) >= {"0.5", "0.99"}
        ref = entry["reference"]["ce" if score != "knn" else "knn"]
        if score == "ensemble":
            assert 0.5 < entry["threshold"] < 1.0
        else:
            assert entry["threshold"] > max(ref)  # a 1e-3 tail lies beyond 40 samples
    path = write_thresholds(tmp_path, doc)
    assert json.loads(path.read_text())["classes"]["fan/id_02"]["fit"]["dist"] == "rank-ensemble"
