"""``make_dataset``: a DCASE 2020 development tree of the DCASE-like machines, on disk.

The plan of clips (which ID, split, label, anomaly kind and severity) is drawn first and each
clip's seed derives from the data-set seed and the clip's place in the tree, so the same
arguments write byte-identical files in any order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edge_asd.core.audio_io import write_wav
from edge_asd.core.synth.anomalies import ANOMALY_KINDS
from edge_asd.core.synth.machines import (
    DEFAULT_IDS,
    DEFAULT_SNR_DB,
    MACHINE_TYPES,
    SYNTH_VERSION,
    SynthError,
    check_type,
    clip_seed,
)
from edge_asd.core.synth.stream import render_clip

logger = logging.getLogger(__name__)


def resolve_types(types: int | Sequence[str]) -> list[str]:
    """``2`` -> the first two of ``MACHINE_TYPES``; a list of names is checked. SynthError if bad."""
    if isinstance(types, int):
        if not 1 <= types <= len(MACHINE_TYPES):
            raise SynthError(f"--types must be 1..{len(MACHINE_TYPES)}, got {types}")
        return list(MACHINE_TYPES[:types])
    names = list(types)
    for name in names:
        check_type(name)
    if not names:
        raise SynthError("no machine types given: name at least one of " + ", ".join(MACHINE_TYPES))
    return names


def resolve_ids(machine_type: str, ids: int | Sequence[int]) -> list[int]:
    """``2`` -> the first two of ``DEFAULT_IDS[type]``; a list of IDs is checked. SynthError if bad."""
    available = DEFAULT_IDS[machine_type]
    if isinstance(ids, int):
        if not 1 <= ids <= len(available):
            raise SynthError(
                f"{machine_type} has {len(available)} machine IDs ({', '.join(f'{i:02d}' for i in available)}); "
                f"asked for {ids}: use --ids 1..{len(available)}"
            )
        return list(available[:ids])
    chosen = [int(i) for i in ids]
    bad = [i for i in chosen if i not in available]
    if bad:
        raise SynthError(f"{machine_type} has no machine ID {bad[0]:02d}: use one of {list(available)}")
    return chosen


def make_dataset(
    out_dir: str | Path,
    types: int | Sequence[str] = 2,
    ids: int | Sequence[int] = 2,
    train_clips: int = 50,
    test_clips: int = 20,
    seed: int = 0,
    snr_db: float = DEFAULT_SNR_DB,
    subtle_fraction: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write a DCASE 2020 development tree of synthetic clips under ``out_dir/dev_data``.

    Per machine ID: ``train_clips`` normal training clips and ``test_clips`` normal plus
    ``test_clips`` anomalous test clips (kinds cycle through ``ANOMALY_KINDS``; about
    ``subtle_fraction`` of them subtle). Files are 16 kHz mono int16, 10 s, named
    ``normal_id_XX_NNNNNNNN.wav`` / ``anomaly_id_XX_NNNNNNNN.wav``. ``progress(done, total)`` is
    called after each file. Returns a summary (counts, types, IDs, anomaly kinds).
    """
    out = Path(out_dir)
    type_list = resolve_types(types)
    plan: list[tuple[str, int, str, str, int, str | None, float]] = []
    kinds_used: dict[str, int] = {}
    for machine_type in type_list:
        for machine_id in resolve_ids(machine_type, ids):
            for i in range(train_clips):
                plan.append((machine_type, machine_id, "train", "normal", i, None, 0.0))
            for i in range(test_clips):
                plan.append((machine_type, machine_id, "test", "normal", i, None, 0.0))
            rng = np.random.default_rng(clip_seed(seed, "kinds", machine_type, machine_id))
            order = list(ANOMALY_KINDS)
            rng.shuffle(order)
            for i in range(test_clips):
                kind = order[i % len(order)]
                subtle = rng.uniform() < subtle_fraction
                severity = rng.uniform(0.45, 0.6) if subtle else rng.uniform(1.0, 1.5)
                plan.append((machine_type, machine_id, "test", "anomaly", i, kind, float(severity)))
    total = len(plan)
    for done, (machine_type, machine_id, split, label, i, kind, severity) in enumerate(plan, 1):
        seed_i = clip_seed(seed, machine_type, machine_id, split, label, i)
        audio = render_clip(machine_type, machine_id, seed_i, kind, snr_db=snr_db, severity=severity or 1.0)
        name = f"{label}_id_{machine_id:02d}_{i:08d}.wav"
        write_wav(out / "dev_data" / machine_type / split / name, audio)
        if kind is not None:
            kinds_used[kind] = kinds_used.get(kind, 0) + 1
        if progress is not None:
            progress(done, total)
    summary = {
        "root": str(out),
        "types": type_list,
        "ids": {t: resolve_ids(t, ids) for t in type_list},
        "train_clips": sum(1 for p in plan if p[2] == "train"),
        "test_normal": sum(1 for p in plan if p[2] == "test" and p[3] == "normal"),
        "test_anomaly": sum(1 for p in plan if p[3] == "anomaly"),
        "files": total,
        "anomaly_kinds": kinds_used,
        "seed": seed,
        "snr_db": snr_db,
        "synth_version": SYNTH_VERSION,
    }
    logger.info("synthetic dataset: %d files under %s", total, out)
    return summary
