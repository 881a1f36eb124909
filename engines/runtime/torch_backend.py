"""Torch backend: runs a training RUN directory directly, for debugging exports.

It is the reference the ONNX and TensorRT graphs are compared with: if ``score`` gives
different verdicts with ``--backend torch`` and ``--backend onnxruntime``, the export is at
fault. torch is imported lazily so that importing ``engines.runtime`` never pulls it in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.core.constants import WINDOW_SAMPLES
from engines.errors import BackendUnavailableError, BundleError
from engines.runtime.base import Runtime

logger = logging.getLogger(__name__)

BACKEND_KEY = "torch"
INSTALL_HINT = "install the training extras with `pip install 'edge-asd[train]'` (torch is not for the Jetson)"


def available() -> str | None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return f"the torch backend needs PyTorch: {INSTALL_HINT}"
    return None


def resolve_run_dir(path: Path) -> Path:
    """A RUN directory itself, or the run a bundle was exported from (model.json ``training.run``)."""
    if (path / "config.json").is_file():
        return path
    if (path / "model.json").is_file():
        from engines.bundle import read_manifest

        run = read_manifest(path).training.get("run")
        if run and (Path(run) / "config.json").is_file():
            return Path(run)
        raise BundleError(f"bundle {path} does not point at an existing run directory (training.run={run!r})")
    raise BundleError(f"{path} is neither a run directory (config.json) nor a bundle (model.json)")


class TorchBackend(Runtime):
    """``TASTgramMFN`` in eval mode on the CPU, loaded with ``trainer.checkpoint.load_model``."""

    type_key = BACKEND_KEY

    def __init__(
        self,
        run_dir: str | Path,
        max_batch: int = 16,
        threads: int | None = None,
        which: str = "best",
        lowering: str | None = None,
        model: Any = None,
        classes: list[str] | None = None,
    ) -> None:
        reason = available()
        if reason is not None:
            raise BackendUnavailableError(reason)
        # torch stays behind the trainer: this package never imports it itself
        from trainer.checkpoint import NumpyPredictor, load_model

        if model is None:
            run_dir = resolve_run_dir(Path(run_dir))
            model, run_config = load_model(run_dir, which=which)
            classes = list(run_config.get("classes", []))
        super().__init__(list(classes or []), max_batch, WINDOW_SAMPLES)
        self._predict = NumpyPredictor(model, threads)
        self.model = self._predict.model
        if lowering is not None:
            self.model.frontend.lowering = lowering
        self.run_dir = Path(run_dir)

    def describe(self) -> str:
        return (
            f"torch {self._predict.torch_version} eager ({self.model.frontend.lowering} front end) from {self.run_dir}"
        )

    def _infer_batch(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._predict(audio)


__all__ = ["BACKEND_KEY", "TorchBackend", "available", "resolve_run_dir"]
