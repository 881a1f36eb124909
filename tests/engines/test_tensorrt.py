"""TensorRT engine build and runtime.

The ``gpu`` tests need TensorRT, pycuda and a CUDA GPU and skip cleanly elsewhere. The engine
bookkeeping (directory naming, when a plan is stale) is pure Python and runs everywhere.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from engines.build import DeviceInfo, engine_dir_name, sanitise, stale_reason
from engines.errors import BackendUnavailableError, EngineBuildError
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

FAKE_DEVICE = DeviceInfo(
    trt_version=DEVICE.trt_version, gpu_name=DEVICE.gpu_name, compute_capability="8.7", sm_count=8, memory_gib=16
)


class _FakeAlloc:
    registry: weakref.WeakValueDictionary[int, _FakeAlloc] = weakref.WeakValueDictionary()  # int(ptr) -> buffer
    freed: list[str] = []  # the thread each device buffer was freed in

    def __init__(self, nbytes: int) -> None:
        self.buf = np.zeros(nbytes, np.uint8)
        _FakeAlloc.registry[id(self)] = self

    def __int__(self) -> int:
        return id(self)

    def __del__(self) -> None:
        _FakeAlloc.freed.append(threading.current_thread().name)


def _fake_modules(
    num_classes: int,
    calls: list[str],
    *,
    push_error: BaseException | None = None,
    embedding_dtype: str = "float32",
    alloc_error: BaseException | None = None,
    trt_version: str = DEVICE.trt_version,
):
    import types

    cuda = types.ModuleType("pycuda.driver")
    owner: dict[str, object] = {}

    class Ctx:
        """pycuda's primary context as far as teardown goes: ``detach()`` on the current context
        releases it; on one that is not current (popped, or never pushed) pycuda pushes it
        again first and the driver leaves it current."""

        def __init__(self) -> None:
            self.current_in: threading.Thread | None = None

        def push(self) -> None:
            calls.append(f"push in {threading.current_thread().name}")
            if push_error is not None:
                raise push_error
            owner["thread"] = self.current_in = threading.current_thread()

        def pop(self) -> None:
            assert threading.current_thread() is owner["thread"], "context popped in another thread"
            calls.append("pop")
            self.current_in = None

        def detach(self) -> None:
            here = threading.current_thread()
            state = "current" if self.current_in is here else "not current"
            calls.append(f"detach ({state}) in {here.name}")

    class DeviceAttribute:
        MULTIPROCESSOR_COUNT = "mp"

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return FAKE_DEVICE.gpu_name

        def compute_capability(self) -> tuple[int, int]:
            return (8, 7)

        def get_attribute(self, attr: str) -> int:
            assert attr == DeviceAttribute.MULTIPROCESSOR_COUNT
            return FAKE_DEVICE.sm_count

        def total_memory(self) -> int:
            return int(15.6 * 2**30)  # a 16 GB Orin NX reports a little less

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

    def mem_alloc(nbytes: int) -> _FakeAlloc:
        if alloc_error is not None and len(_FakeAlloc.registry):  # the second buffer fails
            raise alloc_error
        return _FakeAlloc(nbytes)

    cuda.init = lambda: None
    cuda.Device = Device
    cuda.device_attribute = DeviceAttribute
    cuda.Stream = Stream
    cuda.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    cuda.mem_alloc = mem_alloc
    cuda.memcpy_htod_async = htod
    cuda.memcpy_dtoh_async = dtoh
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda

    trt = types.ModuleType("tensorrt")
    trt.__version__ = trt_version

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
            return embedding_dtype if name == "embedding" else "float32"

        def create_execution_context(self) -> Context:
            return Context()

        def __del__(self) -> None:
            calls.append(f"free engine in {threading.current_thread().name}")

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes):
            return Engine() if plan == b"fake plan" else None

    trt.Logger, trt.TensorIOMode, trt.Runtime = Logger, TensorIOMode, Runtime
    trt.nptype = lambda dtype: {"float32": np.float32, "float16": np.float16}[dtype]
    _add_fake_builder(trt, calls)
    return {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": cuda}


def _add_fake_builder(trt, calls: list[str]) -> None:
    """Enough of TensorRT's builder API for ``build_plan``: records the profile and the timing cache."""

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self) -> None:
            pass

    class Flag:
        STRONGLY_TYPED = 3

    class Tensor:
        name = "audio"

    class Network:
        num_outputs = 0

        def get_input(self, i: int) -> Tensor:
            return Tensor()

    class Parser:
        num_errors = 0

        def __init__(self, network: Network, logger: object) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            return True

    class Cache:
        def __init__(self, blob: bytes) -> None:
            self.blob = blob

        def serialize(self) -> bytes:
            return b"timing cache v2"

    class Profile:
        def set_shape(self, name: str, lo, opt, hi) -> None:
            calls.append(f"profile {name} min {lo[0]} opt {opt[0]} max {hi[0]}")

    class Config:
        progress_monitor = None

        def __init__(self) -> None:
            self.cache: Cache | None = None

        def set_memory_pool_limit(self, pool: object, size: int) -> None:
            pass

        def add_optimization_profile(self, profile: Profile) -> None:
            pass

        def create_timing_cache(self, blob: bytes) -> Cache:
            if blob.startswith(b"garbage"):
                raise RuntimeError("invalid timing cache")
            return Cache(bytes(blob))

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            if cache.blob.startswith(b"foreign"):
                return False
            calls.append(f"timing cache {cache.blob!r}")
            self.cache = cache
            return True

        def get_timing_cache(self) -> Cache:
            assert self.cache is not None
            return self.cache

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            calls.append(f"build in {threading.current_thread().name}")
            return b"fake plan"

    trt.ILogger, trt.NetworkDefinitionCreationFlag, trt.OnnxParser, trt.Builder = ILogger, Flag, Parser, Builder
    trt.MemoryPoolType = type("MemoryPoolType", (), {"WORKSPACE": 0})
    trt.BuilderFlag = type("BuilderFlag", (), {})


