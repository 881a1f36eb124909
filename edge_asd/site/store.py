"""What feedback needs to keep: an event's window features, and operator-labelled evidence.

Feedback arrives after the event (an operator listens to the evidence and says "that was
normal" or "that was a real fault"), long after the windows left the daemon's buffers. So:

* per event, the daemon saves the features of the windows that made it (indicators,
  spectral profiles, embeddings, ce) under ``<state_dir>/events/<stream>/<event_id>.npz``; a ``normal`` label
  feeds exactly those windows to ``Enrolment.add_normal``;
* a label copies the event's evidence WAV under ``<state_dir>/labels/<stream>/<label>/``
  (with a small JSON sidecar), and ``export_labels`` writes all of them as a data folder:

  ```
  OUT/manifest.csv                 file,class,label,split   (edge-asd train/evaluate OUT/manifest.csv)
  OUT/<stream>/normal/<event>.wav  false alarms: normal training data (split train)
  OUT/<stream>/anomaly/<event>.wav confirmed faults: labelled test clips (split test)
  ```

  The manifest is what ``train`` and ``evaluate`` read (``trainer/data/layouts.py``, layout
  ``manifest``): the own-machines layout has no anomaly label, and pointing ``train`` at the
  folder itself would learn the faults as normal. ``evaluate-site NORMALS OUT/<stream>``
  reads the ``normal/`` and ``anomaly/`` folders directly.

Files are written atomically (``edge_asd.core.atomic``); arrays are read with
``allow_pickle=False``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_asd.core.atomic import atomic_write_bytes, atomic_write_text
from edge_asd.core.errors import UserError
from edge_asd.core.site.enrolment import WindowSet
from edge_asd.core.site.labels import LABEL_NAMES
from edge_asd.evidence import safe_name
from edge_asd.site.storage import check_stream_name

logger = logging.getLogger(__name__)

EVENTS_DIR = "events"
LABELS_DIR = "labels"
LABELS = tuple(LABEL_NAMES.values())
"""``normal`` and ``anomaly``: the labels feedback accepts."""

MANIFEST = "manifest.csv"


class LabelStoreError(UserError):
    """A label or an event that cannot be stored (unknown label, missing evidence)."""


def event_path(state_dir: str | Path, stream: str, event_id: str) -> Path:
    """``<state_dir>/events/<stream>/<event_id>.npz`` (the id made file-name safe)."""
    return Path(state_dir) / EVENTS_DIR / check_stream_name(stream) / f"{safe_name(event_id)}.npz"


def save_event_windows(
    state_dir: str | Path,
    stream: str,
    event_id: str,
    indicators: np.ndarray,
    embeddings: np.ndarray | None = None,
    ce: np.ndarray | None = None,
    profiles: np.ndarray | None = None,
) -> Path:
    """Keep the features of an event's windows until feedback (or cleanup) comes for it.

    ``profiles``: the windows' spectral profiles (``edge_asd.core.spectra``); an enrolment with
    the ``spectrum`` and ``envelope`` components needs them to take the windows as exemplars.
    """
    windows = WindowSet(indicators, embeddings, ce, profiles)
    arrays = {"indicators": windows.indicators}
    if windows.embeddings is not None:
        arrays["embeddings"] = windows.embeddings
    if windows.ce is not None:
        arrays["ce"] = windows.ce
    if windows.profiles is not None:
        arrays["profiles"] = windows.profiles
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(event_path(state_dir, stream, event_id), buf.getvalue())


def load_event_windows(state_dir: str | Path, stream: str, event_id: str) -> WindowSet | None:
    """The saved features of an event, or None (with a warning) when unknown or unreadable."""
    path = event_path(state_dir, stream, event_id)
    if not path.is_file():
        logger.warning("no saved windows for event %s of stream %s (%s)", event_id, stream, path)
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return WindowSet(
                npz["indicators"],
                npz["embeddings"] if "embeddings" in npz.files else None,
                npz["ce"] if "ce" in npz.files else None,
                npz["profiles"] if "profiles" in npz.files else None,
            )
    except (OSError, ValueError, KeyError, EOFError) as err:
        logger.warning("windows of event %s of stream %s are unreadable (%s): ignored", event_id, stream, err)
        return None


def delete_event_windows(state_dir: str | Path, stream: str, event_id: str) -> bool:
    """Remove an event's saved windows; True if there were any."""
    path = event_path(state_dir, stream, event_id)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _check_label(label: str) -> str:
    if label not in LABELS:
        raise LabelStoreError(f"label {label!r} is not one of {', '.join(LABELS)}")
    return label


def record_label(state_dir: str | Path, stream: str, event_id: str, label: str, evidence_wav: str | Path) -> Path:
    """Copy an event's evidence WAV under ``<state_dir>/labels/<stream>/<label>/<event_id>.wav``.

    A second label for the same event replaces the first (the operator changed their mind).
    Returns the stored path; ``LabelStoreError`` for an unknown label or a missing WAV.
    """
    _check_label(label)
    src = Path(evidence_wav)
    if not src.is_file():
        raise LabelStoreError(
            f"evidence {src} of event {event_id} (stream {stream}) does not exist: it was rotated out or never "
            "saved; the label cannot keep the sound"
        )
    root = Path(state_dir) / LABELS_DIR / check_stream_name(stream)
    stem = safe_name(event_id)
    for other in LABELS:  # one label per event
        if other != label:
            for old in ((root / other / f"{stem}.wav"), (root / other / f"{stem}.json")):
                old.unlink(missing_ok=True)
    dst = root / label / f"{stem}.wav"
    atomic_write_bytes(dst, src.read_bytes())
    sidecar = {"event": event_id, "stream": stream, "label": label, "evidence": str(src),
               "labelled": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    atomic_write_text(dst.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    logger.info("event %s of stream %s labelled %s: %s", event_id, stream, label, dst)
    return dst


@dataclass
class LabelExport:
    """What ``export_labels`` wrote."""

    out_dir: Path
    manifest: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per stream, clips per label."""

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def export_labels(state_dir: str | Path, out_dir: str | Path) -> LabelExport:
    """Write every labelled clip of the state directory as a data folder (see module docstring)."""
    src_root = Path(state_dir) / LABELS_DIR
    out = Path(out_dir)
    rows: list[tuple[str, str, str, str]] = []
    counts: dict[str, dict[str, int]] = {}
    streams = sorted(p for p in src_root.iterdir() if p.is_dir()) if src_root.is_dir() else []
    for stream_dir in streams:
        for label in LABELS:
            for wav in sorted((stream_dir / label).glob("*.wav")):
                rel = Path(stream_dir.name) / label / wav.name
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(wav, out / rel)
                split = "train" if label == "normal" else "test"
                rows.append((rel.as_posix(), stream_dir.name, label, split))
                counts.setdefault(stream_dir.name, {lab: 0 for lab in LABELS})[label] += 1
    if not rows:
        raise LabelStoreError(
            f"no labelled events under {src_root}: label events first (MQTT <prefix>/<node>/<stream>/feedback/set "
            "or `edge-asd feedback`)"
        )
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("file", "class", "label", "split"))
    writer.writerows(rows)
    manifest = atomic_write_text(out / MANIFEST, text.getvalue())
    logger.info("exported %d labelled clips to %s", len(rows), out)
    return LabelExport(out, manifest, counts)


__all__ = [
    "EVENTS_DIR",
    "LABELS",
    "LABELS_DIR",
    "MANIFEST",
    "LabelExport",
    "LabelStoreError",
    "delete_event_windows",
    "event_path",
    "export_labels",
    "load_event_windows",
    "record_label",
    "save_event_windows",
]
