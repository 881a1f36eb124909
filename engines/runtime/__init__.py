"""Inference runtimes behind one interface, registered by the ``type`` of their config.

``open_runtime(bundle, backend)`` returns a ``Runtime`` whose ``infer(audio (B, 160000)
float32)`` gives an ``Inference`` (scores ``(B, C)``, embeddings ``(B, 128)``). ``backend`` is a
type (``auto``, ``tensorrt``, ``onnxruntime``, ``torch``) or a validated ``runtime:`` section of
the daemon's config, e.g.::

    runtime:
      type: tensorrt        # or auto (the default), onnxruntime, torch
      device: 0
      workspace_mib: 1024

Each type has its settings model in ``edge_asd.config.runtime`` (where the defaults live)
and one entry in ``engines.runtime.registry``: ``tensorrt_backend`` and
``onnxruntime_backend`` register themselves when this package is imported; ``torch_entry``
registers the torch backend, whose model lives in ``trainer.torch_runtime`` and is imported
by module path only when asked for. Native backends are optional and fail soft: importing this
package needs neither torch, TensorRT, pycuda, onnxruntime nor a GPU; opening a backend whose
libraries are missing raises ``BackendUnavailableError`` saying what to install.
``backend_status()`` says which backends can run here (``edge-asd info BUNDLE`` prints it);
``auto`` takes TensorRT where TensorRT, pycuda and a GPU are present, else onnxruntime.
"""

from __future__ import annotations

import logging

from edge_asd.config import (
    AutoRuntimeConfig,
    ConcreteRuntimeConfig,
    OnnxRuntimeConfig,
    RuntimeConfig,
    TensorRTRuntimeConfig,
    TorchRuntimeConfig,
)
from engines.runtime import onnxruntime_backend, tensorrt_backend, torch_entry
from engines.runtime.base import Inference, Predictor, PredictorRuntime, Runtime, validate_audio
from engines.runtime.registry import (
    AUTO_PREFERENCE,
    RuntimeEntry,
    backend_status,
    entries,
    get_entry,
    open_runtime,
    register,
    resolve_backend,
    resolve_config,
)

logger = logging.getLogger(__name__)

BUILTIN_BACKENDS = (tensorrt_backend, onnxruntime_backend, torch_entry)
"""The modules whose import registers the built-in backends."""

__all__ = [
    "AUTO_PREFERENCE",
    "BUILTIN_BACKENDS",
    "AutoRuntimeConfig",
    "ConcreteRuntimeConfig",
    "Inference",
    "OnnxRuntimeConfig",
    "Predictor",
    "PredictorRuntime",
    "Runtime",
    "RuntimeConfig",
    "RuntimeEntry",
    "TensorRTRuntimeConfig",
    "TorchRuntimeConfig",
    "backend_status",
    "entries",
    "get_entry",
    "open_runtime",
    "register",
    "resolve_backend",
    "resolve_config",
    "validate_audio",
]
