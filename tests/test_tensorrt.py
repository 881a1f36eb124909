"""TensorRT engine build and runtime.

The ``gpu`` tests need TensorRT, pycuda and a CUDA GPU and skip cleanly elsewhere. The engine
bookkeeping (directory naming, when a plan is stale) is pure Python and runs everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.build import DeviceInfo, engine_dir_name, sanitise, stale_reason
from engines.errors import EngineBuildError
from engines.runtime.tensorrt_backend import available


@pytest.fixture(scope="module")
def cached_bundle(artifacts_dir: Path) -> Path:
    path = artifacts_dir / "bundle-random"
    if importlib.util.find_spec("torch") is not None:
        from engines.export import ensure_random_bundle

        return ensure_random_bundle(path)
    if not (path / "model.json").is_file():
        pytest.skip(f"no cached bundle at {path}: run the main test suite (with torch) first")
    return path


@pytest.fixture(scope="module")
def gpu() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(f"TensorRT/CUDA not available: {reason}")


DEVICE = DeviceInfo(trt_version="10.3.0.30", gpu_name="Orin (nvgpu)", compute_capability="8.7")


@pytest.mark.device
def test_engine_dir_name() -> None:
    assert sanitise("NVIDIA GeForce RTX 4090") == "NVIDIA-GeForce-RTX-4090"
    assert sanitise("Orin (nvgpu)") == "Orin-nvgpu"
    assert sanitise("///") == "gpu"
    assert engine_dir_name("10.3.0.30", "Orin (nvgpu)", "8.7") == "10.3.0.30_Orin-nvgpu_sm87"
    assert DEVICE.dir_name == "10.3.0.30_Orin-nvgpu_sm87"


@pytest.mark.device
def test_stale_reason() -> None:
    meta = {
        "tensorrt_version": "10.3.0.30",
        "gpu_name": "Orin (nvgpu)",
        "compute_capability": "8.7",
        "onnx_sha256": "a" * 64,
        "max_batch": 16,
    }
    assert stale_reason(meta, DEVICE, "a" * 64, 16) is None
    assert stale_reason(meta, DEVICE, "a" * 64, 8) is None  # a larger engine serves smaller batches
    assert "max batch 16, 32 requested" in stale_reason(meta, DEVICE, "a" * 64, 32)
    assert "ONNX sha256" in stale_reason(meta, DEVICE, "b" * 64, 16)
    assert "TensorRT version" in stale_reason({**meta, "tensorrt_version": "10.1.0"}, DEVICE, "a" * 64, 16)
    assert "GPU" in stale_reason({**meta, "gpu_name": "Xavier"}, DEVICE, "a" * 64, 16)
    assert "engine.json" in stale_reason(None, DEVICE, "a" * 64, 16)


@pytest.mark.device
def test_no_build_refuses_with_reason(cached_bundle: Path, tmp_path: Path) -> None:
    from engines.build import ensure_engine

    bundle = tmp_path / "bundle"
    shutil.copytree(cached_bundle, bundle, ignore=shutil.ignore_patterns("engines"))
    with pytest.raises(EngineBuildError, match="no plan.*edge-asd build-engine"):
        ensure_engine(bundle, allow_build=False, device=DEVICE)
    folder = bundle / "engines" / DEVICE.dir_name
    folder.mkdir(parents=True)
    (folder / "model.plan").write_bytes(b"not a plan")
    (folder / "engine.json").write_text(json.dumps({"tensorrt_version": "9.0"}))
    with pytest.raises(EngineBuildError, match="TensorRT version '9.0'"):
        ensure_engine(bundle, allow_build=False, device=DEVICE)


@pytest.mark.gpu
def test_build_load_and_match_onnxruntime(gpu, cached_bundle: Path, tmp_path: Path) -> None:
    from scipy.stats import spearmanr

    from engines.build import build_engine, read_engine_json
    from engines.runtime import open_runtime

    bundle = tmp_path / "bundle"
    shutil.copytree(cached_bundle, bundle, ignore=shutil.ignore_patterns("engines"))
    messages: list[str] = []
    files = build_engine(bundle, max_batch=8, workspace_mib=512, progress=messages.append)
    assert files.built and files.plan.is_file() and messages
    meta = read_engine_json(files.meta)
    assert meta["max_batch"] == 8 and meta["precision"] == "fp16" and meta["build_seconds"] >= 0
    again = build_engine(bundle, max_batch=8, allow_build=False)
    assert not again.built  # up to date: reused

    rng = np.random.default_rng(0)
    t = np.arange(160000) / 16000.0
    audio = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000, (20, 1)) * t) + rng.normal(0, 0.02, (20, 160000)))
    audio = audio.astype(np.float32)
    with open_runtime(bundle, backend="tensorrt", max_batch=8) as trt_rt:
        trt_out = trt_rt.infer(audio)
    with open_runtime(bundle, backend="onnxruntime", max_batch=8) as ort_rt:
        ort_out = ort_rt.infer(audio)
    rho = spearmanr(trt_out.scores.ravel(), ort_out.scores.ravel()).statistic
    max_diff = float(np.abs(trt_out.scores - ort_out.scores).max())
    print(f"TensorRT fp16 vs onnxruntime fp32: spearman {rho:.5f}, max |diff| {max_diff:.4f}")
    assert rho >= 0.999 and max_diff <= 0.05


@pytest.mark.gpu
def test_changed_onnx_triggers_rebuild(gpu, cached_bundle: Path, tmp_path: Path) -> None:
    from engines.build import build_engine, read_engine_json

    bundle = tmp_path / "bundle"
    shutil.copytree(cached_bundle, bundle, ignore=shutil.ignore_patterns("engines"))
    first = build_engine(bundle, max_batch=2, workspace_mib=512)
    meta = read_engine_json(first.meta)
    meta["onnx_sha256"] = "0" * 64  # as if model.onnx had been re-exported
    first.meta.write_text(json.dumps(meta))
    with pytest.raises(EngineBuildError, match="ONNX sha256"):
        build_engine(bundle, max_batch=2, allow_build=False)
    second = build_engine(bundle, max_batch=2, workspace_mib=512)
    assert second.built and read_engine_json(second.meta)["onnx_sha256"] != "0" * 64
    second.plan.write_bytes(second.plan.read_bytes()[:4096])  # a plan cut short by a full disk
    with pytest.raises(EngineBuildError, match="does not deserialize"):
        build_engine(bundle, max_batch=2, allow_build=False)
    assert build_engine(bundle, max_batch=2, workspace_mib=512).built