@pytest.fixture
def fake_bundle(cached_bundle: Path, tmp_path: Path):
    from engines.bundle import load_bundle

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(cached_bundle, bundle_dir, ignore=shutil.ignore_patterns("engines"))
    _FakeAlloc.registry.clear()
    _FakeAlloc.freed.clear()
    return load_bundle(bundle_dir)


def _install_fakes(monkeypatch, bundle, calls: list[str], **options) -> Path:
    for name, module in _fake_modules(bundle.num_classes, calls, **options).items():
        monkeypatch.setitem(sys.modules, name, module)
    folder = bundle.path / "engines" / FAKE_DEVICE.dir_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.plan").write_bytes(b"fake plan")
    meta = {
        "tensorrt_version": FAKE_DEVICE.trt_version, "gpu_name": FAKE_DEVICE.gpu_name, "compute_capability": "8.7",
        "sm_count": FAKE_DEVICE.sm_count, "memory_gib": FAKE_DEVICE.memory_gib,
        "onnx_sha256": bundle.sha256("model.onnx"), "max_batch": 4,
    }
    (folder / "engine.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.device
def test_tensorrt_runtime_worker_with_stand_ins(fake_bundle, monkeypatch) -> None:
    """The worker thread owns the context; chunks, buffers and shapes go where they should."""
    from engines.runtime import open_runtime

    bundle = fake_bundle
    calls: list[str] = []
    _install_fakes(monkeypatch, bundle, calls)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (10, 160000)).astype(np.float32)
    with open_runtime(bundle, backend="auto", max_batch=4) as rt:
        assert rt.type_key == "tensorrt" and "Orin" in rt.describe() and "8 SMs" in rt.describe()
        out = rt.infer(audio)
    # Teardown frees the engine, then detach()es the context while it is still current in the
    # worker (pycuda's cuDevicePrimaryCtxRelease path); never pop(), which would make detach()
    # push it again, and never only dropping it (the destructor leaks the retain).
    assert calls == [
        "push in tensorrt-infer", "execute 4", "execute 4", "execute 2", "free engine in tensorrt-infer",
        "detach (current) in tensorrt-infer",
    ]
    assert set(_FakeAlloc.freed) == {"tensorrt-infer"}
    expected = audio.mean(axis=1, keepdims=True) + np.arange(bundle.num_classes)
    np.testing.assert_allclose(out.scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.embedding, np.repeat(audio[:, :1], 128, axis=1))
    # A plan for max batch 4 does not serve max batch 8, and building is refused here.
    with pytest.raises(EngineBuildError, match="max batch 4, 8 requested"):
        open_runtime(bundle, backend="tensorrt", max_batch=8, allow_build=False)


