"""``make_site_set``: what a site hands over to judge a detector, for one site machine.

A folder of normal clips to enrol from (``NORMAL_DIR/*.wav``, the machine in all its operating
modes) and a test folder named in the DCASE 2020 test convention (``normal_id_00_*.wav``,
``anomaly_id_00_*.wav``), so any labelled-clip reader can score it. Anomalous clips cycle
through the family's variants and spread their severity over 0.7-1.3 x ``severity``: some are
plain, some subtle, as on a real site. ``site.json`` next to the folders records what each
clip is (mode, variant, drawn parameters), for break-downs; the clips themselves say nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_asd.core.atomic import atomic_write_text
from edge_asd.core.audio_io import write_wav
from edge_asd.core.constants import SAMPLE_RATE
from edge_asd.core.synth.machines import SYNTH_VERSION, SynthError, clip_seed
from edge_asd.core.synth.site_anomalies import SITE_VARIANTS
from edge_asd.core.synth.site_machines import N_MODES, check_family, site_machine
from edge_asd.core.synth.site_stream import SiteMachineStream

logger = logging.getLogger(__name__)

NORMAL_DIRNAME = "normal"
TEST_DIRNAME = "test"
MANIFEST_NAME = "site.json"


def make_site_set(
    out: str | Path,
    family: str,
    *,
    n_normal: int = 60,
    n_test_normal: int = 30,
    n_test_anomaly: int = 30,
    seed: int = 0,
    severity: float = 1.0,
    seconds: float = 10.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, Path]:
    """Write a site set of ``family`` (site ``seed``) under ``out``; return ``(normal_dir, test_dir)``.

    ``out/normal/normal_id_00_NNNNNNNN.wav``: ``n_normal`` normal clips to enrol from;
    ``out/test/{normal,anomaly}_id_00_NNNNNNNN.wav``: the labelled test clips; ``out/site.json``:
    the manifest. Clips are 16 kHz mono int16 of ``seconds``, each a separate take in a mode
    drawn at random. The same arguments write the same bytes. ``progress(done, total)`` is
    called after each file. Existing clips of the same names are overwritten; a folder holding
    other clips (of a bigger earlier set) is refused, since they would join the set unseen.
    """
    check_family(family)
    counts = {"n_normal": n_normal, "n_test_normal": n_test_normal, "n_test_anomaly": n_test_anomaly}
    bad = [f"{k}={v}" for k, v in counts.items() if v < 0]
    if bad or n_normal + n_test_normal + n_test_anomaly == 0:
        raise SynthError(f"site set counts must be >= 0 and not all 0, got {', '.join(bad) or 'all 0'}")
    if severity <= 0 or seconds <= 0:
        raise SynthError(f"severity and seconds must be > 0, got {severity} and {seconds}")
    out = Path(out)
    normal_dir, test_dir = out / NORMAL_DIRNAME, out / TEST_DIRNAME

    rng = np.random.default_rng(clip_seed(seed, "site-plan", family))
    variants = list(SITE_VARIANTS[family])
    rng.shuffle(variants)
    plan: list[dict] = []
    for folder, label, count in (
        (normal_dir, "normal", n_normal), (test_dir, "normal", n_test_normal), (test_dir, "anomaly", n_test_anomaly)
    ):
        for i in range(count):
            entry: dict = {
                "file": f"{folder.name}/{label}_id_00_{i:08d}.wav",
                "label": label,
                "take": clip_seed(seed, "site-take", family, folder.name, label, i),
                "mode": int(rng.integers(N_MODES)),
            }
            if label == "anomaly":
                entry["variant"] = variants[i % len(variants)]
                entry["severity"] = float(severity * rng.uniform(0.7, 1.3))
            plan.append(entry)

    planned = {e["file"] for e in plan}
    for folder in (normal_dir, test_dir):
        stale = sorted(p.name for p in folder.glob("*.wav") if f"{folder.name}/{p.name}" not in planned)
        if stale:
            raise SynthError(
                f"{folder} already holds clips this set would not write ({stale[0]}, ...): "
                "use an empty folder or delete the old set first"
            )

    sr = SAMPLE_RATE
    for done, entry in enumerate(plan, 1):
        stream = SiteMachineStream(family, seed, entry["take"], mode=entry["mode"], sr=sr)
        if entry["label"] == "anomaly":
            stream.schedule_anomaly(entry["variant"], 0.0, None, severity=entry["severity"])
            entry.update(stream.anomalies[0])
        write_wav(out / entry["file"], stream.read(int(round(seconds * sr))), sr)
        if progress is not None:
            progress(done, len(plan))
    machine = site_machine(family, seed)
    manifest = {
        "format": "edge-asd-site-set",
        "version": 1,
        "synth_version": SYNTH_VERSION,
        "family": family,
        "seed": seed,
        "machine": machine.description,
        "normal_dir": NORMAL_DIRNAME,
        "test_dir": TEST_DIRNAME,
        "clips": plan,
    }
    atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    logger.info("site set %s (seed %d): %d files under %s", family, seed, len(plan), out)
    return normal_dir, test_dir


__all__ = ["MANIFEST_NAME", "NORMAL_DIRNAME", "TEST_DIRNAME", "make_site_set"]
