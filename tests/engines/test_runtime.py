"""Runtimes and the scorer on the device path (numpy + onnxruntime, no torch)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_asd.config import ConfigError, validate_config
from edge_asd.core import scoring
from engines.bundle import ScoreConfig, load_bundle
from engines.errors import BackendUnavailableError, InputError
from engines.runtime import (
    AutoRuntimeConfig,
    OnnxRuntimeConfig,
    RuntimeConfig,
    TensorRTRuntimeConfig,
    backend_status,
    entries,
    open_runtime,
    resolve_backend,
    resolve_config,
)
from engines.runtime.base import validate_audio
from engines.scorer import Scorer, classes_for_file

pytestmark = pytest.mark.device
pytest.importorskip("onnxruntime")


def _clips(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(160000) / 16000.0
    freqs = rng.uniform(100, 4000, size=(n, 1))
    audio = 0.3 * np.sin(2 * np.pi * freqs * t) + rng.normal(0, 0.02, (n, 160000))
    return audio.astype(np.float32)


@pytest.fixture(scope="module")
def runtime(cached_bundle: Path):
    rt = open_runtime(cached_bundle, backend="onnxruntime", max_batch=4)
    yield rt
    rt.close()


def test_import_needs_neither_torch_nor_gpu() -> None:
    import subprocess

    code = (
        "import sys, engines.runtime, engines.scorer, engines.build, engines.bundle;"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'trainer'], 'trainer imported';"
        "assert 'tensorrt' not in sys.modules and 'pycuda' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_onnxruntime_infer_and_chunking(runtime, no_torch_guard) -> None:
    audio = _clips(10, seed=1)  # > max_batch 4: three chunks
    out = runtime.infer(audio)
    assert out.scores.shape == (10, runtime.num_classes) and out.embedding.shape == (10, 128)
    assert out.scores.dtype == np.float32 and np.all(np.isfinite(out.scores))
    single = np.concatenate([runtime.infer(audio[i : i + 1]).scores for i in range(10)])
    np.testing.assert_allclose(out.scores, single, rtol=1e-4, atol=1e-4)
    # the CPU graph: model_cpu_logmel.onnx fed by the numpy log-mel (issue 13), model_cpu.onnx in older bundles
    assert "model_cpu_logmel.onnx" in runtime.describe() or "model_cpu.onnx" in runtime.describe()


def test_input_validation_names_the_expected_shape(runtime) -> None:
    with pytest.raises(InputError, match=r"shape \(2, 16000\); expected a float32 array of shape \(batch, 160000\)"):
        runtime.infer(np.zeros((2, 16000), np.float32))
    with pytest.raises(InputError, match="dtype float64"):
        runtime.infer(np.zeros((1, 160000)))
    with pytest.raises(InputError, match="shape \\(160000,\\)"):
        runtime.infer(np.zeros(160000, np.float32))
    bad = np.zeros((1, 160000), np.float32)
    bad[0, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        runtime.infer(bad)
    with pytest.raises(InputError, match="got list"):
        validate_audio([[0.0] * 160000])


def test_missing_backend_says_what_to_install(cached_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = backend_status()
    if status["tensorrt"] is not None:
        with pytest.raises(BackendUnavailableError, match="python3-libnvinfer"):
            open_runtime(cached_bundle, backend="tensorrt")
        assert resolve_backend("auto") == "onnxruntime"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edge-asd\[onnx\]'"):
        open_runtime(cached_bundle, backend="onnxruntime")
    with pytest.raises(BackendUnavailableError, match="unknown backend 'cuda'"):
        open_runtime(cached_bundle, backend="cuda")


def test_torch_backend_without_torch_is_a_clear_error(cached_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(BackendUnavailableError, match="needs PyTorch"):
        open_runtime(cached_bundle, backend="torch")


def test_runtime_config_union(cached_bundle: Path) -> None:
    from pydantic import TypeAdapter, ValidationError

    adapter = TypeAdapter(RuntimeConfig)
    cfg = adapter.validate_python({"type": "onnxruntime", "threads": 1, "max_batch": 2})
    assert isinstance(cfg, OnnxRuntimeConfig)
    assert isinstance(adapter.validate_python({"type": "tensorrt"}), TensorRTRuntimeConfig)
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "tensorrt", "bogus": 1})
    with open_runtime(cached_bundle, backend=cfg) as rt:
        assert rt.max_batch == 2 and rt.infer(_clips(3, 2)).scores.shape[0] == 3
    if backend_status()["tensorrt"] is not None:
        # auto falls back to onnxruntime and drops the TensorRT-only build hook
        with open_runtime(cached_bundle, backend="auto", max_batch=2, progress=print) as rt:
            assert rt.type_key == "onnxruntime"


def test_registry_has_one_backend_per_config_type() -> None:
    from typing import get_args

    members = get_args(get_args(RuntimeConfig)[0])
    types = {m.model_fields["type"].default: m for m in members}
    assert set(types) == {"auto", *entries()}
    for key, entry in entries().items():
        assert entry.config_model is types[key]


def test_runtime_from_the_config_section(cached_bundle: Path, no_torch_guard) -> None:
    """`runtime: {type: onnxruntime, threads: 1}` in the daemon's config opens onnxruntime so."""
    from edge_asd.daemon.listen import open_configured_runtime

    cfg = validate_config({
        "bundle": str(cached_bundle),
        "runtime": {"type": "onnxruntime", "threads": 1},
        "sources": [{"name": "s", "type": "synth"}],
        "streams": [{"name": "x", "source": "s", "classes": ["fan/section_00"]}],
    })
    with open_configured_runtime(cfg, load_bundle(cached_bundle), streams=3) as rt:
        assert rt.type_key == "onnxruntime" and rt.threads == 1
        assert rt.max_batch == 1  # the config's default (never more rows than streams either)
        assert "(1 threads)" in rt.describe()
    with open_runtime(cached_bundle, cfg.runtime) as rt:
        assert rt.max_batch == 1 and rt.threads == 1


