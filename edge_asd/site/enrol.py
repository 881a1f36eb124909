"""Enrolment from audio: files, folders or a live capture -> features -> a fitted ``Enrolment``.

The numpy part (hold-out, components, fusion, threshold) is ``edge_asd.core.site``; this module
reads the audio, runs it through the bundle's runtime (``features.extract``), and records the
provenance an operator needs to trust the result later: which bundle (sha), which audio
(source kind, paths or device, minutes, windows), when, and which hold-out rule.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd import __version__
from edge_asd.core.audio_io import read_audio
from edge_asd.core.constants import SAMPLE_RATE
from edge_asd.core.site.enrolment import DEFAULT_FALSE_ALARM_RATE, Enrolment, EnrolmentError, fit_enrolment
from edge_asd.core.site.holdout import HOLDOUT_RULE
from edge_asd.core.site.labels import ANOMALY, audio_files, label_from_name
from edge_asd.site.features import WindowFeatures, extract
from edge_asd.site.storage import bundle_sha
from engines.bundle import Bundle
from engines.runtime.base import Runtime

logger = logging.getLogger(__name__)

MIN_ENROL_WINDOWS = 10
"""Fewer windows than this cannot hold out stretches and still fit a tail: refuse, say why."""


def file_segments(paths: Sequence[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """``(path, 16 kHz mono audio)`` per file, read one at a time (memory stays one file)."""
    for path in paths:
        yield str(path), read_audio(path)


def normal_files(folder: Path) -> list[Path]:
    """Sound files below ``folder``, except those named or filed as anomalies (with a warning)."""
    files = audio_files(folder)
    kept = [p for p in files if label_from_name(p, folder) != ANOMALY]
    if len(kept) < len(files):
        logger.warning("%s: %d clips labelled anomalous are not used for enrolment", folder, len(files) - len(kept))
    if not kept:
        raise EnrolmentError(f"no normal sound files under {folder}: point to a folder of normal recordings")
    return kept


def provenance(
    kind: str, features: WindowFeatures, *, paths: Sequence[Path] = (), device: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Where enrolment audio came from, stored in the enrolment's metadata."""
    prov: dict[str, Any] = {
        "kind": kind,
        "minutes": round(features.minutes, 3),
        "windows": len(features),
        "segments": len({r.segment for r in features.refs}),
        "paths": [str(p) for p in paths][:1000],
    }
    if len(paths) > 1000:
        prov["paths_truncated"] = len(paths)
    if device is not None:
        prov["device"] = device
    prov.update(extra)
    return prov


def enrol_features(
    features: WindowFeatures,
    bundle: Bundle,
    *,
    stream: str,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    source: dict[str, Any],
    class_names: Sequence[str] = (),
    hop_s: float = 1.0,
) -> Enrolment:
    """Fit an enrolment on extracted features and stamp it with bundle and provenance."""
    if len(features) < MIN_ENROL_WINDOWS:
        raise EnrolmentError(
            f"stream {stream}: only {len(features)} windows of normal audio ({features.minutes:.1f} min); "
            f"enrolment needs at least {MIN_ENROL_WINDOWS}: give a few minutes of audio or more clips"
        )
    meta = {
        "stream": stream,
        "bundle_sha": bundle_sha(bundle),
        "bundle": str(bundle.path),
        "classes": list(class_names),
        "hop_s": float(hop_s),
        "source": source,
        "windows": len(features),
        "minutes": round(features.minutes, 3),
        "holdout_rule": HOLDOUT_RULE,
        "edge_asd_version": __version__,
        "enrolled": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return fit_enrolment(
        features.indicators, features.embeddings, features.ce, features.refs,
        false_alarm_rate=false_alarm_rate, meta=meta, profiles=features.profiles,
    )  # fmt: skip


def keep_feedback(enrolment: Enrolment, previous: Enrolment | None) -> Enrolment:
    """``enrolment`` with the false alarms an operator taught ``previous`` (the stream's
    enrolment for the same bundle, None when there is none): a re-enrolment must not make
    them ring again. When they cannot be carried (another indicator set), it says so and
    returns ``enrolment`` as it is."""
    if previous is None or len(previous.exemplars) == 0:
        return enrolment
    try:
        carried = enrolment.with_feedback_of(previous)
    except ValueError as err:
        logger.warning("the %d windows taught as normal before could not be kept: %s", len(previous.exemplars), err)
        return enrolment
    logger.info("kept the %d windows an operator taught as normal (%d events)",
                len(previous.exemplars), len(previous.meta.get("feedback_events") or []))  # fmt: skip
    return carried


def enrol_files(
    paths: Sequence[Path],
    bundle: Bundle,
    runtime: Runtime,
    *,
    stream: str,
    kind: str,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    class_indices: Sequence[int] | None = None,
    hop_s: float = 1.0,
    max_minutes: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Enrolment:
    """Enrol a stream from sound files (one segment each); ``max_minutes`` caps the audio used."""
    segments: Iterator[tuple[str, np.ndarray]] = file_segments(paths)
    if max_minutes is not None:
        segments = _cap_minutes(segments, max_minutes)
    features = extract(segments, runtime, hop_s=hop_s, class_indices=class_indices, progress=progress)
    names = [bundle.classes[i] for i in class_indices] if class_indices else []
    return enrol_features(
        features, bundle, stream=stream, false_alarm_rate=false_alarm_rate,
        source=provenance(kind, features, paths=paths), class_names=names, hop_s=hop_s,
    )  # fmt: skip


def _cap_minutes(segments: Iterator[tuple[str, np.ndarray]], minutes: float) -> Iterator[tuple[str, np.ndarray]]:
    """The first ``minutes`` of audio over all segments (the last one cut)."""
    left = int(round(minutes * 60.0 * SAMPLE_RATE))
    for name, audio in segments:
        if left <= 0:
            return
        yield name, audio[:left]
        left -= min(left, audio.shape[0])


__all__ = ["MIN_ENROL_WINDOWS", "enrol_features", "enrol_files", "file_segments", "normal_files", "provenance"]
