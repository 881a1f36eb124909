"""The CPU graph with a log-mel input (``model_cpu_logmel.onnx``, issue 13) and the numpy front
end that feeds it, against the torch model and its in-graph front end (both lowerings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_asd.core.audio_io import fit_length, read_audio  # noqa: E402
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES  # noqa: E402
from edge_asd.core.logmel import LogMelStream, logmel  # noqa: E402
from engines import onnx_checks  # noqa: E402
from engines.bundle import LOGMEL_INPUT_NAME, load_bundle  # noqa: E402
from engines.errors import ExportError  # noqa: E402
from engines.export import LOGMEL_LOWERING, export_onnx  # noqa: E402
from engines.runtime import open_runtime  # noqa: E402
from tests.fixtures.random_bundle import synthetic_clips  # noqa: E402
from trainer.checkpoint import load_model  # noqa: E402
from trainer.frontend import LogMel  # noqa: E402

TOL_DB = 0.01
PARITY_TOL = 1e-3  # as tests/export/test_export.py


def _clips(shared_data: Path) -> np.ndarray:
    wavs = sorted(shared_data.rglob("*.wav"))
    assert wavs, f"no WAV under {shared_data}"
    return np.concatenate([np.stack([fit_length(read_audio(p)) for p in wavs]), synthetic_clips(6, seed=2)])


def _max_error_db(ours: np.ndarray, ref: np.ndarray) -> float:
    mask = ref > -100.0
    assert mask.any()
    return float(np.abs(ours[mask] - ref[mask]).max())


@pytest.mark.parametrize("lowering", ["stft", "conv"])
def test_numpy_and_streaming_logmel_equal_the_torch_front_end(lowering: str, shared_data: Path) -> None:
    audio = _clips(shared_data)
    with torch.inference_mode():
        ref = LogMel(lowering)(torch.from_numpy(audio)).numpy()
    assert _max_error_db(logmel(audio), ref) <= TOL_DB
    # a long stream: every window of a concatenation of the clips at a 1 s hop
    joined = audio.reshape(-1)[: 40 * SAMPLE_RATE]
    starts = range(0, joined.size - WINDOW_SAMPLES + 1, SAMPLE_RATE)
    windows = np.stack([joined[s : s + WINDOW_SAMPLES] for s in starts])
    cache = LogMelStream(SAMPLE_RATE)
    streamed = np.stack([cache.window(w, s) for s, w in zip(starts, windows)])
    with torch.inference_mode():
        ref = LogMel(lowering)(torch.from_numpy(windows)).numpy()
    assert _max_error_db(streamed, ref) <= TOL_DB
    assert cache.stats.reused > 0


def test_exported_logmel_graph_matches_torch(cached_bundle: Path, shared_data: Path) -> None:
    bundle = load_bundle(cached_bundle)
    path = bundle.logmel_onnx_path
    assert path is not None and path.is_file()
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["audio", LOGMEL_INPUT_NAME]
    assert not onnx_checks.op_types(graph) & onnx_checks.FORBIDDEN_FRONT_END_OPS
    assert "PRelu" not in onnx_checks.op_types(graph)  # decomposed like model_cpu.onnx
    assert bundle.manifest.frontend["lowering"]["model_cpu_logmel.onnx"] == "input"
    model, _ = load_model(cached_bundle.with_name(cached_bundle.name + "-run"))
    audio = _clips(shared_data)[:12]
    with torch.inference_mode():
        ref_scores, ref_emb = (t.numpy() for t in model(torch.from_numpy(audio)))
    with open_runtime(bundle, backend="onnxruntime", max_batch=8) as rt:
        assert rt.accepts_logmel
        out = rt.infer(audio, logmel=logmel(audio))
    assert np.abs(out.scores - ref_scores).max() <= PARITY_TOL
    assert np.allclose(out.embedding, ref_emb, rtol=1e-3, atol=1e-5)


def test_logmel_graph_is_float32_only(cached_bundle: Path, tmp_path: Path) -> None:
    model, _ = load_model(cached_bundle.with_name(cached_bundle.name + "-run"))
    with pytest.raises(ExportError, match="float32 only"):
        export_onnx(model, tmp_path / "x.onnx", precision="fp16", lowering=LOGMEL_LOWERING)
