"""ONNX Runtime backend: the CPU path (workstation, CI, a Jetson without TensorRT).

Graph choice: on the CPU provider we run ``model_cpu.onnx`` (fp32, ONNX ``STFT`` front end),
because onnxruntime's STFT kernel is an FFT and much cheaper than the 2050-channel DFT
convolution of ``model.onnx``. When the CUDA provider is present we run ``model.onnx``
instead: it is the graph TensorRT builds from (so a CUDA-EP run checks it), every op in it
has a CUDA kernel, and its fp16 backbone uses the tensor cores; whether the CUDA EP covers
``STFT`` depends on the onnxruntime build, the conv graph does not. ``onnx_file`` forces either.

Settings: ``runtime: {type: onnxruntime, threads, max_batch, onnx_file}``
(``edge_asd.config.OnnxRuntimeConfig``). onnxruntime itself is imported only when a session
is opened, so registering this backend works without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.config import OnnxRuntimeConfig
from engines.bundle import MODEL_CPU_ONNX, MODEL_ONNX, Bundle
from engines.errors import BackendUnavailableError, BundleError
from engines.runtime.base import Runtime
from engines.runtime.registry import RuntimeEntry, register

logger = logging.getLogger(__name__)

BACKEND_KEY: str = OnnxRuntimeConfig.model_fields["type"].default
INSTALL_HINT = "install it with `pip install 'edge-asd[onnx]'` (or `pip install onnxruntime`)"


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError(f"the onnxruntime backend needs the onnxruntime package: {INSTALL_HINT}") from err
    return onnxruntime


def available() -> str | None:
    """None when usable, else why not."""
    try:
        import_onnxruntime()
    except BackendUnavailableError as err:
        return str(err)
    return None


class OnnxRuntimeBackend(Runtime):
    """One ``InferenceSession`` over the bundle's CPU (or CUDA) graph."""

    type_key = BACKEND_KEY

    def __init__(self, bundle: Bundle, config: OnnxRuntimeConfig | None = None) -> None:
        config = config or OnnxRuntimeConfig()
        super().__init__(bundle.classes, config.max_batch, bundle.manifest.window_samples)
        ort = import_onnxruntime()
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        onnx_file = config.onnx_file
        if onnx_file is None:
            onnx_file = MODEL_ONNX if providers[0] == "CUDAExecutionProvider" else MODEL_CPU_ONNX
        self.onnx_path: Path = bundle.path / onnx_file
        options = ort.SessionOptions()
        # Whole cores for one inference at a time: the daemon batches every stream into one call.
        options.intra_op_num_threads = int(config.threads or os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise BundleError(f"onnxruntime cannot load {self.onnx_path}: {err}. Re-export the bundle") from err
        self.providers = self.session.get_providers()
        self.threads = options.intra_op_num_threads
        self._outputs = ["scores", "embedding"]
        logger.info("onnxruntime %s: %s on %s (%d threads)", ort.__version__, onnx_file, self.providers[0], self.threads)

    def describe(self) -> str:
        return f"onnxruntime {self.onnx_path.name} on {self.providers[0]} ({self.threads} threads)"

    def _infer_batch(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, embedding = self.session.run(self._outputs, {"audio": audio})
        return scores, embedding

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
        super().close()


ENTRY = register(RuntimeEntry(BACKEND_KEY, OnnxRuntimeConfig, OnnxRuntimeBackend, available))

__all__ = ["BACKEND_KEY", "ENTRY", "OnnxRuntimeBackend", "available", "import_onnxruntime"]
