"""The model learns: Noisy-ArcMix on a small synthetic set, about 8 minutes on 2 CPU cores.

The shared run of ``tests/fixtures/training.py`` (2 types x 2 IDs x 24 training clips, 12 epochs)
is trained once per artifacts folder and reused by other tests. What is asserted, and why
(measured figures in docs/training.md):

* the classifier learns the machine IDs: held-out accuracy 1.0 and a falling training loss;
* the embeddings separate anomalies: mean test AUC over the IDs >= 0.90 with the knn score
  (measured 0.9875 for this recipe; a run of the same recipe evaluated after 7 of its 12
  epochs, before the learning rate had decayed, gave 0.87).

The paper's ce score is reported but not asserted: on this synthetic data ID classification is
so easy (validation cross-entropy < 0.001) that the ce score saturates near 0 for normal and
many anomalous clips alike (measured mean AUC 0.765; 0.63-0.81 in shorter runs).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fixtures.training import RECIPE, trained_run

pytestmark = pytest.mark.slow

KNN_TARGET_AUC = 0.90


def _mean_id_auc(report: dict, score: str) -> float:
    return float(np.mean([r["auc"] for t in report["scores"][score]["types"] for r in t["ids"]]))


def test_noisy_arcmix_learns_the_synthetic_machines(artifacts_dir):
    run = trained_run(artifacts_dir)
    report = json.loads((run / "report.json").read_text())
    print(report["markdown"])
    ids = [r for t in report["scores"]["knn"]["types"] for r in t["ids"]]
    assert len(ids) == 4
    assert _mean_id_auc(report, "knn") >= KNN_TARGET_AUC, report["markdown"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == RECIPE["train"]["epochs"]
    assert min(r["train_loss"] for r in rows[1:]) < rows[0]["train_loss"]
    assert max(r["val_acc"] for r in rows) == 1.0
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert len(thresholds["classes"]) == 4
