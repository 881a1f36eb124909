"""ONNX Runtime backend: the CPU path (workstation, CI, a Jetson without TensorRT).

Graph choice: on the CPU provider we run ``model_cpu_logmel.onnx`` where the bundle has it
(exported since issue 13): the fp32 network without its front end, fed the log-mel by the
caller's streaming numpy front end (``edge_asd.core.logmel``: each stream computes only the
frames it does not have yet), or by the stateless numpy front end when the caller gives audio
only. Older bundles, and bundles whose recorded front end differs from ours, run
``model_cpu.onnx`` (fp32, ONNX ``STFT`` front end: onnxruntime's STFT kernel is an FFT and
much cheaper than the 2050-channel DFT convolution of ``model.onnx``). When the CUDA provider
is present we run ``model.onnx`` instead: it is the graph TensorRT builds from (so a CUDA-EP
run checks it), every op in it has a CUDA kernel, and its fp16 backbone uses the tensor
cores; whether the CUDA EP covers ``STFT`` depends on the onnxruntime build, the conv graph
does not. ``onnx_file`` forces one of the self-contained graphs.

Settings: ``runtime: {type: onnxruntime, threads, parallel_runs, max_batch, onnx_file}``
(``edge_asd.config.OnnxRuntimeConfig``). onnxruntime itself is imported only when a session
is opened, so registering this backend works without it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.config import OnnxRuntimeConfig
from edge_asd.core.logmel import LogMelFrontEnd, parameters_match
from engines.bundle import LOGMEL_INPUT_NAME, MODEL_CPU_LOGMEL_ONNX, MODEL_CPU_ONNX, MODEL_ONNX, Bundle
from engines.errors import BackendUnavailableError, BundleError
from engines.runtime.base import Runtime
from engines.runtime.registry import RuntimeEntry, register

logger = logging.getLogger(__name__)

BACKEND_KEY: str = OnnxRuntimeConfig.model_fields["type"].default
DEFAULT_MAX_PARALLEL_RUNS = 4
"""Parallel runs when ``parallel_runs`` is unset (one per thread up to this): each run in flight
holds its own activations, so on a many-core host more runs would cost memory before speed
(measured on 2 cores only: docs/performance.md)."""
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
        self._pool: ThreadPoolExecutor | None = None
        ort = import_onnxruntime()
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        onnx_file = config.onnx_file
        if onnx_file is None:
            onnx_file = MODEL_ONNX if providers[0] == "CUDAExecutionProvider" else _cpu_graph(bundle)
        self.onnx_path: Path = bundle.path / onnx_file
        options = ort.SessionOptions()
        # Parallel runs, each on its share of the threads: one window's convolutions do not split
        # well over cores, so on the CPU two single-threaded runs at once beat one run on two
        # threads (docs/performance.md, bench/engine_throughput.py --parallel-runs).
        threads = int(config.threads or usable_cores())
        cuda = providers[0] == "CUDAExecutionProvider"
        runs = int(config.parallel_runs or (1 if cuda else min(threads, DEFAULT_MAX_PARALLEL_RUNS)))
        if runs > threads:
            logger.warning("onnxruntime: parallel_runs %d is more than the %d threads: running %d", runs, threads, threads)
            runs = threads
        self.parallel_runs = runs
        options.intra_op_num_threads = max(1, threads // runs)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No memory pattern: onnxruntime plans one block per input shape, and the daemon's batches
        # take every size up to max_batch; without it RSS is 54-93 MiB lower at batch 8 at the same
        # speed (docs/performance.md, bench/memory.py).
        options.enable_mem_pattern = False
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise BundleError(f"onnxruntime cannot load {self.onnx_path}: {err}. Re-export the bundle") from err
        self.providers = self.session.get_providers()
        self.threads = options.intra_op_num_threads
        if self.parallel_runs > 1:
            self._pool = ThreadPoolExecutor(self.parallel_runs, thread_name_prefix="edge-asd-onnxruntime")
        self._outputs = ["scores", "embedding"]
        inputs = {i.name for i in self.session.get_inputs()}
        self.accepts_logmel = LOGMEL_INPUT_NAME in inputs
        self._front_end = LogMelFrontEnd(self.window_samples) if self.accepts_logmel else None
        logger.info("onnxruntime %s: %s", ort.__version__, self.describe())

    def describe(self) -> str:
        front = f" + {self._front_end.fft_library} log-mel" if self._front_end is not None else ""
        runs = f"{self.parallel_runs} parallel runs x " if self.parallel_runs > 1 else ""
        return f"onnxruntime {self.onnx_path.name}{front} on {self.providers[0]} ({runs}{self.threads} threads)"

    def _chunk_rows(self, rows: int) -> int:
        # A batch is spread over the parallel runs: 8 windows with 2 runs are 2 chunks of 4.
        return max(1, min(self.max_batch, -(-rows // self.parallel_runs)))

    def _start_chunk(self, audio: np.ndarray, logmel: np.ndarray | None) -> Future[tuple[np.ndarray, np.ndarray]]:
        pool = self._pool
        if pool is None:
            return super()._start_chunk(audio, logmel)
        return pool.submit(self._run_chunk, audio, logmel)  # session.run is thread-safe

    def _infer_batch(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._front_end is not None:  # audio only: the stateless numpy front end fills the input
            return self._infer_batch_logmel(audio, self._front_end.window(audio))
        scores, embedding = self.session.run(self._outputs, {"audio": audio})
        return scores, embedding

    def _infer_batch_logmel(self, audio: np.ndarray, logmel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, embedding = self.session.run(self._outputs, {"audio": audio, LOGMEL_INPUT_NAME: logmel})
        return scores, embedding

    def close(self) -> None:
        super().close()  # first: a submit from now on is refused
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # running chunks finish, queued ones are dropped
        self.session = None  # type: ignore[assignment]


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, which a container's cpuset limits), not
    every core of the host."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def _cpu_graph(bundle: Bundle) -> str:
    """``model_cpu_logmel.onnx`` when the bundle has it and its front end is ours, else ``model_cpu.onnx``."""
    if bundle.logmel_onnx_path is None:
        return MODEL_CPU_ONNX
    differ = parameters_match(bundle.manifest.frontend)
    if differ:
        logger.warning(
            "%s: its front end differs from this edge-asd's numpy log-mel (%s): running %s instead",
            bundle.path / MODEL_CPU_LOGMEL_ONNX, ", ".join(differ), MODEL_CPU_ONNX,
        )
        return MODEL_CPU_ONNX
    return MODEL_CPU_LOGMEL_ONNX


ENTRY = register(RuntimeEntry(BACKEND_KEY, OnnxRuntimeConfig, OnnxRuntimeBackend, available))

__all__ = ["BACKEND_KEY", "ENTRY", "OnnxRuntimeBackend", "available", "import_onnxruntime", "usable_cores"]
