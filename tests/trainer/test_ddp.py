"""torchrun with two CPU processes (gloo) trains an epoch and writes one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.training import tiny_synth

EDGE_ASD = str(Path(sys.executable).with_name("edge-asd"))


def test_torchrun_two_processes_on_cpu(tmp_path, artifacts_dir):
    data = tiny_synth(artifacts_dir / "tiny-synth")
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
        EDGE_ASD, "train", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "2", "--lr", "1e-3",
        "--val-fraction", "0.34", "--device", "cpu", "--threads", "1", "--no-progress",
        "--cache-dir", str(artifacts_dir / "audio-cache"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0]  # written once, by rank 0
    assert rows[0]["train_loss"] > 0 and rows[0]["val_loss"] is not None
    assert (run / "model_best.pt").is_file() and (run / "thresholds.json").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["classes"] == ["fan/id_00", "fan/id_02"]
