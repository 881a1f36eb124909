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
from concurrent.futures import Future
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


class PendingInference:
    """An inference started by ``Runtime.submit``: its chunks, joined by ``result()``."""

    def __init__(self, chunks: list[Future[tuple[np.ndarray, np.ndarray]]], rows: int, classes: int, backend: str) -> None:
        self._chunks = chunks
        self._rows, self._classes, self._backend = rows, classes, backend

    def result(self) -> Inference:
        """Wait for every chunk (all of them, even after one failed) and join them in order."""
        results, failure = [], None
        for chunk in self._chunks:
            try:
                results.append(chunk.result())
            except Exception as err:  # the first failure is raised once every chunk is finished
                failure = failure or err
        if failure is not None:
            raise failure
        scores = [np.asarray(s, dtype=np.float32) for s, _ in results]
        embeddings = [np.asarray(e, dtype=np.float32) for _, e in results]
        out = Inference(
            scores=scores[0] if len(scores) == 1 else np.concatenate(scores),
            embedding=embeddings[0] if len(embeddings) == 1 else np.concatenate(embeddings),
        )
        if out.scores.shape != (self._rows, self._classes) or out.embedding.shape != (self._rows, EMBEDDING_DIM):
            raise RuntimeError(
                f"{self._backend} returned scores {out.scores.shape} / embedding {out.embedding.shape} for "
                f"{self._rows} windows and {self._classes} classes"
            )
        return out


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
        return self.submit(audio, logmel).result()

    def submit(self, audio: np.ndarray, logmel: np.ndarray | None = None) -> PendingInference:
        """Start the inference of ``audio`` and return at once where the backend runs chunks in
        the background (``parallel_runs``), else after running it; ``.result()`` gives the
        ``Inference`` (or raises what the backend raised).

        Why: on a small CPU two single-threaded runs at once outpace one run on two threads
        (the convolutions of one window do not split well across cores), and the caller can
        compute the next streams' front end while the engine runs. The caller must leave
        ``audio`` and ``logmel`` unchanged until ``result()`` has returned. Where chunks run
        one after another, the first that fails ends the batch (the rest are not run).
        """
        if self._closed:
            raise RuntimeError(f"{self.type_key} runtime is closed")
        audio = validate_audio(audio, self.window_samples)
        if logmel is not None and self.accepts_logmel:
            logmel = validate_logmel(logmel, audio.shape[0], self.window_samples)
        else:
            logmel = None
        chunks = []
        step = self._chunk_rows(audio.shape[0])
        for lo in range(0, audio.shape[0], step):
            hi = lo + step
            chunk = self._start_chunk(audio[lo:hi], None if logmel is None else logmel[lo:hi])
            chunks.append(chunk)
            if chunk.done() and chunk.exception() is not None:
                break  # run in line and failed: the engine may be broken, do not run the rest
        return PendingInference(chunks, audio.shape[0], self.num_classes, self.type_key)

    def _chunk_rows(self, rows: int) -> int:
        """Rows per chunk of a ``rows``-row batch: ``max_batch``, or fewer to feed parallel runs."""
        return self.max_batch

    def _start_chunk(self, audio: np.ndarray, logmel: np.ndarray | None) -> Future[tuple[np.ndarray, np.ndarray]]:
        """Run one chunk; a backend with a worker pool overrides this to run it there."""
        done: Future[tuple[np.ndarray, np.ndarray]] = Future()
        try:
            done.set_result(self._run_chunk(audio, logmel))
        except Exception as err:
            done.set_exception(err)
        return done

    def _run_chunk(self, audio: np.ndarray, logmel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if logmel is None:
            return self._infer_batch(audio)
        return self._infer_batch_logmel(audio, logmel)

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


__all__ = ["Inference", "PendingInference", "Predictor", "PredictorRuntime", "Runtime", "validate_audio", "validate_logmel"]