@pytest.mark.device
@pytest.mark.timeout(60)
def test_a_failing_context_push_fails_the_constructor_instead_of_hanging_it(fake_bundle, monkeypatch) -> None:
    from engines.runtime import open_runtime

    calls: list[str] = []
    _install_fakes(monkeypatch, fake_bundle, calls, push_error=RuntimeError("cuCtxPushCurrent failed: unknown error"))
    with pytest.raises(EngineBuildError, match="loading the TensorRT engine .* failed: RuntimeError: cuCtxPushCurrent"):
        open_runtime(fake_bundle, backend="tensorrt", max_batch=4)
    # Never popped (it was never pushed), but the retain is still given back, in the worker.
    assert calls == ["push in tensorrt-infer", "detach (not current) in tensorrt-infer"]


def _frames(err: BaseException) -> list[str]:
    names = []
    tb = err.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


@pytest.mark.device
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"embedding_dtype": "float16"}, "tensor embedding is float16, expected float32"),
        ({"alloc_error": MemoryError("cuMemAlloc failed: out of memory")}, "failed: MemoryError: cuMemAlloc failed"),
    ],
)
def test_a_failed_load_frees_engine_and_buffers_in_the_worker(fake_bundle, monkeypatch, options, message) -> None:
    """The error that reaches the caller holds no frame of the load: the engine and every buffer
    made before the failure are freed in the worker thread, with the context current, before the
    context is released."""
    from engines.runtime import open_runtime

    calls: list[str] = []
    _install_fakes(monkeypatch, fake_bundle, calls, **options)
    with pytest.raises(EngineBuildError, match=message) as caught:
        open_runtime(fake_bundle, backend="tensorrt", max_batch=4)
    assert "_load" not in _frames(caught.value) and caught.value.__context__ is None
    assert calls == ["push in tensorrt-infer", "free engine in tensorrt-infer", "detach (current) in tensorrt-infer"]
    assert _FakeAlloc.freed and set(_FakeAlloc.freed) == {"tensorrt-infer"}


@pytest.mark.device
def test_tensorrt_older_than_10_is_refused_with_the_jetpack_to_install(monkeypatch) -> None:
    from engines.build import MIN_TENSORRT_MAJOR, import_tensorrt, tensorrt_version_problem

    assert MIN_TENSORRT_MAJOR == 10
    for ok in ("10.0.1", "10.3.0.30", "11.0.0", "not-a-version"):
        assert tensorrt_version_problem(ok) is None
    problem = tensorrt_version_problem("8.6.2.3")
    assert problem is not None and "TensorRT 8.6.2.3 is too old" in problem
    assert "JetPack 6.1" in problem and "JetPack 6.0 ships TensorRT 8.6" in problem and "onnxruntime" in problem
    calls: list[str] = []
    for name, module in _fake_modules(2, calls, trt_version="8.6.2.3").items():
        monkeypatch.setitem(sys.modules, name, module)
    with pytest.raises(BackendUnavailableError, match="JetPack 6.1"):
        import_tensorrt()
    assert "JetPack 6.1" in (available() or "")  # so `auto` falls back to onnxruntime, saying why


