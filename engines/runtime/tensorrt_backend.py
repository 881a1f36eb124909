"""TensorRT backend (Jetson): a plan built from ``model.onnx``, run with pycuda on one CUDA stream.

pycuda contexts are per thread (``pycuda.autoinit`` makes a context current only in the
importing thread; inference from another thread fails with "invalid device context"). So a
dedicated worker thread owns everything CUDA: it calls ``cuda.init()``, retains and pushes the
device's primary context, deserializes the engine, allocates page-locked host and device
buffers once for ``max_batch``, serves ``infer`` requests from a queue, and when closed frees
everything and releases the context, then ends. Callers on any thread just wait for the result.

Construction is exception-safe: everything the worker does, the context push included, is
inside one ``try`` whose ``finally`` resolves the start-up Future, so the constructor never
waits on a worker that died; a failed load frees the engine and buffers in the worker (with
the context still current) before the error, cut loose from its traceback
(``engines.build.detached_error``), reaches the caller. Teardown calls ``detach()`` while the
context is still current in the worker, never ``pop()``: only that reaches
``cuDevicePrimaryCtxRelease`` (``engines.build.release_primary_context`` says why), and the
handle the driver leaves current ends with the worker thread. TensorRT older
than 10 (JetPack 6.0) is refused by ``import_tensorrt`` with the JetPack to install.

Per chunk: ``set_input_shape`` -> async H2D -> ``execute_async_v3(stream.handle)`` (its bool
is checked) -> async D2H -> ``stream.synchronize()``. Tensor addresses are set once: the
buffers never move. TensorRT 10.x API, forward-compatible with 11.x.

Settings: ``runtime: {type: tensorrt, device, workspace_mib, max_batch, allow_build}``
(``edge_asd.config.TensorRTRuntimeConfig``). TensorRT and pycuda are imported only by
``available()`` and the worker thread, so registering this backend works without them.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np

from edge_asd.config import TensorRTRuntimeConfig
from edge_asd.core.constants import EMBEDDING_DIM
from engines.build import (
    ProgressFn,
    current_device,
    detached_error,
    ensure_engine,
    import_pycuda,
    import_tensorrt,
    release_primary_context,
)
from engines.bundle import Bundle
from engines.errors import BackendUnavailableError, EngineBuildError
from engines.runtime.base import Runtime
from engines.runtime.registry import RuntimeEntry, register

logger = logging.getLogger(__name__)

BACKEND_KEY: str = TensorRTRuntimeConfig.model_fields["type"].default
_STOP = object()
_FREE_ORDER = ("context", "engine", "runtime", "dev", "host", "stream", "trt_logger")
"""Dependants first: the execution context before its engine before the runtime, then buffers."""


def available() -> str | None:
    """None when TensorRT, pycuda and a CUDA GPU are all present, else why not."""
    try:
        import_tensorrt()
        cuda = import_pycuda()
        cuda.init()
        if cuda.Device.count() < 1:
            return "no CUDA GPU found"
    except BackendUnavailableError as err:
        return str(err)
    except Exception as err:  # a driver without a GPU raises pycuda's own errors
        return f"CUDA is not usable: {err}"
    return None


class TensorRTBackend(Runtime):
    """One engine, one execution context and one stream, all owned by a worker thread."""

    type_key = BACKEND_KEY

    def __init__(
        self, bundle: Bundle, config: TensorRTRuntimeConfig | None = None, progress: ProgressFn | None = None
    ) -> None:
        config = config or TensorRTRuntimeConfig()
        super().__init__(bundle.classes, config.max_batch, bundle.manifest.window_samples)
        self.bundle = bundle
        self.device_index = config.device
        self.workspace_mib = config.workspace_mib
        self.allow_build = config.allow_build
        self.progress = progress
        self.plan_path: str = ""
        self.device_name: str = ""
        self._requests: queue.Queue[Any] = queue.Queue()
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._worker, name="tensorrt-infer", daemon=True)
        self._thread.start()
        try:
            self._ready.result()  # re-raises a load/build failure in the caller's thread
        except BaseException:
            # A failed load: the worker is freeing what it made; wait for it so a retry (or the
            # onnxruntime fallback) starts with the GPU memory back. Interrupted while a build
            # runs (Ctrl-C): the worker stops once the build is done.
            self._requests.put(_STOP)
            self._thread.join(timeout=30.0)
            raise

    def describe(self) -> str:
        return f"tensorrt {self.plan_path} on {self.device_name}"

    def _infer_batch(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self._thread.is_alive():
            raise RuntimeError("the TensorRT worker thread has stopped")
        done: Future[tuple[np.ndarray, np.ndarray]] = Future()
        self._requests.put((audio, done))
        return done.result()

    def close(self) -> None:
        if self._thread.is_alive():
            self._requests.put(_STOP)
            self._thread.join(timeout=30.0)
        super().close()

    # -- everything below runs in the worker thread ------------------------------------------
    def _worker(self) -> None:
        ctx: Any = None
        state: dict[str, Any] = {}
        try:
            trt = import_tensorrt()
            cuda = import_pycuda()
            cuda.init()
            device = current_device(self.device_index)
            self.device_name = (
                f"{device.gpu_name} (sm {device.compute_capability}, {device.sm_count} SMs, "
                f"TensorRT {device.trt_version})"
            )
            ctx = cuda.Device(self.device_index).retain_primary_context()
            ctx.push()
            self._load(trt, cuda, device, state)
            self._ready.set_result(None)
            self._serve(cuda, state)
        except BaseException as err:
            if not self._ready.done():  # handed to the constructor's thread, without the frames
                self._ready.set_exception(detached_error(err, f"loading the TensorRT engine of {self.bundle.path}"))
            else:
                logger.exception("TensorRT worker failed")
        finally:
            # Free while the CUDA context is still current, dependants first.
            for key in _FREE_ORDER:
                state.pop(key, None)
            state.clear()
            # Then give the retain back, the context still current, in this thread, which
            # then ends (see engines.build.release_primary_context for why detach(), not pop()).
            if ctx is not None:
                release_primary_context(ctx, "the TensorRT worker")
            ctx = None
            if not self._ready.done():  # unreachable by design; a hung constructor is worse than a message
                self._ready.set_exception(EngineBuildError("the TensorRT worker ended before the engine was loaded"))
            self._fail_pending()

    def _load(self, trt: Any, cuda: Any, device: Any, state: dict[str, Any]) -> None:
        """Deserialize the plan and allocate the buffers; each object goes into ``state`` as soon
        as it exists, so a failure half-way still frees it in order, in this thread."""
        files = ensure_engine(
            self.bundle,
            max_batch=self.max_batch,
            workspace_mib=self.workspace_mib,
            allow_build=self.allow_build,
            device=device,
            progress=self.progress,
        )
        self.plan_path = str(files.plan)
        trt_logger = state["trt_logger"] = trt.Logger(trt.Logger.WARNING)
        runtime = state["runtime"] = trt.Runtime(trt_logger)
        engine = state["engine"] = runtime.deserialize_cuda_engine(files.plan.read_bytes())
        if engine is None:
            if not self.allow_build:
                raise EngineBuildError(
                    f"TensorRT could not deserialize {files.plan}; rebuild it with "
                    f"`edge-asd build-engine {self.bundle.path}`"
                )
            logger.warning("TensorRT could not deserialize %s: rebuilding", files.plan)
            files = ensure_engine(
                self.bundle, max_batch=self.max_batch, workspace_mib=self.workspace_mib, force=True,
                device=device, progress=self.progress,
            )
            engine = state["engine"] = runtime.deserialize_cuda_engine(files.plan.read_bytes())
            if engine is None:
                raise EngineBuildError(f"TensorRT cannot deserialize the freshly built {files.plan}")
        context = state["context"] = engine.create_execution_context()
        if context is None:
            raise EngineBuildError(f"TensorRT could not create an execution context for {files.plan} (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != ["audio"] or sorted(set(names) - {"audio"}) != ["embedding", "scores"]:
            raise EngineBuildError(f"{files.plan} has I/O tensors {names}; expected audio -> scores, embedding")
        shapes = {
            "audio": (self.max_batch, self.window_samples),
            "scores": (self.max_batch, self.num_classes),
            "embedding": (self.max_batch, EMBEDDING_DIM),
        }
        host: dict[str, np.ndarray] = state.setdefault("host", {})
        dev: dict[str, Any] = state.setdefault("dev", {})
        for name in names:
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            if np.dtype(dtype) != np.float32:
                raise EngineBuildError(f"{files.plan}: tensor {name} is {np.dtype(dtype)}, expected float32")
            host[name] = cuda.pagelocked_empty(shapes[name], np.float32)
            dev[name] = cuda.mem_alloc(host[name].nbytes)
            context.set_tensor_address(name, int(dev[name]))
        state["stream"] = cuda.Stream()
        logger.info("TensorRT engine %s loaded on %s (max batch %d)", files.plan, self.device_name, self.max_batch)

    def _serve(self, cuda: Any, state: dict[str, Any]) -> None:
        context, host, dev, stream = state["context"], state["host"], state["dev"], state["stream"]
        while True:
            item = self._requests.get()
            if item is _STOP:
                return
            audio, done = item
            try:
                b = audio.shape[0]
                host["audio"][:b] = audio
                if not context.set_input_shape("audio", (b, self.window_samples)):
                    raise RuntimeError(f"TensorRT rejected input shape ({b}, {self.window_samples})")
                cuda.memcpy_htod_async(dev["audio"], host["audio"][:b], stream)
                if not context.execute_async_v3(stream.handle):
                    raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
                cuda.memcpy_dtoh_async(host["scores"][:b], dev["scores"], stream)
                cuda.memcpy_dtoh_async(host["embedding"][:b], dev["embedding"], stream)
                stream.synchronize()
                done.set_result((host["scores"][:b].copy(), host["embedding"][:b].copy()))
            except BaseException as err:  # returned to the waiting caller
                done.set_exception(err)

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item[1].set_exception(RuntimeError("the TensorRT runtime was closed"))


def open_tensorrt(
    bundle: Bundle, config: TensorRTRuntimeConfig, progress: ProgressFn | None = None
) -> TensorRTBackend:
    """The registry's opener: says what is missing before a worker thread starts."""
    reason = available()
    if reason is not None:
        raise BackendUnavailableError(
            f"the tensorrt backend cannot run here: {reason}. It needs TensorRT (JetPack), pycuda "
            "(`pip install 'edge-asd[jetson]'`) and a CUDA GPU; elsewhere use `runtime: {type: onnxruntime}` "
            "(or --backend onnxruntime)"
        )
    return TensorRTBackend(bundle, config, progress=progress)


ENTRY = register(
    RuntimeEntry(BACKEND_KEY, TensorRTRuntimeConfig, open_tensorrt, available, extras=frozenset({"progress"}))
)

__all__ = ["BACKEND_KEY", "ENTRY", "TensorRTBackend", "available", "open_tensorrt"]
