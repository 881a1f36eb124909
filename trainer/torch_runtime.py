"""The ``torch`` runtime: a training run's model, numpy in and numpy out, on the CPU.

It is the reference the exported graphs are checked against: when ``edge-asd score
--backend torch`` and ``--backend onnxruntime`` give different verdicts, the export is at
fault. It lives in the trainer because it needs torch and ``trainer.checkpoint``;
``engines.runtime`` loads this module by its path (``importlib``) only when a runtime of type
``torch`` is opened, so the device side never imports it.

``TorchPredictor`` is the predictor ``engines.runtime.base.PredictorRuntime`` wraps (classes,
``__call__``, ``describe``) rather than a ``Runtime`` subclass: the trainer stands on the core
only (the import contracts in ``pyproject.toml``), and the wrapper adds the input checks and
the chunking every runtime shares.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trainer.checkpoint import NumpyPredictor, load_model

logger = logging.getLogger(__name__)


class TorchPredictor:
    """``TASTgramMFN`` of a run directory in eval mode on the CPU."""

    def __init__(self, run_dir: str | Path, threads: int | None = None, which: str = "best") -> None:
        self.run_dir = Path(run_dir)
        model, run_config = load_model(self.run_dir, which=which)
        self.classes: list[str] = list(run_config.get("classes", []))
        self._predict = NumpyPredictor(model, threads)
        self.model = self._predict.model
        logger.info("torch %s: %s weights of %s", self._predict.torch_version, which, self.run_dir)

    def __call__(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._predict(audio)

    def describe(self) -> str:
        return (
            f"torch {self._predict.torch_version} eager ({self.model.frontend.lowering} front end) from {self.run_dir}"
        )

    def close(self) -> None:
        """Nothing to release: the weights are ordinary CPU tensors."""


__all__ = ["TorchPredictor"]
