"""The ``torch`` backend's registry entry: the model runs in ``trainer.torch_runtime``.

The torch backend is the reference the ONNX and TensorRT graphs are compared with (if
``score --backend torch`` and ``--backend onnxruntime`` disagree, the export is at fault). It
needs torch and the trainer's checkpoints, which the device side must never import: so this
entry names the trainer module by its path and ``importlib`` loads it only when a runtime of
type ``torch`` is opened. Nothing here imports torch or ``trainer``; the layering check
(``lint-imports``) sees no edge from ``engines.runtime`` to ``trainer``.

What stays here is what belongs to engines: finding the run a bundle was exported from, and
wrapping the trainer's predictor in a ``Runtime`` (input checks, chunking).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path

from edge_asd.config import TorchRuntimeConfig
from engines.bundle import MODEL_JSON, read_manifest
from engines.errors import BackendUnavailableError, BundleError
from engines.runtime.base import PredictorRuntime, Runtime
from engines.runtime.registry import RuntimeEntry, register

logger = logging.getLogger(__name__)

BACKEND_KEY: str = TorchRuntimeConfig.model_fields["type"].default
TORCH_MODULE = "trainer.torch_runtime"
"""The module that holds the torch model (``TorchPredictor``); imported on demand only."""
RUN_CONFIG = "config.json"
INSTALL_HINT = "install the training extras with `pip install 'edge-asd[train]'` (torch is not for the Jetson)"


def available() -> str | None:
    """None when torch is installed (checked without importing it), else why not."""
    if importlib.util.find_spec("torch") is None:
        return f"the torch backend needs PyTorch: {INSTALL_HINT}"
    return None


def resolve_run_dir(path: Path) -> Path:
    """A RUN directory itself, or the run a bundle was exported from (model.json ``training.run``)."""
    if (path / RUN_CONFIG).is_file():
        return path
    if (path / MODEL_JSON).is_file():
        run = read_manifest(path).training.get("run")
        if run and (Path(run) / RUN_CONFIG).is_file():
            return Path(run)
        raise BundleError(f"bundle {path} does not point at an existing run directory (training.run={run!r})")
    raise BundleError(f"{path} is neither a run directory ({RUN_CONFIG}) nor a bundle ({MODEL_JSON})")


def open_torch(path: Path, config: TorchRuntimeConfig) -> Runtime:
    """Load the run's model through ``trainer.torch_runtime`` (imported here, by name)."""
    reason = available()
    if reason is not None:
        raise BackendUnavailableError(reason)
    run_dir = resolve_run_dir(path)
    module = importlib.import_module(TORCH_MODULE)
    predictor = module.TorchPredictor(run_dir, threads=config.threads, which=config.which)
    return PredictorRuntime(BACKEND_KEY, predictor, config.max_batch)


ENTRY = register(RuntimeEntry(BACKEND_KEY, TorchRuntimeConfig, open_torch, available, takes_path=True))

__all__ = ["BACKEND_KEY", "ENTRY", "TORCH_MODULE", "available", "open_torch", "resolve_run_dir"]
