"""A bundle exported from the shared synthetic run, cached in the artifacts folder.

The main test run (torch present) trains (``train_fixture.trained_run``) and exports once; the
torch-free Python 3.10 run finds the same bundle in ``EDGE_ASD_ARTIFACTS`` and uses it, which
is how the device-side tests prove the Jetson path (no PyTorch) on a real trained model.
"""

from __future__ import annotations

import fcntl
import importlib.util
from pathlib import Path

import pytest

from trainer.synth import MachineSoundStream, make_stream_recording

BUNDLE_NAME = "synth-bundle"


def synth_bundle(artifacts_dir: Path) -> Path:
    """The exported bundle of the shared run; skips when it cannot be made here (no torch)."""
    artifacts_dir = Path(artifacts_dir)
    bundle = artifacts_dir / BUNDLE_NAME
    have_torch = importlib.util.find_spec("torch") is not None
    with open(artifacts_dir / f".{BUNDLE_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not have_torch:
            if (bundle / "model.json").is_file():
                return bundle
            pytest.skip(f"no torch to train and export, and no cached bundle in {bundle}")
        from train_fixture import trained_run

        run = trained_run(artifacts_dir)
        stamp = bundle / ".run-stamp"
        run_stamp = (run / ".recipe").read_text() if (run / ".recipe").is_file() else ""
        if (bundle / "model.json").is_file() and stamp.is_file() and stamp.read_text() == run_stamp:
            return bundle
        from engines.export import export_run

        export_run(run, bundle)
        stamp.write_text(run_stamp)
    return bundle


def recording_with_anomaly(
    machine_type: str, machine_id: int, seconds: float, anomaly_at_s: float, anomaly_s: float, kind: str, seed: int
):
    """Continuous normal audio of one machine with one anomaly spliced in, and its span."""
    return make_stream_recording(machine_type, machine_id, seconds, anomaly_at_s, anomaly_s, kind, seed=seed)


def calibration_then_monitoring(
    machine_type: str, machine_id: int, seed: int, calibration_s: float, monitor_s: float,
    anomaly_at_s: float, anomaly_s: float, kind: str,
):
    """One machine heard continuously: ``calibration_s`` of normal running (what `edge-asd
    calibrate` records on site), then ``monitor_s`` with an anomaly at ``anomaly_at_s`` into the
    monitored part. Returns ``(calibration_audio, monitored_audio, span_in_monitored)``."""
    stream = MachineSoundStream(machine_type, machine_id, seed=seed)
    calibration = stream.read(int(calibration_s * 16000))
    start, end = stream.schedule_anomaly(kind, calibration_s + anomaly_at_s, anomaly_s)
    monitored = stream.read(int(monitor_s * 16000))
    return calibration, monitored, (start - calibration_s, end - calibration_s)
