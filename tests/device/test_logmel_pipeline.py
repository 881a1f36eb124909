"""The listen pipeline with the streaming log-mel (issue 13): the same scores as the
self-contained CPU graph, window for window, from a 48 kHz file replayed through the capture
and resampler; each stream's cache is reused between hops. Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_asd.core.audio_io import write_wav

pytestmark = pytest.mark.device
pytest.importorskip("onnxruntime")


def _scores(cached_bundle: Path, wav: Path, tmp_path: Path, onnx_file: str | None) -> tuple[list[float], object]:
    from edge_asd.config import load_config
    from edge_asd.daemon.listen import build_daemon, run_daemon
    from engines.runtime import open_runtime
    from tests.fixtures.comms import MemoryCommunicator

    state = tmp_path / f"state-{onnx_file or 'default'}"
    config = tmp_path / f"config-{onnx_file or 'default'}.yaml"
    config.write_text(yaml.safe_dump({
        "bundle": str(cached_bundle),
        "backend": "onnxruntime",
        "state_dir": str(state),
        "sources": [{"name": "line", "type": "file", "path": str(wav), "realtime": False}],
        "streams": [{"name": "press1", "source": "line", "classes": ["fan/section_00"]}],
    }))  # fmt: skip
    settings = {"max_batch": 4} if onnx_file is None else {"max_batch": 4, "onnx_file": onnx_file}
    runtime = open_runtime(cached_bundle, backend="onnxruntime", **settings)
    comms = MemoryCommunicator()
    daemon = build_daemon(load_config(config), comms=comms, runtime=runtime)
    assert run_daemon(daemon, install_signals=False) == 0
    stream = daemon.pipeline.streams[0]
    return [s for name, s, _ in comms.scores if name == "press1"], stream


def test_pipeline_scores_equal_with_and_without_the_logmel_graph(cached_bundle: Path, tmp_path: Path) -> None:
    from engines.bundle import load_bundle

    if load_bundle(cached_bundle).logmel_onnx_path is None:
        pytest.skip(f"{cached_bundle} predates model_cpu_logmel.onnx: run the main suite (with torch) first")
    rng = np.random.default_rng(0)
    sr = 48000
    t = np.arange(18 * sr) / sr
    audio = 0.3 * np.sin(2 * np.pi * (180 + 20 * np.sin(2 * np.pi * 0.1 * t)) * t) + 0.03 * rng.standard_normal(t.size)
    wav = tmp_path / "line48k.wav"
    write_wav(wav, audio.astype(np.float32), sr)
    ref, ref_stream = _scores(cached_bundle, wav, tmp_path, "model_cpu.onnx")
    got, stream = _scores(cached_bundle, wav, tmp_path, None)
    # Both runs score the same hop grid; a run whose file raced ahead of its first tick skipped
    # its oldest windows (counted in `skipped`), so the windows both scored are the last ones.
    n = min(len(got), len(ref))
    assert n >= 5
    assert len(got) + stream.counters.skipped == len(ref) + ref_stream.counters.skipped
    np.testing.assert_allclose(got[-n:], ref[-n:], rtol=1e-4, atol=1e-4)
    assert ref_stream.logmel.stats.windows == 0  # the self-contained graph computes its own front end
    assert stream.logmel.stats.windows == len(got) and stream.logmel.stats.reused > 0
