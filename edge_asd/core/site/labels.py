"""Normal/anomaly labels of test clips from their names, in every layout edge-asd reads.

``evaluate-site`` must judge a site on labelled recordings however they were named, without
importing the trainer (torch side). The conventions are those of ``trainer/data/layouts.py``:

* DCASE 2020: ``normal_id_00_00000000.wav`` / ``anomaly_id_00_00000000.wav``;
* DCASE 2021-2024: ``section_00_source_test_normal_0000[_attrs].wav`` / ``..._anomaly_...``;
* own machines (and ``edge-asd labels export``): clips in a folder named ``normal/`` or
  ``anomaly/`` (the nearest such folder between the clip and the root given).

A name matching none of these is unlabelled (None); such clips are reported, not scored.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

NORMAL = 0
ANOMALY = 1
LABEL_NAMES = {NORMAL: "normal", ANOMALY: "anomaly"}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")

_DCASE2020 = re.compile(r"^(?P<label>normal|anomaly)_id_\d+_\d+\.\w+$", re.IGNORECASE)
_DCASE2021 = re.compile(
    r"^section_\d+_(?:source|target)_(?:train|test)_(?P<label>normal|anomaly)_\d+(?:_.+)?\.\w+$", re.IGNORECASE
)
_FOLDER_LABELS = {"normal": NORMAL, "anomaly": ANOMALY, "anomalous": ANOMALY, "abnormal": ANOMALY}


class LabelError(UserError):
    """A test folder without labelled clips."""


def label_from_name(path: str | Path, root: str | Path | None = None) -> int | None:
    """0 (normal), 1 (anomaly) or None for one clip, from its file name or its folder."""
    path = Path(path)
    for pattern in (_DCASE2020, _DCASE2021):
        m = pattern.match(path.name)
        if m:
            return NORMAL if m.group("label").lower() == "normal" else ANOMALY
    parents = path.parent.parts
    if root is not None:
        with contextlib.suppress(ValueError):  # a clip outside root: look at all its folders
            parents = path.parent.relative_to(Path(root)).parts
    for part in reversed(parents):
        label = _FOLDER_LABELS.get(part.lower())
        if label is not None:
            return label
    return None


def audio_files(folder: str | Path) -> list[Path]:
    """Sound files below ``folder`` (or the file itself), sorted; hidden files are skipped."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise LabelError(f"folder {folder} does not exist: check the path")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".")
    )


def labelled_clips(folder: str | Path) -> tuple[list[tuple[Path, int]], list[Path]]:
    """``([(clip, label)], [unlabelled clips])`` below ``folder``.

    Raises ``LabelError`` unless both normal and anomalous clips are found (an AUC needs both).
    """
    files = audio_files(folder)
    if not files:
        raise LabelError(f"no sound files under {folder}: point to the folder of test clips")
    labelled: list[tuple[Path, int]] = []
    unlabelled: list[Path] = []
    for path in files:
        label = label_from_name(path, folder)
        if label is None:
            unlabelled.append(path)
        else:
            labelled.append((path, label))
    n_anomaly = sum(1 for _, lab in labelled if lab == ANOMALY)
    n_normal = len(labelled) - n_anomaly
    if n_normal == 0 or n_anomaly == 0:
        raise LabelError(
            f"{folder}: found {n_normal} normal and {n_anomaly} anomalous clips ({len(unlabelled)} unlabelled); "
            "name them normal_id_00_*.wav / anomaly_id_00_*.wav, section_00_source_test_{normal,anomaly}_*.wav, "
            "or put them in normal/ and anomaly/ folders"
        )
    if unlabelled:
        logger.warning("%s: %d clips without a normal/anomaly label are not scored", folder, len(unlabelled))
    return labelled, unlabelled


__all__ = [
    "ANOMALY",
    "AUDIO_SUFFIXES",
    "LABEL_NAMES",
    "NORMAL",
    "LabelError",
    "audio_files",
    "label_from_name",
    "labelled_clips",
]
