"""A run killed with SIGKILL after its first epoch resumes and finishes as if never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.fixtures.training import tiny_synth

EDGE_ASD = str(Path(sys.executable).with_name("edge-asd"))


def _cmd(data: Path, run: Path, cache: Path, *extra: str) -> list[str]:
    return [
        EDGE_ASD, "train", str(data), "--out", str(run), "--epochs", "3", "--batch-size", "4", "--lr", "1e-3",
        "--val-fraction", "0.34", "--device", "cpu", "--threads", "1", "--no-progress", "--cache-dir", str(cache),
        *extra,
    ]


def test_sigkill_then_resume(tmp_path, artifacts_dir):
    data = tiny_synth(artifacts_dir / "tiny-synth")
    run = tmp_path / "run"
    cache = artifacts_dir / "audio-cache"
    proc = subprocess.Popen(_cmd(data, run, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = run / "train_state.pt"
    deadline = time.monotonic() + 300
    try:
        while not state.exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited before its first epoch ended:\n{proc.stdout.read()}")
            if time.monotonic() > deadline:
                pytest.fail("no train_state.pt after 300 s")
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = torch.load(state, weights_only=True)["epoch"]
    assert killed_at < 2, "the run finished before it could be killed"
    # The same command again without --resume must refuse to overwrite the run.
    again = subprocess.run(_cmd(data, run, cache), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr
    done = subprocess.run(_cmd(data, run, cache, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert torch.load(state, weights_only=True)["epoch"] == 2
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    assert (run / "thresholds.json").is_file() and (run / "embeddings" / "class_000.npy").is_file()
    # No temporary files are left behind.
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp*"))


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, artifacts_dir):
    data = tiny_synth(artifacts_dir / "tiny-synth")
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(data, run, artifacts_dir / "audio-cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "train_state.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training ended (or stalled) before its first epoch was saved")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before Ctrl-C arrived")
    assert proc.returncode == 130, out + err
    assert "--resume" in err and "interrupted" in err
    assert torch.load(run / "train_state.pt", weights_only=True)["epoch"] >= 0
