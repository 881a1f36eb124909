"""The one interface every inference backend implements: float32 audio windows in, scores out.

Why a common base: the daemon, the ``score`` command and the benchmarks should not care
whether TensorRT, onnxruntime or torch computes the numbers. The base validates input once
(the error names the expected shape instead of failing inside a native library) and splits
batches larger than the backend's ``max_batch`` into chunks, so backends only implement one
fixed-size step.

A backend whose graph takes the log-mel as an input (onnxruntime with ``model_cpu_logmel.onnx``)
sets ``accepts_logmel``; its caller may then pass ``infer(audio, logmel=...)`` from the
streaming front end (``edge_asd.core.logmel``). Every other backend computes its own front end
and ignores a log-mel it is given (the same numbers), so callers need no special case.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_asd.core.constants import EMBEDDING_DIM, WINDOW_SAMPLES
from edge_asd.core.logmel import N_MELS, n_frames
from engines.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inference:
    """Model outputs for a batch: ``scores`` (B, C) cross-entropy per class, ``embedding`` (B, 128)."""

    scores: np.ndarray
    embedding: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, rows: list[int]) -> Inference:
        """The outputs of some rows of the batch, in the order given."""
        return Inference(self.scores[rows], self.embedding[rows])


def validate_audio(audio: object, window_samples: int = WINDOW_SAMPLES) -> np.ndarray:
    """Return ``audio`` as a C-contiguous float32 (B, window) array or raise ``InputError``."""
    expected = f"float32 array of shape (batch, {window_samples}) with finite samples in [-1, 1]"
    if not isinstance(audio, np.ndarray):
        raise InputError(f"runtime input must be a numpy {expected}, got {type(audio).__name__}")
    if audio.dtype != np.float32:
        raise InputError(f"runtime input has dtype {audio.dtype}; expected a {expected} (use .astype(np.float32))")
    if audio.ndim != 2 or audio.shape[1] != window_samples or audio.shape[0] < 1:
        raise InputError(
            f"runtime input has shape {audio.shape}; expected a {expected} "
            "(one 10 s window at 16 kHz per row: edge_asd.core.audio_io.fit_length pads or crops)"
        )
    if not np.all(np.isfinite(audio)):
        raise InputError(f"runtime input contains NaN or infinite samples; expected a {expected}")
    return np.ascontiguousarray(audio)


def validate_logmel(logmel: object, batch: int, window_samples: int = WINDOW_SAMPLES) -> np.ndarray:
    """Return ``logmel`` as a C-contiguous float32 (B, 128, frames) array or raise ``InputError``."""
    frames = n_frames(window_samples)
    expected = f"float32 array of shape ({batch}, {N_MELS}, {frames}) in dB (edge_asd.core.logmel), one row per audio row"
    if not isinstance(logmel, np.ndarray) or logmel.dtype != np.float32 or logmel.shape != (batch, N_MELS, frames):
        got = f"{logmel.dtype} {logmel.shape}" if isinstance(logmel, np.ndarray) else type(logmel).__name__
        raise InputError(f"runtime log-mel input is {got}; expected a {expected}")
    if not np.all(np.isfinite(logmel)):
        raise InputError(f"runtime log-mel input contains NaN or infinite values; expected a {expected}")
    return np.ascontiguousarray(logmel)


class Runtime(ABC):
    """A loaded model that maps (B, 160000) float32 audio to an ``Inference``.

    ``type_key`` is the backend's ``type`` in the ``runtime:`` config (its registry key).
    """

    type_key: str = ""
    accepts_logmel: bool = False
    """True when ``infer(audio, logmel=...)`` feeds the given log-mel to the graph (see module doc)."""

    def __init__(self, classes: list[str], max_batch: int = 16, window_samples: int = WINDOW_SAMPLES) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.classes = list(classes)
        self.max_batch = int(max_batch)
        self.window_samples = int(window_samples)
        self._closed = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def name(self) -> str:
        return self.type_key

    def describe(self) -> str:
        """One line for logs and ``/stats``: backend, device and graph."""
        return self.type_key

    def infer(self, audio: np.ndarray, logmel: np.ndarray | None = None) -> Inference:
        """Scores and embeddings for every row of ``audio``; batches above ``max_batch`` are chunked.

        ``logmel``: the rows' log-mel ``(B, 128, 313)``, used where ``accepts_logmel`` (else
        ignored: the backend computes the same numbers itself).
        """
        if self._closed:
            raise RuntimeError(f"{self.type_key} runtime is closed")
        audio = validate_audio(audio, self.window_samples)
        if logmel is not None and self.accepts_logmel:
            logmel = validate_logmel(logmel, audio.shape[0], self.window_samples)
        else:
            logmel = None
        scores, embeddings = [], []
        for lo in range(0, audio.shape[0], self.max_batch):
            chunk = audio[lo : lo + self.max_batch]
            if logmel is None:
                s, e = self._infer_batch(chunk)
            else:
                s, e = self._infer_batch_logmel(chunk, logmel[lo : lo + self.max_batch])
            scores.append(np.asarray(s, dtype=np.float32))
            embeddings.append(np.asarray(e, dtype=np.float32))
        out = Inference(
            scores=scores[0] if len(scores) == 1 else np.concatenate(scores),
            embedding=embeddings[0] if len(embeddings) == 1 else np.concatenate(embeddings),
        )
        if out.scores.shape != (audio.shape[0], self.num_classes) or out.embedding.shape != (audio.shape[0], EMBEDDING_DIM):
            raise RuntimeError(
                f"{self.type_key} returned scores {out.scores.shape} / embedding {out.embedding.shape} for "
                f"{audio.shape[0]} windows and {self.num_classes} classes"
            )
        return out

    @abstractmethod
    def _infer_batch(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run one chunk of at most ``max_batch`` validated rows."""

    def _infer_batch_logmel(self, audio: np.ndarray, logmel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run one chunk with its log-mel; only called where ``accepts_logmel``."""
        raise NotImplementedError(f"{self.type_key} takes no log-mel input")

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Predictor(Protocol):
    """A model from a package ``engines`` may not import (the trainer's torch model).

    The trainer stands on the core only (the import contracts in ``pyproject.toml``), so it
    cannot subclass ``Runtime``; it hands over this much and ``PredictorRuntime`` adds the
    input checks and the chunking every runtime has.
    """

    classes: list[str]

    def __call__(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B, C) and embeddings (B, 128) of at most ``max_batch`` validated rows."""
        ...

    def describe(self) -> str:
        """One line for logs: framework, device, where the weights come from."""
        ...


class PredictorRuntime(Runtime):
    """A ``Runtime`` around a ``Predictor``, under the backend's ``type_key``."""

    def __init__(self, type_key: str, predictor: Predictor, max_batch: int, window_samples: int = WINDOW_SAMPLES) -> None:
        super().__init__(list(predictor.classes), max_batch, window_samples)
        self.type_key = type_key
        self.predictor = predictor

    def describe(self) -> str:
        return self.predictor.describe()

    def _infer_batch(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.predictor(audio)

    def close(self) -> None:
        close = getattr(self.predictor, "close", None)
        if close is not None:
            close()
        super().close()


__all__ = ["Inference", "Predictor", "PredictorRuntime", "Runtime", "validate_audio", "validate_logmel"]