def test_named_backend_rejects_settings_of_another(cached_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="workspace_mib: unknown key 'workspace_mib'"):
        open_runtime(cached_bundle, backend="onnxruntime", workspace_mib=512)
    with pytest.raises(ConfigError, match="onnx_file: invalid value 'x.onnx'"):
        open_runtime(cached_bundle, backend="onnxruntime", onnx_file="x.onnx")


def test_auto_resolves_to_a_backend_that_can_run_here() -> None:
    chosen = resolve_config(AutoRuntimeConfig(threads=2))
    if backend_status()["tensorrt"] is None:
        assert isinstance(chosen, TensorRTRuntimeConfig) and chosen.max_batch == 16
    else:
        assert isinstance(chosen, OnnxRuntimeConfig) and (chosen.threads, chosen.max_batch) == (2, 1)
    explicit = OnnxRuntimeConfig(max_batch=3)
    assert resolve_config(explicit) is explicit


def _with_mode(cached_bundle: Path, mode: str):
    bundle = load_bundle(cached_bundle)
    bundle.manifest = bundle.manifest.model_copy(update={"score": ScoreConfig(mode=mode, knn_k=bundle.manifest.score.knn_k)})
    return bundle


@pytest.mark.parametrize("mode", ["ce", "knn", "ensemble"])
def test_scorer_modes_take_the_min_over_classes(cached_bundle: Path, runtime, mode: str) -> None:
    bundle = _with_mode(cached_bundle, mode)
    scorer = Scorer(bundle)
    out = runtime.infer(_clips(3, seed=4))
    rows = [[0], [1, 2], list(range(bundle.num_classes))]
    result = scorer.score_rows(out, rows)
    k = bundle.manifest.score.knn_k
    for row, classes in enumerate(rows):
        per_class = []
        for c in classes:
            ce = float(out.scores[row, c])
            knn = float(scoring.knn_scores(out.embedding[row : row + 1], bundle.embeddings(c), k)[0])
            cal = bundle.manifest.thresholds.classes[bundle.classes[c]]
            ens = float(scoring.ensemble(ce, knn, np.array(cal.reference["ce"]), np.array(cal.reference["knn"])))
            per_class.append({"ce": ce, "knn": knn, "ensemble": ens}[mode])
        assert result[row].score == pytest.approx(min(per_class), rel=1e-6, abs=1e-9)
        assert result[row].class_index == classes[int(np.argmin(per_class))]
        assert result[row].threshold == scorer.threshold(result[row].class_index)
    np.testing.assert_allclose(scorer.score(out, rows), [r.score for r in result])


def test_scorer_threshold_and_verdict(cached_bundle: Path) -> None:
    scorer = Scorer(load_bundle(cached_bundle))
    cal = load_bundle(cached_bundle).manifest.thresholds.classes["fan/section_00"]
    assert scorer.threshold(2) == pytest.approx(cal.threshold)
    from engines.errors import BundleError

    with pytest.raises(BundleError):
        scorer.threshold(42)


def test_classes_for_file() -> None:
    classes = ["ToyCar/id_01", "ToyCar/section_00", "fan/section_00", "fan/id_00", "valve/section_00"]
    assert classes_for_file("/d/dcase2020/ToyCar/test/normal_id_01_00000001.wav", classes) == [0]
    assert classes_for_file("/d/ToyCar/train/section_00_source_train_normal_0001_x.wav", classes) == [1]
    assert classes_for_file("data/fan/test/section_00_target_test_anomaly_0022_m-n_W.wav", classes) == [2]
    assert classes_for_file("anomaly_id_00_0001.wav", classes) == [3]  # the id names one class only
    assert classes_for_file("/x/pump/section_00_0001.wav", classes) == list(range(5))  # ambiguous -> all
    assert classes_for_file("recording.wav", classes) == list(range(5))


