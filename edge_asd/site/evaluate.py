"""``evaluate-site``: enrol from a site's normal clips, score its labelled test clips, report AUCs.

This is how a user judges site learning on their own recordings (and how it is measured on
held-out data): the enrolment is exactly what ``enrol`` fits (same hold-out, fusion and
threshold), and every test clip is scored like a window on the device. A test clip gives
non-overlapping 10 s windows (a clip of 10-11 s, as in DCASE: one window, its first 10 s;
shorter: zero-padded); a longer clip's score is the **maximum** over its windows, per component
and fused, because a fault heard in part of a recording makes the recording anomalous.

The report has AUC and pAUC (DCASE, max FPR 0.1) for the fused score under ``fused`` and for
each component the enrolment has under ``components`` (``indicators``, ``indicators_knn``,
``spectrum``, ``envelope``, ``knn``, and ``ce`` with classes), the enrolment summary, and
every clip's scores.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.core.atomic import atomic_write_text
from edge_asd.core.constants import WINDOW_SECONDS
from edge_asd.core.site.enrolment import DEFAULT_FALSE_ALARM_RATE, Enrolment, SiteScores
from edge_asd.core.site.labels import LABEL_NAMES, labelled_clips
from edge_asd.core.site.metrics import PAUC_MAX_FPR, auc, pauc
from edge_asd.site.enrol import enrol_files, file_segments, normal_files
from edge_asd.site.features import extract
from engines.bundle import Bundle
from engines.runtime.base import Runtime

logger = logging.getLogger(__name__)

REPORT = "report.json"
POOLING = "max over the non-overlapping 10 s windows of a clip (clips under 20 s: one window, the first 10 s)"


@dataclass
class SiteReport:
    """Metrics per component and fused, per-clip scores, and the enrolment they came from."""

    metrics: dict[str, dict[str, float]]
    """``{"fused": {"auc", "pauc"}, "<component>": {...}}``."""
    clips: list[dict[str, Any]]
    enrolment: Enrolment
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info,
            "pooling": POOLING,
            "pauc_max_fpr": PAUC_MAX_FPR,
            "fused": self.metrics["fused"],
            "components": {k: v for k, v in self.metrics.items() if k != "fused"},
            "enrolment": self.enrolment.summary(),
            "clips": self.clips,
        }


def _pooled(scores: SiteScores, rows: np.ndarray) -> dict[str, float]:
    out = {"fused": float(scores.fused[rows].max())}
    for name, comp in scores.components.items():
        out[name] = float(comp.raw[rows].max())
        out[f"{name}_surprise"] = float(comp.surprise[rows].max())
    return out


def score_clips(
    enrolment: Enrolment,
    clips: Sequence[tuple[Path, int]],
    runtime: Runtime,
    *,
    class_indices: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Per test clip: file, label, fused score and each component (raw and surprise), pooled by max."""
    paths = [p for p, _ in clips]
    feats = extract(
        file_segments(paths), runtime, hop_s=WINDOW_SECONDS, class_indices=class_indices, progress=progress
    )
    scores = enrolment.score(
        feats.indicators, feats.embeddings if "knn" in enrolment.components else None, feats.ce, feats.profiles
    )
    by_segment: dict[str, list[int]] = {}
    for i, ref in enumerate(feats.refs):
        by_segment.setdefault(ref.segment, []).append(i)
    out = []
    for path, label in clips:
        rows = np.asarray(by_segment[str(path)])
        pooled = _pooled(scores, rows)
        top = int(rows[np.argmax(scores.fused[rows])])
        out.append({
            "file": str(path),
            "label": LABEL_NAMES[label],
            "windows": int(rows.size),
            **pooled,
            "anomalous": bool(pooled["fused"] > enrolment.threshold),
            "explanation": enrolment.explain(feats.indicators[top]).summary,
        })  # fmt: skip
    return out


def metrics_of(clips: Sequence[dict[str, Any]], components: Sequence[str]) -> dict[str, dict[str, float]]:
    """AUC and pAUC of the fused score and of each component's raw score."""
    labels = np.array([c["label"] == LABEL_NAMES[1] for c in clips], dtype=int)
    out = {}
    for name in ("fused", *components):
        values = np.array([c[name] for c in clips], dtype=np.float64)
        out[name] = {"auc": auc(labels, values), "pauc": pauc(labels, values)}
    return out


def evaluate_site(
    normal_dir: Path,
    test_dir: Path,
    bundle: Bundle,
    runtime: Runtime,
    *,
    out_dir: Path | None = None,
    class_indices: Sequence[int] | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    hop_s: float = 1.0,
    stream: str = "site",
    progress: Callable[[str, int], None] | None = None,
) -> SiteReport:
    """Enrol from ``normal_dir``, score ``test_dir``'s labelled clips; write ``out_dir/report.json``.

    The enrolment is kept under ``out_dir/enrolment/`` for inspection (``out_dir`` None: in
    memory only).
    """
    normal_dir, test_dir = Path(normal_dir), Path(test_dir)
    normals = normal_files(normal_dir)
    test, unlabelled = labelled_clips(test_dir)
    enrolment = enrol_files(
        normals, bundle, runtime, stream=stream, kind="folder", false_alarm_rate=false_alarm_rate,
        class_indices=class_indices, hop_s=hop_s,
        progress=None if progress is None else (lambda n: progress("enrol", n)),
    )  # fmt: skip
    clips = score_clips(
        enrolment, test, runtime, class_indices=class_indices,
        progress=None if progress is None else (lambda n: progress("test", n)),
    )  # fmt: skip
    metrics = metrics_of(clips, enrolment.components)
    info = {
        "normal_dir": str(normal_dir),
        "test_dir": str(test_dir),
        "bundle": str(bundle.path),
        "bundle_sha": enrolment.meta.get("bundle_sha"),
        "classes": [bundle.classes[i] for i in class_indices] if class_indices else [],
        "normal_clips": len(normals),
        "test_clips": {"normal": sum(c["label"] == "normal" for c in clips),
                       "anomaly": sum(c["label"] == "anomaly" for c in clips),
                       "unlabelled": len(unlabelled)},
    }  # fmt: skip
    report = SiteReport(metrics, clips, enrolment, info)
    if out_dir is not None:
        out_dir = Path(out_dir)
        enrolment.save(out_dir / "enrolment")
        atomic_write_text(out_dir / REPORT, json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    return report


__all__ = ["POOLING", "REPORT", "SiteReport", "evaluate_site", "metrics_of", "score_clips"]
