"""``edge-asd calibrate``: thresholds from the site's own normal operation.

A bundle's thresholds come from held-out training clips; the site's microphone placement,
room and background differ. Calibration runs the real pipeline (same windows, same engine,
same scorer) on N minutes of normal operation, fits a gamma distribution to each stream's
window scores (``edge_asd.core.thresholds``, the same fit as the trainer's) and sets the
threshold at the quantile that gives the target number of windows over the threshold per day. It never goes below the highest score seen during calibration:
a recording of normal operation must not alarm when it is played back. numpy only (device).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge_asd.comms.null import NullCommunicator
from edge_asd.config import AppConfig, ConfigError
from edge_asd.core.errors import UserError
from edge_asd.core.thresholds import threshold_for
from edge_asd.daemon.listen import build_daemon

logger = logging.getLogger(__name__)

MIN_WINDOWS = 20


@dataclass(frozen=True)
class StreamCalibration:
    windows: int
    mean: float
    std: float
    max_score: float
    gamma_threshold: float
    threshold: float
    false_alarm_probability: float


def calibrate_streams(
    cfg: AppConfig, *, minutes: float, false_alarms_per_day: float, progress: Any | None = None
) -> dict[str, StreamCalibration]:
    """Score ``minutes`` of audio per stream through the real pipeline and fit thresholds.

    These are thresholds of the bundle's score (``streams[].threshold``), so site learning is
    off while calibrating; an enrolled stream's fused threshold comes from its enrolment
    (``edge-asd enrol --false-alarms-per-day``), and a stream without classes has no bundle score.
    """
    windows_wanted = max(MIN_WINDOWS, int(round(minutes * 60.0 / cfg.hop_s)))
    no_classes = [s.name for s in cfg.streams if not s.classes]
    if no_classes:
        raise UserError(
            f"stream(s) {', '.join(no_classes)} have no `classes:`: they are scored by their enrolment, whose "
            "threshold `edge-asd enrol` sets; calibrate only the streams that use the bundle's score"
        )
    cfg = cfg.model_copy(update={"site": cfg.site.model_copy(update={"enabled": False})})
    daemon = build_daemon(cfg, comms=NullCommunicator(), require_thresholds=False, service=False)
    pipeline = daemon.pipeline
    for stream in pipeline.streams:  # scores only: no events while the thresholds are being set
        stream.threshold_override = float("inf")
    scores: dict[str, list[float]] = {s.name: [] for s in pipeline.streams}
    seen = {s.name: 0 for s in pipeline.streams}
    try:
        daemon.comms.start()
        daemon.start_inputs()
        last_report = time.monotonic()
        while min(len(v) for v in scores.values()) < windows_wanted:
            scored = pipeline.tick()
            for stream in pipeline.streams:
                if stream.counters.windows > seen[stream.name]:
                    seen[stream.name] = stream.counters.windows
                    scores[stream.name].append(float(stream.last_score))
            if pipeline.finished:
                break
            if pipeline.inputs_failed:
                failed = "; ".join(f"{c.source.name}: {c.error}" for c in daemon.captures if c.error is not None)
                raise UserError(f"calibration stopped: the audio input failed ({failed}); check the input and run it again")
            if progress is not None and time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                done = min(len(v) for v in scores.values())
                progress.print(f"calibrating: {done}/{windows_wanted} windows per stream")
            if scored == 0:
                time.sleep(0.005 if not pipeline.realtime else 0.05)
    finally:
        daemon.close()
    windows_per_day = 86400.0 / cfg.hop_s
    p_exceed = min(0.5, false_alarms_per_day / windows_per_day)
    result = {}
    for name, values in scores.items():
        if len(values) < MIN_WINDOWS:
            raise UserError(
                f"stream {name}: only {len(values)} windows could be scored (need {MIN_WINDOWS}); "
                "record longer, or check the input (faults and gaps are not scored)"
            )
        arr = np.asarray(values)
        fitted, _ = threshold_for(arr, p_exceed, f"stream {name}")
        result[name] = StreamCalibration(
            windows=len(values), mean=float(arr.mean()), std=float(arr.std()), max_score=float(arr.max()),
            gamma_threshold=fitted, threshold=max(fitted, float(arr.max())), false_alarm_probability=p_exceed,
        )
    return result


def write_thresholds(
    cfg: AppConfig, result: dict[str, StreamCalibration], *, config_path: Path | None, out: Path | None
) -> Path:
    """Set ``streams[].threshold`` in the config file (``out``, or ``config_path`` in place).

    Rewriting YAML drops its comments, so an in-place update keeps the original as ``.bak``.
    """
    if config_path is not None:
        try:
            data = yaml.safe_load(Path(config_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot re-read {config_path}: {err}") from err
    else:
        data = cfg.model_dump(mode="json", exclude_none=True)
        if data.get("mqtt"):
            data["mqtt"].pop("password", None)
    streams = data.get("streams") or []
    if config_path is not None and len(cfg.streams) == 1 and len(streams) != 1:
        streams = [cfg.model_dump(mode="json", exclude_none=True)["streams"][0]]
        data["sources"] = cfg.model_dump(mode="json", exclude_none=True)["sources"]
    by_name = {s.get("name"): s for s in streams}
    for name, cal in result.items():
        entry = by_name.get(name)
        if entry is None:
            entry = {"name": name}
            streams.append(entry)
        entry["threshold"] = round(cal.threshold, 6)
    data["streams"] = streams
    target = Path(out) if out is not None else Path(config_path)  # type: ignore[arg-type]
    if out is None and config_path is not None:
        backup = Path(config_path).with_suffix(Path(config_path).suffix + ".bak")
        backup.write_text(Path(config_path).read_text())
    header = "# thresholds set by `edge-asd calibrate` on " + time.strftime("%Y-%m-%d %H:%M:%S") + "\n"
    target.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return target
