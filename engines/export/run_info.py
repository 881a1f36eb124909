"""What a bundle carries over from the run besides the graphs: thresholds, figures, front end.

The device validates ``model.json`` strictly, so everything read from the run is brought into
the bundle's schema here: unknown threshold keys are dropped with a warning, long per-clip
lists of reports are left out, and non-finite numbers (JSON cannot hold them) are removed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from engines.bundle import MODEL_CPU_LOGMEL_ONNX, MODEL_CPU_ONNX, MODEL_ONNX, ClassCalibration, Thresholds
from engines.errors import ExportError

logger = logging.getLogger(__name__)


def read_json(path: Path) -> Any | None:
    """A JSON file of the run, or None when it is absent; unreadable -> ``ExportError``."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"cannot read {path}: {err}. Fix or delete the file") from err


def summarise(obj: Any, max_list: int = 64, depth: int = 0) -> Any:
    """Keep summary figures of a report and drop long per-clip lists (the bundle stays small)."""
    if depth > 6:
        return None
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            summary = summarise(value, max_list, depth + 1)
            if summary is not None:
                out[str(key)] = summary
        return out
    if isinstance(obj, list):
        if len(obj) > max_list:
            return None
        return [summarise(v, max_list, depth + 1) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def training_figures(run_dir: Path) -> dict[str, Any]:
    """The last and the kept ("best") epoch lines of ``RUN/metrics.jsonl``.

    The kept epoch is the last line the run marked ``"best": true`` (chosen by the run's own
    selection rule, see ``trainer.selection``); lines of runs that did not mark it fall back to
    the lowest validation loss.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: skipping a line that is not JSON (a run interrupted mid-write?)", path)
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return {}
    figures: dict[str, Any] = {"epochs": len(rows), "last": summarise(rows[-1])}
    marked = [r for r in rows if r.get("best") is True]
    if marked:
        figures["best"] = summarise(marked[-1])
        figures["best_by"] = str(marked[-1].get("selection") or "best")
        return figures
    key = next((k for k in ("val_loss", "valid_loss", "val/loss") if any(k in r for r in rows)), None)
    if key is not None:
        candidates = [r for r in rows if isinstance(r.get(key), (int, float))]
        if candidates:
            figures["best"] = summarise(min(candidates, key=lambda r: r[key]))
            figures["best_by"] = key
    return figures


def read_thresholds(run_dir: Path, classes: list[str]) -> Thresholds | None:
    """``RUN/thresholds.json`` as the bundle's thresholds block (unknown keys dropped, with a warning)."""
    doc = read_json(run_dir / "thresholds.json")
    if doc is None:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), dict):
        raise ExportError(f"{run_dir / 'thresholds.json'} has no 'classes' object: run `edge-asd calibrate-run` again")
    known = set(ClassCalibration.model_fields)
    per_class: dict[str, ClassCalibration] = {}
    for name, entry in doc["classes"].items():
        if name not in classes:
            logger.warning("thresholds.json: class %s is not in the run's classes: dropped", name)
            continue
        dropped = sorted(set(entry) - known)
        if dropped:
            logger.warning("thresholds.json: class %s: keys %s not carried into the bundle", name, dropped)
        if "threshold" not in entry:
            logger.warning("thresholds.json: class %s has no threshold: dropped", name)
            continue
        per_class[name] = ClassCalibration.model_validate({k: v for k, v in entry.items() if k in known})
    return Thresholds(
        score=doc.get("score", "ce"),
        false_alarm_rate=doc.get("false_alarm_rate"),
        knn_k=doc.get("knn_k"),
        classes=per_class,
    )


def frontend_parameters() -> dict[str, Any]:
    """Front-end parameters as recorded in model.json (the device checks sample rate and window,
    and runs ``model_cpu_logmel.onnx`` only when its own numpy front end has these parameters)."""
    from edge_asd.core.logmel import front_end_parameters

    return {
        **front_end_parameters(),
        # where each graph's log-mel comes from; "input": the device's streaming numpy front
        # end (edge_asd.core.logmel) feeds the graph's `logmel` input
        "lowering": {MODEL_ONNX: "conv", MODEL_CPU_ONNX: "stft", MODEL_CPU_LOGMEL_ONNX: "input"},
    }


__all__ = ["frontend_parameters", "read_json", "read_thresholds", "summarise", "training_figures"]