# -- parallel runs (issue 13): chunks run at once, results joined in order ---------------------
@pytest.mark.parametrize(
    "runs, max_batch, rows, chunks",
    [(2, 1, 5, [1] * 5), (2, 8, 8, [4, 4]), (3, 2, 7, [2, 2, 2, 1]), (1, 4, 10, [4, 4, 2])],
)  # a batch is spread over the runs: 8 windows on 2 runs are 2 chunks of 4, not one of 8
def test_parallel_runs_give_the_rows_in_order(
    cached_bundle: Path, runtime, runs: int, max_batch: int, rows: int, chunks: list[int]
) -> None:
    audio = _clips(rows, seed=7)
    expected = runtime.infer(audio)  # one run at a time (max_batch 4 on every thread)
    with open_runtime(cached_bundle, backend="onnxruntime", max_batch=max_batch, threads=max(2, runs), parallel_runs=runs) as rt:
        calls: list[int] = []
        run_chunk = rt._run_chunk

        def counted(a: np.ndarray, logmel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            calls.append(a.shape[0])
            return run_chunk(a, logmel)

        rt._run_chunk = counted  # type: ignore[method-assign]
        pending = rt.submit(audio)
        out = pending.result()
        assert f"{runs} parallel runs" in rt.describe() or runs == 1
    assert sorted(calls) == sorted(chunks)
    np.testing.assert_allclose(out.scores, expected.scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.embedding, expected.embedding, rtol=1e-4, atol=1e-4)


def test_a_failing_chunk_fails_the_whole_inference_after_the_others_finish(cached_bundle: Path) -> None:
    with open_runtime(cached_bundle, backend="onnxruntime", max_batch=1, threads=2, parallel_runs=2) as rt:
        finished: list[int] = []
        run_chunk = rt._run_chunk

        def flaky(a: np.ndarray, logmel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            if float(a[0, 0]) == 0.5:
                raise RuntimeError("engine lost its device")
            out = run_chunk(a, logmel)
            finished.append(1)
            return out

        rt._run_chunk = flaky  # type: ignore[method-assign]
        audio = _clips(4, seed=3)
        audio[1, 0] = 0.5
        with pytest.raises(RuntimeError, match="engine lost its device"):
            rt.infer(audio)
        done = len(finished)  # the chunks handed over before the failure showed: 1 to 3
        time.sleep(0.3)
        assert 1 <= done <= 3 and len(finished) == done  # none was left running behind the error
        ok = rt.infer(_clips(2, seed=4))  # and the runtime still works
        assert ok.scores.shape[0] == 2
    with pytest.raises(RuntimeError, match="closed"):
        rt.submit(_clips(1, seed=5))


def test_chunks_run_at_the_same_time(cached_bundle: Path) -> None:
    """Both chunks must be inside the engine at once: run one after the other, the barrier breaks."""
    import threading

    with open_runtime(cached_bundle, backend="onnxruntime", max_batch=1, threads=2, parallel_runs=2) as rt:
        barrier = threading.Barrier(2, timeout=20)
        run_chunk = rt._run_chunk

        def together(a: np.ndarray, logmel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            barrier.wait()
            return run_chunk(a, logmel)

        rt._run_chunk = together  # type: ignore[method-assign]
        assert rt.infer(_clips(2, seed=9)).scores.shape[0] == 2


def test_a_failing_chunk_run_in_line_stops_the_batch(cached_bundle: Path) -> None:
    with open_runtime(cached_bundle, backend="onnxruntime", max_batch=1, threads=1, parallel_runs=1) as rt:
        ran: list[int] = []

        def broken(a: np.ndarray, logmel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            ran.append(1)
            raise RuntimeError("CUDA context lost")

        rt._run_chunk = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="context lost"):
            rt.infer(_clips(3, seed=2))
        assert ran == [1]  # the engine may be broken: the other chunks were not run


def test_parallel_runs_default_and_validation(cached_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    with open_runtime(cached_bundle, backend="onnxruntime", threads=2) as rt:
        if rt.providers[0] != "CPUExecutionProvider":
            pytest.skip("the CUDA provider runs one at a time")
        assert (rt.parallel_runs, rt.threads) == (2, 1)  # CPU provider: one single-threaded run per thread
    with open_runtime(cached_bundle, backend="onnxruntime", threads=4, parallel_runs=2) as rt:
        assert (rt.parallel_runs, rt.threads) == (2, 2)
    with open_runtime(cached_bundle, backend="onnxruntime", threads=16) as rt:
        assert (rt.parallel_runs, rt.threads) == (4, 4)  # at most 4 by default: each run holds its activations
    with open_runtime(cached_bundle, backend="onnxruntime", threads=2, parallel_runs=3) as rt:
        assert (rt.parallel_runs, rt.threads) == (2, 1)
    assert "parallel_runs 3 is more than the 2 threads" in caplog.text
    with pytest.raises(ConfigError, match="parallel_runs"):
        open_runtime(cached_bundle, backend="onnxruntime", parallel_runs=0)
