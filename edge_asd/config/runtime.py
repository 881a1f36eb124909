"""The ``runtime:`` section: which inference backend runs the model, and its settings.

A discriminated union on ``type`` (Frigate's detector configs): each backend has its own
model, so a setting that belongs to another backend (``workspace_mib`` under
``type: onnxruntime``) is an error naming the allowed keys, and the whole section is
validated with the rest of the config, before anything loads. These models are the one
place the backends' defaults live: ``engines.runtime`` registers one backend per ``type``
with the model here and builds every runtime from a validated instance.

They live in the config package, not next to the backends, because the config sits below
``engines.runtime`` in the layering (``pyproject.toml``): the config may not import the
backends, the backends import their settings from here.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal, get_args

from pydantic import Field

from edge_asd.config.base import ConfigModel

logger = logging.getLogger(__name__)

RuntimeType = Literal["auto", "tensorrt", "onnxruntime", "torch"]
RUNTIME_TYPES: tuple[str, ...] = get_args(RuntimeType)

_MAX_BATCH_LIMIT = 256


class AutoRuntimeConfig(ConfigModel):
    """Pick the backend on the device: TensorRT where it can run, else onnxruntime."""

    type: Literal["auto"] = Field(
        "auto", title="Type", description="auto: TensorRT where TensorRT, pycuda and a GPU are present, else onnxruntime."
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        le=_MAX_BATCH_LIMIT,
        title="Max batch",
        description="Largest batch per inference call; the chosen backend's default if unset.",
    )
    threads: int | None = Field(
        None, ge=1, title="Threads", description="CPU threads if onnxruntime is chosen; all cores if unset."
    )


class TensorRTRuntimeConfig(ConfigModel):
    """A TensorRT FP16 plan built from ``model.onnx`` on this GPU (Jetson)."""

    type: Literal["tensorrt"] = Field("tensorrt", title="Type", description="TensorRT with pycuda on a CUDA GPU.")
    max_batch: int = Field(
        16,
        ge=1,
        le=_MAX_BATCH_LIMIT,
        title="Max batch",
        description="Largest batch per inference call (the engine's optimisation profile); larger ones are split.",
    )
    device: int = Field(0, ge=0, title="CUDA device", description="CUDA device index.")
    workspace_mib: int = Field(
        1024, ge=64, title="Workspace (MiB)", description="Builder workspace; a Jetson's GPU memory is shared with the CPU."
    )
    allow_build: bool = Field(
        True, title="Allow build", description="Build the engine when missing or stale (minutes on a Jetson)."
    )


class OnnxRuntimeConfig(ConfigModel):
    """ONNX Runtime: the CPU path (workstation, CI, a device without TensorRT)."""

    type: Literal["onnxruntime"] = Field("onnxruntime", title="Type", description="ONNX Runtime (CPU, or CUDA if present).")
    max_batch: int = Field(
        1,
        ge=1,
        le=_MAX_BATCH_LIMIT,
        title="Max batch",
        description=(
            "Largest batch per inference call. 1 is the fastest on a small CPU and holds the least memory "
            "(2 cores: 88 against 81 windows/s, 226 against 371 MiB at 32 streams; docs/performance.md); "
            "try 8-32 with the CUDA provider or many cores."
        ),
    )
    threads: int | None = Field(
        None,
        ge=1,
        title="Threads",
        description="CPU threads for inference, shared by the parallel runs; every core this process may use if unset.",
    )
    parallel_runs: int | None = Field(
        None,
        ge=1,
        le=_MAX_BATCH_LIMIT,
        title="Parallel runs",
        description=(
            "Inference calls (chunks of max_batch) run at once, each on threads / parallel_runs intra-op threads "
            "(at most one run per thread). Unset: one per thread, up to 4, on the CPU provider (2 cores: two "
            "single-threaded runs at once score more windows per second than one run on two threads; "
            "docs/performance.md), 1 with the CUDA provider."
        ),
    )
    onnx_file: Literal["model.onnx", "model_cpu.onnx"] | None = Field(
        None,
        title="ONNX file",
        description="Forces one self-contained graph (front end inside). Unset: on the CPU the streaming-front-end "
        "graph model_cpu_logmel.onnx where the bundle has it, else model_cpu.onnx; model.onnx with the CUDA provider.",
    )


class TorchRuntimeConfig(ConfigModel):
    """The training run's PyTorch model (a workstation with torch; for debugging exports)."""

    type: Literal["torch"] = Field(
        "torch", title="Type", description="PyTorch eager on the CPU, from the run the bundle was exported from."
    )
    max_batch: int = Field(8, ge=1, le=_MAX_BATCH_LIMIT, title="Max batch", description="Largest batch per call.")
    threads: int | None = Field(None, ge=1, title="Threads", description="torch CPU threads; torch's default if unset.")
    which: Literal["best", "last"] = Field(
        "best", title="Checkpoint", description="Weights of the run: best (min validation loss) or last epoch."
    )


ConcreteRuntimeConfig = TensorRTRuntimeConfig | OnnxRuntimeConfig | TorchRuntimeConfig
"""A runtime config whose ``type`` names one backend (``auto`` resolved)."""

RuntimeConfig = Annotated[
    AutoRuntimeConfig | TensorRTRuntimeConfig | OnnxRuntimeConfig | TorchRuntimeConfig,
    Field(discriminator="type"),
]
"""The ``runtime:`` section: one of the models above, chosen by ``type``."""


__all__ = [
    "RUNTIME_TYPES",
    "AutoRuntimeConfig",
    "ConcreteRuntimeConfig",
    "OnnxRuntimeConfig",
    "RuntimeConfig",
    "RuntimeType",
    "TensorRTRuntimeConfig",
    "TorchRuntimeConfig",
]
