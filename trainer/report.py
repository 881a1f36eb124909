"""The evaluation table in the paper's layout (types as rows: AUC, pAUC, mAUC), as markdown.

Percentages with two decimals, like the paper. With ``compare_paper`` the published
TASTgram-MFN + Noisy-ArcMix numbers (the authors' README, equal to the paper's table; DCASE 2020
development test set) sit beside ours, so a
reproduction can be judged at a glance.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from trainer.metrics import EvaluationResult

logger = logging.getLogger(__name__)

PAPER_TASTGRAM_NOISY_ARCMIX: dict[str, tuple[float, float, float]] = {
    "fan": (98.32, 95.34, 92.67),
    "pump": (95.44, 85.99, 91.17),
    "slider": (99.53, 97.50, 97.96),
    "valve": (99.95, 99.74, 99.89),
    "ToyCar": (96.76, 90.11, 88.81),
    "ToyConveyor": (77.90, 67.15, 68.18),
    "Average": (94.65, 89.31, 89.78),
}
"""AUC, pAUC, mAUC (%) of TASTgram-MFN + Noisy-ArcMix on the DCASE 2020 development test set."""

SCORE_TITLES = {
    "ce": "ce (cross-entropy with the margin on the clip's class, the paper's score)",
    "knn": "knn (mean cosine distance to the k nearest training-normal embeddings)",
    "ensemble": "ensemble (mean of the rank-normalised ce and knn scores)",
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.2f}"


def score_table(result: EvaluationResult, compare_paper: bool = False) -> str:
    """One markdown table: a row per machine type, then the arithmetic and harmonic averages."""
    head = "| type | AUC | pAUC | mAUC |"
    rule = "|---|---:|---:|---:|"
    if compare_paper:
        head += " paper AUC | paper pAUC | paper mAUC |"
        rule += "---:|---:|---:|"
    lines = [head, rule]

    def paper(name: str) -> str:
        if not compare_paper:
            return ""
        p = PAPER_TASTGRAM_NOISY_ARCMIX.get(name)
        return " - | - | - |" if p is None else f" {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} |"

    for t in result.types:
        lines.append(f"| {t.machine_type} | {_pct(t.auc)} | {_pct(t.pauc)} | {_pct(t.mauc)} |" + paper(t.machine_type))
    a, h = result.arithmetic, result.harmonic
    lines.append(f"| **Average** (arithmetic) | {_pct(a['auc'])} | {_pct(a['pauc'])} | {_pct(a['mauc'])} |" + paper("Average"))
    lines.append(
        f"| Average (harmonic) | {_pct(h['auc'])} | {_pct(h['pauc'])} | {_pct(h['mauc'])} |"
        + (" - | - | - |" if compare_paper else "")
    )
    return "\n".join(lines)


def id_table(result: EvaluationResult) -> str:
    """Per machine ID: AUC, pAUC and the clip counts behind them."""
    lines = ["| type | ID | AUC | pAUC | normal | anomalous |", "|---|---|---:|---:|---:|---:|"]
    for t in result.types:
        for r in t.ids:
            lines.append(f"| {t.machine_type} | {r.machine_id} | {_pct(r.auc)} | {_pct(r.pauc)} | {r.n_normal} | {r.n_anomaly} |")
    return "\n".join(lines)


def markdown_report(results: Mapping[str, EvaluationResult], compare_paper: bool = False) -> str:
    """Every evaluated score's table (ce first), then a compact side-by-side AUC summary."""
    parts: list[str] = []
    for kind, result in results.items():
        parts.append(f"### Score: {SCORE_TITLES.get(kind, kind)}\n\n{score_table(result, compare_paper)}")
    if len(results) > 1:
        kinds = list(results)
        head = "| type | " + " | ".join(f"{k} AUC" for k in kinds) + " |"
        rule = "|---|" + "---:|" * len(kinds)
        lines = [head, rule]
        first = results[kinds[0]]
        for t in first.types:
            cells = []
            for k in kinds:
                match = [u for u in results[k].types if u.machine_type == t.machine_type]
                cells.append(_pct(match[0].auc) if match else "-")
            lines.append(f"| {t.machine_type} | " + " | ".join(cells) + " |")
        lines.append("| **Average** | " + " | ".join(_pct(results[k].arithmetic["auc"]) for k in kinds) + " |")
        parts.append("### AUC side by side\n\n" + "\n".join(lines))
    first_kind = next(iter(results))
    parts.append(f"### Per machine ID ({first_kind})\n\n{id_table(results[first_kind])}")
    return "\n\n".join(parts) + "\n"


__all__ = ["PAPER_TASTGRAM_NOISY_ARCMIX", "id_table", "markdown_report", "score_table"]
