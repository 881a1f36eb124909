"""Evaluation figures: per machine type, ROC curves per ID and normal/anomaly score histograms.

matplotlib with the Agg backend (no display on a training server). One PNG per type, one row
per evaluated score, so the ce and knn scores can be compared by eye: where the histograms
overlap is where the AUC is lost.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trainer.metrics import roc_curve

logger = logging.getLogger(__name__)


def plot_types(report: dict, out_dir: str | Path) -> list[Path]:
    """Write ``roc_<type>.png`` for each machine type of an ``evaluate`` report; returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    clips = report["clips"]
    kinds = list(report["scores"])
    paths: list[Path] = []
    for mtype in sorted({c["type"] for c in clips}):
        rows = [c for c in clips if c["type"] == mtype]
        ids = sorted({c["id"] for c in rows})
        fig, axes = plt.subplots(len(kinds), 2, figsize=(10, 3.6 * len(kinds)), squeeze=False)
        for r, kind in enumerate(kinds):
            ax_roc, ax_hist = axes[r]
            for mid in ids:
                sel = [c for c in rows if c["id"] == mid]
                y = np.array([c["label"] for c in sel])
                s = np.array([c[kind] for c in sel])
                if y.min() == y.max():
                    continue
                fpr, tpr = roc_curve(y, s)
                ax_roc.plot(fpr, tpr, label=mid)
            ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
            ax_roc.axvline(0.1, color="grey", lw=0.5, ls=":")
            ax_roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"{mtype}: ROC ({kind})")
            ax_roc.legend(fontsize=7, loc="lower right")
            s_all = np.array([c[kind] for c in rows])
            y_all = np.array([c["label"] for c in rows])
            bins = np.histogram_bin_edges(s_all, bins=40)
            ax_hist.hist(s_all[y_all == 0], bins=bins, alpha=0.6, label="normal")
            ax_hist.hist(s_all[y_all == 1], bins=bins, alpha=0.6, label="anomalous")
            ax_hist.set(xlabel=f"{kind} score", ylabel="clips", title=f"{mtype}: score histogram ({kind})")
            ax_hist.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"roc_{mtype}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


__all__ = ["plot_types"]