@pytest.mark.device
def test_engine_key_tells_orin_modules_apart() -> None:
    agx = DeviceInfo("10.3.0.30", "Orin (nvgpu)", "8.7", sm_count=16, memory_gib=61)
    nano = DeviceInfo("10.3.0.30", "Orin (nvgpu)", "8.7", sm_count=4, memory_gib=4)
    nx16 = DeviceInfo("10.3.0.30", "Orin (nvgpu)", "8.7", sm_count=8, memory_gib=15)
    nx8 = DeviceInfo("10.3.0.30", "Orin (nvgpu)", "8.7", sm_count=8, memory_gib=7)
    names = {d.dir_name for d in (agx, nano, nx16, nx8)}
    assert len(names) == 4 and agx.dir_name == "10.3.0.30_Orin-nvgpu_sm87_16SMs_61GiB"
    meta = {
        "tensorrt_version": "10.3.0.30", "gpu_name": "Orin (nvgpu)", "compute_capability": "8.7",
        "sm_count": 16, "memory_gib": 61, "onnx_sha256": "a" * 64, "max_batch": 16,
    }
    assert stale_reason(meta, agx, "a" * 64, 16) is None
    assert "SM count 16" in stale_reason(meta, nx16, "a" * 64, 16)
    assert "GPU memory" in stale_reason({**meta, "sm_count": 8}, nx8, "a" * 64, 16)
    old = {k: v for k, v in meta.items() if k not in ("sm_count", "memory_gib")}
    assert "SM count None" in stale_reason(old, agx, "a" * 64, 16)  # a plan from before the key had them


@pytest.mark.device
def test_build_engine_in_its_own_thread_with_opt_batch_and_atomic_timing_cache(fake_bundle, monkeypatch, caplog) -> None:
    """``build_engine``: the context lives in a thread of its own (the caller's thread never gets
    one) and is released there with detach() while current, the profile is tuned for max_batch,
    the timing cache is written atomically and a corrupt one is ignored with a warning."""
    from engines.build import TIMING_CACHE, build_engine, read_engine_json

    calls: list[str] = []
    folder = _install_fakes(monkeypatch, fake_bundle, calls)
    (folder / "model.plan").unlink()
    cache = folder / TIMING_CACHE
    cache.write_bytes(b"garbage, half written by a crash")
    with caplog.at_level(logging.WARNING, logger="engines.build"):
        files = build_engine(fake_bundle, max_batch=6, workspace_mib=256)
    assert files.built and files.plan.read_bytes() == b"fake plan"
    assert calls[0] == "push in cuda-work" and calls[-1] == "detach (current) in cuda-work" and "pop" not in calls
    assert "build in cuda-work" in calls
    assert "profile audio min 1 opt 6 max 6" in calls  # tuned for the batch the daemon runs
    assert f"ignoring the TensorRT timing cache {cache}" in caplog.text
    assert "timing cache b''" in calls  # built with an empty cache instead
    assert cache.read_bytes() == b"timing cache v2"
    assert sorted(p.name for p in folder.iterdir()) == ["engine.json", "model.plan", TIMING_CACHE]  # no temp files
    meta = read_engine_json(files.meta)
    assert meta["sm_count"] == 8 and meta["memory_gib"] == 16 and meta["opt_batch"] == 6 and meta["max_batch"] == 6
    assert threading.current_thread().name == "MainThread"

    # A cache from another TensorRT or GPU (set_timing_cache refuses it) is ignored the same way;
    # a good one is used.
    cache.write_bytes(b"foreign cache")
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engines.build"):
        build_engine(fake_bundle, max_batch=6, workspace_mib=256, force=True)
    assert "ignoring the TensorRT timing cache" in caplog.text and "timing cache b''" in calls
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engines.build"):
        build_engine(fake_bundle, max_batch=6, workspace_mib=256, force=True)
    assert "ignoring" not in caplog.text and "timing cache b'timing cache v2'" in calls


def test_build_heartbeat_beats_only_while_tensorrt_makes_progress() -> None:
    """A hung build must stop extending systemd's start timeout: no step, no beat."""
    import time

    from engines.build import _Heartbeat

    said: list[str] = []
    with _Heartbeat(said.append, period=0.05) as beat:
        time.sleep(0.3)
        assert said == []  # nothing completed: silence
        beat.mark()
        deadline = time.monotonic() + 5
        while not said and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(said) == 1 and "building TensorRT engine" in said[0]
        time.sleep(0.3)
        assert len(said) == 1  # one mark, one beat
    clock: list[str] = []
    with _Heartbeat(clock.append, period=0.05, always=True):
        time.sleep(0.3)
    assert len(clock) >= 2  # without a progress monitor it beats on the clock
