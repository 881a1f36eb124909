"""Which clips a run's later steps use, and the classes each clip may belong to.

A clip's score is the minimum over its candidate classes: its own class when the file name
says which machine it is (DCASE dev data), else every class of its section or machine type
(DCASE eval data, or a stream that may come from any of several machines). The run's own
training clips split into references (knn) and held-out clips (calibration) by ``split.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_asd.core.errors import UserError
from trainer.data.split import SPLIT_FILE

logger = logging.getLogger(__name__)


@dataclass
class ClipRef:
    """A clip to run: its file, the run's class index (or None) and candidate classes."""

    path: Path
    class_index: int | None
    candidates: list[int]
    machine_type: str
    machine_id: str
    label: int | None = None


def _clip_type_and_id(clip: Any) -> tuple[str, str]:
    """Machine type and machine ID/section of a data-layer clip (class name ``type/id``)."""
    mtype = getattr(clip, "machine_type", None)
    mid = getattr(clip, "machine_id", None) or getattr(clip, "section", None)
    name = getattr(clip, "class_name", None) or ""
    if mtype is None and "/" in name:
        mtype = name.split("/", 1)[0]
    if mid is None and "/" in name:
        mid = name.split("/", 1)[1]
    return str(mtype or "unknown"), str(mid or "unknown")


def clip_refs(clips: Sequence[Any], classes: Sequence[str]) -> list[ClipRef]:
    """Map data-layer clips onto the run's classes; clips of unknown machine types are dropped."""
    class_of = {name: i for i, name in enumerate(classes)}
    by_type: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        by_type.setdefault(name.split("/", 1)[0], []).append(i)
    out: list[ClipRef] = []
    dropped: dict[str, int] = {}
    for clip in clips:
        mtype, mid = _clip_type_and_id(clip)
        idx = class_of.get(getattr(clip, "class_name", None) or "")
        if idx is not None:
            candidates = [idx]
        else:
            # Unknown attributes (DCASE 2022+) or an unknown ID: the clip's section, else its type.
            prefix = f"{mtype}/{mid}/"
            candidates = [i for i, name in enumerate(classes) if name.startswith(prefix)] or by_type.get(mtype, [])
        if not candidates:
            dropped[mtype] = dropped.get(mtype, 0) + 1
            continue
        out.append(ClipRef(Path(clip.path), idx, candidates, mtype, mid, getattr(clip, "label", None)))
    for mtype, count in dropped.items():
        logger.warning("%d clips of machine type %s match no class of the run: skipped", count, mtype)
    return out


def index_for_run(config: dict, roots: Sequence[str | Path] | None) -> Any:
    """The data index of ``roots`` (default: the roots the run was trained on), in the run's layout."""
    from trainer import data

    data_cfg = config.get("data", {})
    roots = list(roots) if roots else list(data_cfg.get("roots", []))
    if not roots:
        raise UserError("no data folders given and the run's config.json names none: pass DATA")
    for r in roots:
        if not Path(r).exists():
            raise UserError(f"data folder {r} does not exist: pass the folder(s) the run was trained on")
    return data.build_index(
        [str(r) for r in roots], layout=data_cfg.get("layout", "auto"), class_by=data_cfg.get("class_by", "section")
    )


def training_clip_sets(run_dir: Path, config: dict, roots: Sequence[str | Path] | None = None) -> tuple[list[ClipRef], list[ClipRef]]:
    """``(reference clips, held-out clips)`` of the run: its train split minus / only ``split.json``."""
    index = index_for_run(config, roots)
    classes = config["classes"]
    train_clips = [c for c in index.clips if c.split == "train" and c.class_name in set(classes)]
    split_path = run_dir / SPLIT_FILE
    held = set(json.loads(split_path.read_text()).get("val", [])) if split_path.is_file() else set()
    if not split_path.is_file():
        logger.warning("%s has no %s: every training clip is used as a reference, none held out", run_dir, SPLIT_FILE)
    refs = clip_refs([c for c in train_clips if str(c.path) not in held], classes)
    heldout = clip_refs([c for c in train_clips if str(c.path) in held], classes)
    if held and not heldout:
        # The data moved (other roots): match held-out clips by their path below the root.
        tails = {"/".join(Path(p).parts[-3:]) for p in held}
        refs = clip_refs([c for c in train_clips if "/".join(Path(c.path).parts[-3:]) not in tails], classes)
        heldout = clip_refs([c for c in train_clips if "/".join(Path(c.path).parts[-3:]) in tails], classes)
    return refs, heldout


__all__ = ["ClipRef", "clip_refs", "index_for_run", "training_clip_sets"]
