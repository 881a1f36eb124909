"""Decision thresholds from held-out normal scores: a gamma fit per class.

The fit itself is ``edge_asd.core.thresholds`` (numpy, shared with the device); this module
builds the run's ``thresholds.json`` from it. A threshold is needed per class because the score scale differs per
machine: a noisy pump's normal clips score higher than a quiet valve's. The held-out normal
clips of each class are too few to read a 1e-3 quantile off directly (50 clips tell you
nothing beyond the 98th percentile), so their scores are fitted with a gamma distribution,
the usual model for a positive, right-skewed anomaly score (the DCASE 2021+ baselines do the
same), and the threshold is its ``ppf(1 - false_alarm_rate)``.

Loc handling: both scores are >= 0 by construction (cross-entropy, cosine distance), so the
fit fixes ``loc`` just below the smallest observed score (a free 3-parameter MLE is unstable
on a few dozen points and can put ``loc`` far below the data, bloating the tail). With fewer
than ``MIN_FIT_CLIPS`` clips or a failed fit the threshold falls back to an empirical
quantile, with a warning, because a gamma fit to a handful of points is a guess.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.core.atomic import atomic_write_text
from edge_asd.core.scoring import DEFAULT_KNN_K, ensemble
from edge_asd.core.thresholds import (
    MIN_FIT_CLIPS,
    QUANTILES,
    empirical_quantiles,
    fit_gamma,
    gamma_threshold,
    threshold_for,
)
from trainer.config import DEFAULT_FALSE_ALARM_RATE, SCORES

logger = logging.getLogger(__name__)

SCORE_KINDS = SCORES


def calibrate(
    classes: Sequence[str],
    ce_scores: Mapping[int, np.ndarray],
    knn_scores: Mapping[int, np.ndarray],
    score: str = "ce",
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    knn_k: int = DEFAULT_KNN_K,
) -> dict[str, Any]:
    """Build the ``thresholds.json`` document (docs/architecture.md) from held-out scores.

    ``ce_scores[c]`` / ``knn_scores[c]``: scores of class ``c``'s held-out normal clips. The
    stored ``threshold`` is for ``score``. For the ensemble, whose held-out values are by
    construction spread uniformly over [0, 1], the threshold is the ensemble value of the
    point where both component scores sit at their own fitted ``1 - p`` threshold: an
    approximation (exact only if the two scores were perfectly correlated), documented in
    docs/training.md.
    """
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    out: dict[str, Any] = {"score": score, "false_alarm_rate": float(false_alarm_rate), "knn_k": int(knn_k), "classes": {}}
    for idx, name in enumerate(classes):
        ce = np.sort(np.asarray(ce_scores.get(idx, []), dtype=np.float64))
        kn = np.sort(np.asarray(knn_scores.get(idx, []), dtype=np.float64))
        if ce.size == 0:
            logger.warning("class %s has no held-out normal clips: no threshold", name)
            continue
        thr_ce, fit_ce = threshold_for(ce, false_alarm_rate, f"{name} (ce)")
        entry: dict[str, Any] = {"n": int(ce.size), "reference": {"ce": ce.tolist(), "knn": kn.tolist()}}
        if score == "ce":
            entry.update(threshold=thr_ce, fit=fit_ce, quantiles=empirical_quantiles(ce))
        else:
            if kn.size == 0:
                logger.warning("class %s has no knn scores: no threshold", name)
                continue
            thr_kn, fit_kn = threshold_for(kn, false_alarm_rate, f"{name} (knn)")
            if score == "knn":
                entry.update(threshold=thr_kn, fit=fit_kn, quantiles=empirical_quantiles(kn))
            else:
                ens = ensemble(ce, kn, ce, kn)
                entry.update(
                    threshold=float(ensemble(thr_ce, thr_kn, ce, kn)),
                    fit={"dist": "rank-ensemble", "ce": fit_ce, "knn": fit_kn, "ce_threshold": thr_ce, "knn_threshold": thr_kn},
                    quantiles=empirical_quantiles(ens),
                )
        out["classes"][name] = entry
    return out


def write_thresholds(run_dir: str | Path, doc: Mapping[str, Any]) -> Path:
    """Write ``RUN/thresholds.json`` atomically (tmp + replace): a reader never sees half a file."""
    path = Path(run_dir) / "thresholds.json"
    return atomic_write_text(path, json.dumps(doc, indent=1))


__all__ = [
    "MIN_FIT_CLIPS",
    "QUANTILES",
    "SCORE_KINDS",
    "calibrate",
    "empirical_quantiles",
    "fit_gamma",
    "gamma_threshold",
    "threshold_for",
    "write_thresholds",
]
