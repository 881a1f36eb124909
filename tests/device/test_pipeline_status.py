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


def _one_stream_daemon(artifacts_dir: Path, tmp_path: Path, seconds: float, seed: int, **config: object):
    """A daemon on one file source of ``seconds`` of a synthetic machine (not paced), and its comms."""
    from edge_asd.config import validate_config
    from edge_asd.daemon.listen import build_daemon
    from engines.bundle import load_bundle

    bundle = synth_bundle(artifacts_dir)
    cls = load_bundle(bundle).classes[0]
    machine_type, machine_id = cls.split("/")
    audio, _ = recording_with_anomaly(machine_type, int(machine_id[-2:]), seconds, None, 1.0, "rattle", seed=seed)
    wav = tmp_path / "machine.wav"
    write_wav(wav, np.asarray(audio, np.float32))
    source = {"name": "mic", "type": "file", "path": str(wav), "realtime": False, **config.pop("source", {})}  # type: ignore[dict-item]
    cfg = validate_config({
        "bundle": str(bundle), "backend": "onnxruntime", "state_dir": str(tmp_path / "state"), "node_id": "n",
        "sources": [source], "streams": [{"name": "m1", "source": "mic", "classes": [cls]}],
        "evidence": {"enabled": False}, **config,
    })  # fmt: skip
    comms = MemoryCommunicator()
    return build_daemon(cfg, comms=comms), comms


def test_non_finite_engine_output_is_one_fault_not_a_flapping_status(artifacts_dir: Path, tmp_path: Path) -> None:
    from edge_asd.daemon.listen import run_daemon

    daemon, comms = _one_stream_daemon(artifacts_dir, tmp_path, 20.0, 5, hop_s=0.5)
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
    from edge_asd.daemon.listen import run_daemon

    daemon, comms = _one_stream_daemon(artifacts_dir, tmp_path, 16.0, 6, source={"loop": True})
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


def test_the_loop_ends_on_failed_inputs_only_once_nothing_else_can_be_heard() -> None:
    """One failed input among live ones is a fault of its streams, not the end; a finished file
    beside a failed input ends the loop once the file's windows are scored."""
    from types import SimpleNamespace

    from edge_asd.daemon.pipeline import Pipeline

    def capture(error: Exception | None, done: bool) -> SimpleNamespace:
        return SimpleNamespace(error=error, done=done)

    def pipeline(*captures: SimpleNamespace, file_windows_left: bool = False) -> bool:
        streams = [SimpleNamespace(capture=c, buffer=SimpleNamespace(end_index=20 if file_windows_left else 5), next_end=10)
                   for c in captures]  # fmt: skip
        fake = SimpleNamespace(_captures={id(c): c for c in captures}, streams=streams)
        return Pipeline.inputs_failed.fget(fake)  # type: ignore[attr-defined]

    broken = capture(RuntimeError("resampler broke"), True)
    assert pipeline(broken, capture(RuntimeError("too"), True))
    assert not pipeline(broken, capture(None, False))  # a live input: its streams are still heard
    assert pipeline(broken, capture(None, True))  # a file that ended, all its windows scored
    assert not pipeline(broken, capture(None, True), file_windows_left=True)
    assert not pipeline(capture(None, True))  # finished inputs alone: the normal end of a replay
    assert not pipeline()
