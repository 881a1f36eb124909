"""A stream's status says what happened to its windows, once: no flapping.

A broken engine (NaN output) used to make the status go ``online`` when a window passed its
level check and ``fault`` when the engine's output came back: two retained messages and a
warning per hop. ``online`` now means "scored", so the status stays ``fault``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_asd.core.audio_io import write_wav
from tests.fixtures.bundles import recording_with_anomaly, synth_bundle
from tests.fixtures.comms import MemoryCommunicator

pytestmark = pytest.mark.device
pytest.importorskip("onnxruntime")


def test_non_finite_engine_output_is_one_fault_not_a_flapping_status(artifacts_dir: Path, tmp_path: Path) -> None:
    from edge_asd.config import validate_config
    from edge_asd.daemon.listen import build_daemon, run_daemon
    from engines.bundle import load_bundle
    bundle = synth_bundle(artifacts_dir)
    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = cls.split("/")
    audio, _ = recording_with_anomaly(machine_type, int(machine_id[-2:]), 20.0, None, 1.0, "rattle", seed=5)
    wav = tmp_path / "machine.wav"
    write_wav(wav, np.asarray(audio, np.float32))
    cfg = validate_config({
        "bundle": str(bundle), "backend": "onnxruntime", "hop_s": 0.5, "state_dir": str(tmp_path / "state"),
        "node_id": "n", "sources": [{"name": "mic", "type": "file", "path": str(wav), "realtime": False}],
        "streams": [{"name": "m1", "source": "mic", "classes": [cls]}], "evidence": {"enabled": False},
    })  # fmt: skip
    comms = MemoryCommunicator()
    daemon = build_daemon(cfg, comms=comms)
    run_chunk = daemon.runtime._run_chunk

    def broken(audio: np.ndarray, logmel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        scores, embedding = run_chunk(audio, logmel)  # every chunk, on whichever thread runs it
        return np.full_like(scores, np.nan), embedding

    daemon.runtime._run_chunk = broken  # type: ignore[method-assign]
    assert run_daemon(daemon, install_signals=False) == 0
    statuses = [call[1][1] for call in comms.calls if call[0] == "status" and call[1][0] == "m1"]
    faults = daemon.pipeline.stats()["streams"]["m1"]["faults"]
    print(f"{faults} windows with NaN output -> status publications {statuses}")
    assert faults >= 10
    assert statuses == ["fault"], statuses
    assert not [c for c in comms.calls if c[0] == "score"]


def test_when_every_input_fails_listen_ends_with_an_error_for_systemd_to_restart(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    """A capture whose work fails is a fault of its streams, said once (no ``online`` from a
    window still buffered); when every input has failed, the loop that would keep the watchdog
    fed forever ends instead, with exit code 1, so that ``Restart=on-failure`` starts it over."""
    from edge_asd.config import validate_config
    from edge_asd.daemon.listen import build_daemon, run_daemon
    from engines.bundle import load_bundle

    bundle = synth_bundle(artifacts_dir)
    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = cls.split("/")
    audio, _ = recording_with_anomaly(machine_type, int(machine_id[-2:]), 16.0, None, 1.0, "rattle", seed=6)
    wav = tmp_path / "machine.wav"
    write_wav(wav, np.asarray(audio, np.float32))
    cfg = validate_config({
        "bundle": str(bundle), "backend": "onnxruntime", "state_dir": str(tmp_path / "state"), "node_id": "n",
        "sources": [{"name": "mic", "type": "file", "path": str(wav), "realtime": False, "loop": True}],
        "streams": [{"name": "m1", "source": "mic", "classes": [cls]}], "evidence": {"enabled": False},
    })  # fmt: skip
    comms = MemoryCommunicator()
    daemon = build_daemon(cfg, comms=comms)
    capture = daemon.captures[0]
    process = capture.resampler.process

    def breaks_after_12_s(block: np.ndarray) -> np.ndarray:
        if capture.resampler.consumed > 12 * 16000:
            raise RuntimeError("resampler broke")
        return process(block)

    capture.resampler.process = breaks_after_12_s  # type: ignore[method-assign]
    assert run_daemon(daemon, install_signals=False) == 1
    statuses = [call[1][1:] for call in comms.calls if call[0] == "status" and call[1][0] == "m1"]
    assert statuses[-1][0] == "fault" and "resampler broke" in statuses[-1][1], statuses
    assert [s for s, _ in statuses].count("online") <= 1, statuses  # no fault -> online -> fault
    assert daemon.pipeline.stats()["streams"]["m1"]["windows"] >= 1  # it was heard before
