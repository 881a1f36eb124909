"""Inference runtimes behind one interface, chosen by a backend name (Frigate's detector pattern).

``open_runtime(bundle, backend="auto"|"tensorrt"|"onnxruntime"|"torch")`` returns a
``Runtime`` whose ``infer(audio (B, 160000) float32)`` gives an ``Inference``. Native backends
are optional and fail soft: importing this package needs neither torch, TensorRT, pycuda nor a
GPU; asking for a backend whose libraries are missing raises ``BackendUnavailableError`` saying
what to install. ``auto`` takes TensorRT where TensorRT and pycuda import and a GPU exists,
else onnxruntime.

Configs are pydantic models discriminated on ``type`` so a device config can carry
``runtime: {type: tensorrt, device: 0}`` and be validated before anything loads.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engines.bundle import Bundle, as_bundle
from engines.errors import BackendUnavailableError
from engines.runtime import onnxruntime_backend, tensorrt_backend, torch_backend
from engines.runtime.base import Inference, Runtime, validate_audio

logger = logging.getLogger(__name__)

BackendName = Literal["auto", "tensorrt", "onnxruntime", "torch"]
BACKENDS: dict[str, Any] = {
    tensorrt_backend.BACKEND_KEY: tensorrt_backend,
    onnxruntime_backend.BACKEND_KEY: onnxruntime_backend,
    torch_backend.BACKEND_KEY: torch_backend,
}


class _BackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch: int = Field(16, ge=1, le=256, description="Largest batch per inference call; larger ones are chunked.")


class AutoConfig(_BackendConfig):
    type: Literal["auto"] = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads if onnxruntime is chosen.")


class TensorRTConfig(_BackendConfig):
    type: Literal["tensorrt"] = "tensorrt"
    device: int = Field(0, ge=0, description="CUDA device index.")
    workspace_mib: int = Field(1024, ge=64, description="Builder workspace; Jetson memory is shared with the CPU.")
    allow_build: bool = Field(True, description="Build the engine when missing or stale (minutes on a Jetson).")


class OnnxRuntimeConfig(_BackendConfig):
    type: Literal["onnxruntime"] = "onnxruntime"
    threads: int | None = Field(None, ge=1, description="intra-op threads (default: all cores).")
    onnx_file: Literal["model.onnx", "model_cpu.onnx"] | None = Field(
        None, description="Graph to run (default: model_cpu.onnx on CPU, model.onnx with CUDA)."
    )


class TorchConfig(_BackendConfig):
    type: Literal["torch"] = "torch"
    threads: int | None = Field(None, ge=1)
    which: Literal["best", "last"] = "best"


RuntimeConfig = Annotated[
    AutoConfig | TensorRTConfig | OnnxRuntimeConfig | TorchConfig, Field(discriminator="type")
]


def backend_status() -> dict[str, str | None]:
    """For each backend: None when usable here, else the reason (shown by ``edge-asd info``)."""
    return {name: module.available() for name, module in BACKENDS.items()}


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``tensorrt`` when it can run here, else ``onnxruntime``."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise BackendUnavailableError(
                f"unknown backend {backend!r}: choose one of auto, {', '.join(sorted(BACKENDS))}"
            )
        return backend
    reason = tensorrt_backend.available()
    if reason is None:
        return tensorrt_backend.BACKEND_KEY
    logger.info("backend auto: not using TensorRT (%s)", reason)
    return onnxruntime_backend.BACKEND_KEY


def open_runtime(
    bundle_or_path: Bundle | str | Path,
    backend: str | BaseModel = "auto",
    max_batch: int = 16,
    threads: int | None = None,
    **options: Any,
) -> Runtime:
    """Open a runtime for a bundle (or, for ``torch``, a run directory or a bundle pointing at one).

    ``backend`` is a name or one of the config models above; ``options`` go to the backend
    (e.g. ``onnx_file=`` for onnxruntime, ``progress=`` for a TensorRT build).
    """
    if isinstance(backend, BaseModel):
        cfg = backend.model_dump()
        backend = cfg.pop("type")
        max_batch = cfg.pop("max_batch", max_batch)
        threads = cfg.pop("threads", threads)
        if "device" in cfg:
            cfg["device_index"] = cfg.pop("device")
        options = {**{k: v for k, v in cfg.items() if v is not None}, **options}
    auto = str(backend) == "auto"
    name = resolve_backend(str(backend))
    if auto:
        # Options meant for the backend auto did not pick (e.g. a TensorRT build's progress
        # hook when onnxruntime was chosen) are dropped rather than failing the start.
        cls = {
            tensorrt_backend.BACKEND_KEY: tensorrt_backend.TensorRTBackend,
            onnxruntime_backend.OnnxRuntimeBackend.type_key: onnxruntime_backend.OnnxRuntimeBackend,
            torch_backend.BACKEND_KEY: torch_backend.TorchBackend,
        }[name]
        accepted = set(inspect.signature(cls.__init__).parameters)
        dropped = sorted(set(options) - accepted)
        if dropped:
            logger.debug("backend auto chose %s: ignoring options %s", name, dropped)
        options = {k: v for k, v in options.items() if k in accepted}
    if name == torch_backend.BACKEND_KEY:
        path = bundle_or_path.path if isinstance(bundle_or_path, Bundle) else Path(bundle_or_path)
        return torch_backend.TorchBackend(path, max_batch=max_batch, threads=threads, **options)
    bundle = as_bundle(bundle_or_path)
    if name == tensorrt_backend.BACKEND_KEY:
        reason = tensorrt_backend.available()
        if reason is not None:
            raise BackendUnavailableError(
                f"the tensorrt backend cannot run here: {reason}. It needs TensorRT (JetPack), pycuda "
                "(`pip install 'edge-asd[jetson]'`) and a CUDA GPU; elsewhere use --backend onnxruntime"
            )
        return tensorrt_backend.TensorRTBackend(bundle, max_batch=max_batch, **options)
    return onnxruntime_backend.OnnxRuntimeBackend(bundle, max_batch=max_batch, threads=threads, **options)


__all__ = [
    "BACKENDS",
    "AutoConfig",
    "BackendName",
    "Inference",
    "OnnxRuntimeConfig",
    "Runtime",
    "RuntimeConfig",
    "TensorRTConfig",
    "TorchConfig",
    "backend_status",
    "open_runtime",
    "resolve_backend",
    "validate_audio",
]
