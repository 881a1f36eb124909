"""The model learns: Noisy-ArcMix on a small synthetic set reaches a test AUC of 0.9 on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.train_fixture import trained_run

pytestmark = pytest.mark.slow


def test_noisy_arcmix_learns_the_synthetic_machines(artifacts_dir):
    run = trained_run(artifacts_dir)
    report = json.loads((run / "report.json").read_text())
    ids = [r for t in report["scores"]["ce"]["types"] for r in t["ids"]]
    assert len(ids) == 4
    mean_auc = float(np.mean([r["auc"] for r in ids]))
    print(report["markdown"])
    assert mean_auc >= 0.90, report["markdown"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert len(thresholds["classes"]) == 4
