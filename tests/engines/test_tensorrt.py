"""TensorRT engine build and runtime.

The ``gpu`` tests need TensorRT, pycuda and a CUDA GPU and skip cleanly elsewhere. The engine
bookkeeping (directory naming, when a plan is stale) is pure Python and runs everywhere.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.build import DeviceInfo, engine_dir_name, sanitise, stale_reason
from engines.errors import EngineBuildError
from engines.runtime.tensorrt_backend import available


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


# -- the TensorRT runtime's threading and buffer logic, against stand-in tensorrt/pycuda ---------


class _FakeAlloc:
    registry: dict[int, _FakeAlloc] = {}

    def __init__(self, nbytes: int) -> None:
        self.buf = np.zeros(nbytes, np.uint8)
        _FakeAlloc.registry[id(self)] = self

    def __int__(self) -> int:
        return id(self)


def _fake_modules(num_classes: int, calls: list[str]):
    import threading
    import types

    cuda = types.ModuleType("pycuda.driver")
    owner: dict[str, object] = {}

    class Ctx:
        def push(self) -> None:
            owner["thread"] = threading.current_thread()
            calls.append("push")

        def pop(self) -> None:
            assert threading.current_thread() is owner["thread"], "context popped in another thread"
            calls.append("pop")

        def detach(self) -> None:
            calls.append("detach")

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return DEVICE.gpu_name

        def compute_capability(self) -> tuple[int, int]:
            return (8, 7)

        def retain_primary_context(self) -> Ctx:
            return Ctx()

    class Stream:
        handle = 1234

        def synchronize(self) -> None:
            assert threading.current_thread() is owner["thread"], "CUDA used outside the worker thread"

    def htod(dev, host, stream) -> None:
        dev.buf[: host.nbytes] = np.ascontiguousarray(host).reshape(-1).view(np.uint8)

    def dtoh(host, dev, stream) -> None:
        host.reshape(-1).view(np.uint8)[:] = dev.buf[: host.nbytes]

    cuda.init = lambda: None
    cuda.Device = Device
    cuda.Stream = Stream
    cuda.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    cuda.mem_alloc = _FakeAlloc
    cuda.memcpy_htod_async = htod
    cuda.memcpy_dtoh_async = dtoh
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda

    trt = types.ModuleType("tensorrt")
    trt.__version__ = DEVICE.trt_version

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class Context:
        def __init__(self) -> None:
            self.addr: dict[str, int] = {}
            self.batch = 0

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addr[name] = ptr

        def set_input_shape(self, name: str, shape: tuple[int, int]) -> bool:
            self.batch = shape[0]
            return True

        def execute_async_v3(self, handle: int) -> bool:
            assert handle == Stream.handle
            b, reg = self.batch, _FakeAlloc.registry
            audio = reg[self.addr["audio"]].buf[: b * 160000 * 4].view(np.float32).reshape(b, 160000)
            scores = np.repeat(audio.mean(axis=1, keepdims=True), num_classes, axis=1) + np.arange(num_classes)
            scores = scores.astype(np.float32)
            emb = np.repeat(audio[:, :1], 128, axis=1).astype(np.float32)
            reg[self.addr["scores"]].buf[: scores.nbytes] = scores.reshape(-1).view(np.uint8)
            reg[self.addr["embedding"]].buf[: emb.nbytes] = emb.reshape(-1).view(np.uint8)
            calls.append(f"execute {b}")
            return True

    class Engine:
        names = ["audio", "scores", "embedding"]
        num_io_tensors = 3

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name == "audio" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "float32"

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes):
            return Engine() if plan == b"fake plan" else None

    trt.Logger, trt.TensorIOMode, trt.Runtime = Logger, TensorIOMode, Runtime
    trt.nptype = lambda dtype: np.float32
    return {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": cuda}


@pytest.mark.device
def test_tensorrt_runtime_worker_with_stand_ins(cached_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    """The worker thread owns the context; chunks, buffers and shapes go where they should."""
    from engines.bundle import load_bundle
    from engines.runtime import open_runtime

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(cached_bundle, bundle_dir, ignore=shutil.ignore_patterns("engines"))
    bundle = load_bundle(bundle_dir)
    calls: list[str] = []
    for name, module in _fake_modules(bundle.num_classes, calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    folder = bundle_dir / "engines" / DEVICE.dir_name
    folder.mkdir(parents=True)
    (folder / "model.plan").write_bytes(b"fake plan")
    meta = {
        "tensorrt_version": DEVICE.trt_version, "gpu_name": DEVICE.gpu_name, "compute_capability": "8.7",
        "onnx_sha256": bundle.sha256("model.onnx"), "max_batch": 4,
    }
    (folder / "engine.json").write_text(json.dumps(meta))
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (10, 160000)).astype(np.float32)
    with open_runtime(bundle, backend="auto", max_batch=4) as rt:
        assert rt.type_key == "tensorrt" and "Orin" in rt.describe()
        out = rt.infer(audio)
    assert calls == ["push", "execute 4", "execute 4", "execute 2", "pop", "detach"]
    expected = audio.mean(axis=1, keepdims=True) + np.arange(bundle.num_classes)
    np.testing.assert_allclose(out.scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.embedding, np.repeat(audio[:, :1], 128, axis=1))
    # A plan for max batch 4 does not serve max batch 8, and building is refused here.
    with pytest.raises(EngineBuildError, match="max batch 4, 8 requested"):
        open_runtime(bundle, backend="tensorrt", max_batch=8, allow_build=False)
