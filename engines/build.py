"""TensorRT engine builds from a bundle's ``model.onnx``, on the device that will run them.

A TensorRT plan only runs on the TensorRT version and GPU it was built with, so plans live
under ``BUNDLE/engines/<trt version>_<gpu>_sm<cc>_<n>SMs_<m>GiB/`` with a sidecar
``engine.json`` (never a header inside the plan: ``trtexec --loadEngine`` must still read it).
Every Orin module reports the same GPU name and compute capability (``Orin (nvgpu)``, 8.7),
but an AGX Orin 64 GB has 16 SMs and an Orin Nano 4 GB has 4: tactics timed on one are not the
best on the other, so the SM count and the memory are part of the key (an image cloned from
one module to another builds its own plan). A plan whose TensorRT, GPU, compute capability,
SM count, memory, ONNX sha256 or max batch does not match is rebuilt (or refused with the
reason when building is not allowed).

Precision comes from the ONNX graph: the network is created ``STRONGLY_TYPED`` (required on
10.x for that, implied and the flag gone on 11.x), so the float32 front end and head and the
float16 backbone are built exactly as exported. ``BuilderFlag.FP16`` is only a fallback for a
10.x without strong typing. TensorRT API: 10.x (JetPack 6.1 and 6.2 ship 10.3),
forward-compatible 11.x. TensorRT 8.6 (JetPack 6.0) is refused when it is imported, with a
message that names the JetPack to install: its ``create_network`` cannot build the graph and
its own error would send the user to re-export a bundle that is fine.

The optimisation profile is tuned (``opt``) for ``max_batch``: the daemon asks for
``min(16, streams)`` and scores all due windows as one batch, so that is the batch it runs.
The timing cache is written atomically and a corrupt or foreign one is ignored with a warning.

CUDA contexts: the caller's thread never gets one. A build runs in a short-lived thread that
retains and pushes the device's primary context and, when done, calls ``Context.detach()``
while the context is still current there (``release_primary_context``). Only that call
reaches ``cuDevicePrimaryCtxRelease``: pycuda's ``~context()`` runs ``detach()`` from the base
class destructor, where the virtual call resolves to ``cuCtxDetach``, not to the primary
context's release, so popping and dropping the last reference (what ``pycuda.autoprimaryctx``
does at exit) fails that clean-up ("a clean-up operation failed") and leaks one retain per
build or backend. The release does not pop (unlike ``cuCtxDestroy``), so the driver keeps the
handle current on the worker thread, which ends right after; ``pop()`` before ``detach()``
would make pycuda push it again, with the same result, so ``pop()`` is never called.

Builds take minutes on a Jetson: ``progress`` is called during the build (TensorRT's progress
monitor plus a heartbeat) so the daemon can send systemd ``EXTEND_TIMEOUT_USEC``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edge_asd.config.runtime import TensorRTRuntimeConfig
from edge_asd.core.atomic import atomic_write_bytes, atomic_write_text
from edge_asd.core.errors import UserError
from engines.bundle import MODEL_ONNX, Bundle, as_bundle
from engines.errors import BackendUnavailableError, EngineBuildError

logger = logging.getLogger(__name__)

PLAN_NAME = "model.plan"
ENGINE_JSON = "engine.json"
TIMING_CACHE = "timing.cache"
_TRT_DEFAULTS = TensorRTRuntimeConfig()
DEFAULT_MAX_BATCH = _TRT_DEFAULTS.max_batch
"""The config's ``runtime: {type: tensorrt}`` defaults, the one place they are written."""
DEFAULT_WORKSPACE_MIB = _TRT_DEFAULTS.workspace_mib
HEARTBEAT_S = 10.0
TRT_INSTALL_HINT = (
    "install TensorRT's Python bindings: on a Jetson `sudo apt install python3-libnvinfer` (JetPack) and a venv "
    "with --system-site-packages; on x86 `pip install tensorrt`"
)
PYCUDA_INSTALL_HINT = "install pycuda: `pip install 'edge-asd[jetson]'` (needs nvcc on PATH and the CUDA headers)"
MIN_TENSORRT_MAJOR = 10
"""TensorRT 10 (JetPack 6.1 or newer) is the oldest that builds the exported graph: the network
API (``create_network`` flags, strong typing, ``execute_async_v3``) changed in 10.0."""

ProgressFn = Callable[[str], None]
T = TypeVar("T")


def tensorrt_version_problem(version: str) -> str | None:
    """Why this TensorRT cannot build or run our plans, None when it can. Pure: unit-tested.

    A version that does not start with a number is let through: the build itself says more.
    """
    match = re.match(r"\s*(\d+)", version)
    if match is None or int(match.group(1)) >= MIN_TENSORRT_MAJOR:
        return None
    return (
        f"TensorRT {version} is too old: edge-asd needs TensorRT {MIN_TENSORRT_MAJOR} or newer, which comes with "
        "JetPack 6.1 or newer (JetPack 6.0 ships TensorRT 8.6). Upgrade the Jetson to JetPack 6.1+ "
        "(L4T R36.4; docs/deploy.md), or run on the CPU with `runtime: {type: onnxruntime}`"
    )


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, refused with the JetPack to install when it is older than 10."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailableError(f"TensorRT is not importable: {TRT_INSTALL_HINT}") from err
    problem = tensorrt_version_problem(str(getattr(trt, "__version__", "")))
    if problem is not None:
        raise BackendUnavailableError(problem)
    return trt


def import_pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise BackendUnavailableError(f"pycuda is not importable: {PYCUDA_INSTALL_HINT}") from err
    return cuda


@dataclass(frozen=True)
class DeviceInfo:
    """What a plan is specific to.

    ``sm_count`` and ``memory_gib`` tell Orin modules apart (same name and compute capability
    on all of them); 0 means unknown and leaves them out of the key.
    """

    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    sm_count: int = 0
    memory_gib: int = 0

    @property
    def dir_name(self) -> str:
        return engine_dir_name(
            self.trt_version, self.gpu_name, self.compute_capability, self.sm_count, self.memory_gib
        )


def sanitise(name: str) -> str:
    """A GPU name as a directory component: ``NVIDIA Orin (nvgpu)`` -> ``NVIDIA-Orin-nvgpu``."""
    cleaned = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-.")
    return cleaned or "gpu"


def engine_dir_name(
    trt_version: str, gpu_name: str, compute_capability: str, sm_count: int = 0, memory_gib: int = 0
) -> str:
    """``10.3.0.30_Orin-nvgpu_sm87_8SMs_15GiB``: the folder of the plan for this TensorRT and GPU."""
    name = f"{sanitise(trt_version)}_{sanitise(gpu_name)}_sm{compute_capability.replace('.', '')}"
    if sm_count > 0:
        name += f"_{int(sm_count)}SMs_{int(memory_gib)}GiB"
    return name


def current_device(device_index: int = 0) -> DeviceInfo:
    """TensorRT version and the GPU's name, compute capability, SM count and memory (initialises
    CUDA, creates no context)."""
    trt = import_tensorrt()
    cuda = import_pycuda()
    cuda.init()
    if cuda.Device.count() <= device_index:
        raise EngineBuildError(f"no CUDA GPU {device_index} on this machine ({cuda.Device.count()} found)")
    dev = cuda.Device(device_index)
    major, minor = dev.compute_capability()
    return DeviceInfo(
        trt_version=str(trt.__version__),
        gpu_name=str(dev.name()),
        compute_capability=f"{major}.{minor}",
        sm_count=int(dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
        memory_gib=round(int(dev.total_memory()) / 2**30),
    )


def engine_paths(bundle: Bundle, device: DeviceInfo) -> tuple[Path, Path]:
    folder = bundle.engines_dir / device.dir_name
    return folder / PLAN_NAME, folder / ENGINE_JSON


def stale_reason(meta: dict[str, Any] | None, device: DeviceInfo, onnx_sha256: str, max_batch: int) -> str | None:
    """Why an existing plan cannot be used here (None when it can). Pure: unit-tested without a GPU."""
    if meta is None:
        return "no engine.json next to the plan"
    checks = [
        ("TensorRT version", meta.get("tensorrt_version"), device.trt_version),
        ("GPU", meta.get("gpu_name"), device.gpu_name),
        ("compute capability", meta.get("compute_capability"), device.compute_capability),
    ]
    if device.sm_count > 0:  # known on a real device; a plan from before the key had them is rebuilt
        checks += [
            ("SM count", meta.get("sm_count"), device.sm_count),
            ("GPU memory (GiB)", meta.get("memory_gib"), device.memory_gib),
        ]
    checks.append(("ONNX sha256", meta.get("onnx_sha256"), onnx_sha256))
    for what, built, here in checks:
        if built != here:
            return f"plan was built for {what} {built!r}, this is {here!r}"
    if int(meta.get("max_batch", 0)) < max_batch:
        return f"plan was built for max batch {meta.get('max_batch')}, {max_batch} requested"
    return None


def read_engine_json(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


class _TrtLogger:
    """Factory for a ``trt.ILogger`` that forwards to Python logging (parser and builder messages)."""

    @staticmethod
    def create(trt: Any) -> Any:
        class Forward(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                level = {
                    trt.ILogger.INTERNAL_ERROR: logging.CRITICAL,
                    trt.ILogger.ERROR: logging.ERROR,
                    trt.ILogger.WARNING: logging.WARNING,
                    trt.ILogger.INFO: logging.DEBUG,
                }.get(severity, logging.DEBUG)
                logger.log(level, "TensorRT: %s", msg)

        return Forward()


def _progress_monitor(trt: Any, progress: ProgressFn, mark: Callable[[], None] = lambda: None) -> Any | None:
    """A ``trt.IProgressMonitor`` (TensorRT >= 10.0) that reports phases to ``progress`` and
    calls ``mark`` on every step TensorRT completes (what the heartbeat counts as progress)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            mark()
            progress(f"TensorRT build: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            mark()
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            return None

    return Monitor()


def detached_error(err: BaseException, what: str) -> BaseException:
    """``err`` cut loose from its traceback and chained errors, for handing to another thread.

    A traceback holds every frame it passed through, and those frames hold the TensorRT
    engine, the execution context and the CUDA buffers: an exception stored in a Future (and
    re-raised in the caller's thread) would keep them alive, to be freed later in a thread
    without the CUDA context, or never. The full traceback is logged at DEBUG first. Our own
    errors keep their message; anything else becomes an ``EngineBuildError`` that says
    ``what`` failed and how.
    """
    logger.debug("%s failed", what, exc_info=err)
    if isinstance(err, UserError) or not isinstance(err, Exception):
        clean: BaseException = err  # a message that already says what to do, or KeyboardInterrupt/SystemExit
    else:
        clean = EngineBuildError(
            f"{what} failed: {type(err).__name__}: {err}. If the GPU is out of memory, stop other GPU programs "
            "or lower `runtime.max_batch`; `journalctl -u edge-asd` has TensorRT's own messages"
        )
    seen: set[int] = set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:  # every error of the chain holds frames
        seen.add(id(node))
        node.__traceback__ = None
        node = node.__cause__ or node.__context__
    clean.__traceback__ = None
    clean.__cause__ = None
    clean.__context__ = None
    clean.__suppress_context__ = True
    return clean


def release_primary_context(ctx: Any, what: str) -> None:
    """Give back one retain of the device's primary context, from the thread that retained it.

    Call it while ``ctx`` is current (pushed by this thread, everything made in it freed):
    pycuda's ``detach()`` then calls ``cuDevicePrimaryCtxRelease`` and takes the context off
    its own per-thread stack. Dropping the reference instead would leak the retain (the
    destructor calls ``cuCtxDetach``, which fails on a primary context), and ``pop()`` first
    would make ``detach()`` push it again. The driver keeps the released handle current on
    this thread (the release never pops), so the thread must end afterwards: only the
    short-lived CUDA threads of this module and of the TensorRT backend call this. A context
    that was retained but never pushed is pushed by ``detach()`` and released the same way.
    """
    try:
        ctx.detach()
    except Exception:
        logger.exception("could not release the CUDA primary context after %s", what)


def run_in_cuda_thread(device_index: int, work: Callable[[], T], what: str) -> T:
    """Run ``work()`` in a new thread that holds the device's primary context, and wait for it.

    The thread retains and pushes the context, and at the end releases it with
    ``release_primary_context`` (still current, in the same thread). What the driver leaves
    current on that thread ends with the thread; the caller's thread never has a context made
    current.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        ctx: Any = None
        try:
            cuda = import_pycuda()
            ctx = cuda.Device(device_index).retain_primary_context()
            ctx.push()
            outcome["result"] = work()
        except BaseException as err:  # handed to the caller's thread without its frames
            outcome["error"] = detached_error(err, what)
        finally:
            if ctx is not None:
                release_primary_context(ctx, what)
            ctx = None  # already released: pycuda's destructor has nothing left to do

    thread = threading.Thread(target=target, name="cuda-work", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome.pop("error")
    return outcome["result"]  # type: ignore[no-any-return]


def _attach_timing_cache(config: Any, path: Path | None) -> Any:
    """Give the builder the timing cache of earlier builds; returns the cache object, which
    must stay alive until the build ends.

    A cache that cannot be read, does not parse or comes from another TensorRT or GPU is
    ignored with a warning (the build then times every layer again and a fresh cache is
    written): a cache only saves minutes, it must never stop a build.
    """
    blob = b""
    if path is not None:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            blob = b""
        except OSError as err:
            logger.warning("cannot read the TensorRT timing cache %s (%s): building without it", path, err.strerror)
    if blob:
        try:
            cache = config.create_timing_cache(blob)
            attached = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False) is not False
        except Exception as err:  # the bindings raise on a blob they cannot parse
            logger.debug("TensorRT rejected the timing cache %s: %s", path, err)
            attached = False
        if attached:
            return cache
        logger.warning(
            "ignoring the TensorRT timing cache %s: it is corrupt or from another TensorRT or GPU; this build "
            "times every layer again and writes a fresh cache", path,
        )  # fmt: skip
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    """Write the timing cache atomically: a crash or a full disk leaves the old one or none,
    never half a file. A failure only costs the next build time, so it is a warning."""
    try:
        atomic_write_bytes(path, bytes(memoryview(config.get_timing_cache().serialize())))
    except OSError as err:
        logger.warning("could not save the TensorRT timing cache %s (%s): the next build takes longer", path, err.strerror)


class _Heartbeat:
    """Calls ``progress`` every ``period`` seconds while a blocking build moves on.

    A beat goes out only when TensorRT completed a step since the last one (``mark``, called
    by the progress monitor), so a hung build stops extending systemd's start timeout and
    times out as it should; ``always`` (no monitor to tell) beats on the clock alone."""

    def __init__(self, progress: ProgressFn, period: float = HEARTBEAT_S, *, always: bool = False) -> None:
        self._progress, self._period = progress, period
        self.always = always
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trt-build-heartbeat", daemon=True)
        self._started = time.monotonic()
        self._marked = False

    def mark(self) -> None:
        """TensorRT made progress (a step or a phase)."""
        self._marked = True

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            if not (self._marked or self.always):
                continue
            self._marked = False
            self._progress(f"building TensorRT engine ({time.monotonic() - self._started:.0f} s)")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


def build_plan(
    onnx_path: Path,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    window_samples: int = 160000,
    timing_cache: Path | None = None,
    progress: ProgressFn | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Parse ``onnx_path`` and build a serialized plan; returns (plan bytes, build facts).

    Needs a current CUDA context in the calling thread (the caller pushes one).
    """
    trt = import_tensorrt()
    say = progress or (lambda msg: logger.info("%s", msg))
    trt_logger = _TrtLogger.create(trt)
    builder = trt.Builder(trt_logger)
    flags = 0
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    say(f"parsing {onnx_path}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path}:\n  " + "\n  ".join(errors or ["(no parser errors given)"])
            + "\nRe-export the bundle with this edge-asd version (the graph must use only TensorRT 10.3 ops)"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if not strongly_typed and hasattr(trt.BuilderFlag, "FP16"):
        # Old 10.x without strong typing: let TensorRT choose fp16 where the graph does not pin types.
        logger.warning("TensorRT %s has no STRONGLY_TYPED networks: falling back to BuilderFlag.FP16", trt.__version__)
        config.set_flag(trt.BuilderFlag.FP16)
    heartbeat = _Heartbeat(say)
    monitor = _progress_monitor(trt, say, heartbeat.mark)
    heartbeat.always = monitor is None  # no monitor to tell: beat on the clock
    if monitor is not None:
        config.progress_monitor = monitor
    input_tensor = network.get_input(0)
    profile = builder.create_optimization_profile()
    # Tuned for max_batch: the daemon asks for min(16, streams) and runs every due window of a
    # tick as one batch, so that is the shape it runs; smaller batches (a late stream) still fit.
    batch_shape = (max_batch, window_samples)
    profile.set_shape(input_tensor.name, (1, window_samples), batch_shape, batch_shape)
    config.add_optimization_profile(profile)
    cache = _attach_timing_cache(config, timing_cache)
    say(f"building TensorRT {trt.__version__} engine (max batch {max_batch}, workspace {workspace_mib} MiB)")
    started = time.monotonic()
    with heartbeat:
        plan = builder.build_serialized_network(network, config)
    seconds = time.monotonic() - started
    if plan is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see the TensorRT errors logged "
            "above); try a larger --workspace-mib or a smaller --max-batch"
        )
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache)
    del cache
    outputs = {network.get_output(i).name: list(network.get_output(i).shape) for i in range(network.num_outputs)}
    facts = {
        "strongly_typed": strongly_typed,
        "opt_batch": int(max_batch),
        "build_seconds": round(seconds, 1),
        "input": {input_tensor.name: [-1, window_samples]},
        "outputs": outputs,
    }
    return bytes(memoryview(plan)), facts


def plan_deserializes(plan_path: Path) -> bool:
    """Whether this TensorRT can load ``plan_path`` (needs a current CUDA context)."""
    trt = import_tensorrt()
    runtime = trt.Runtime(_TrtLogger.create(trt))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    ok = engine is not None
    del engine, runtime
    return ok


@dataclass(frozen=True)
class EngineFiles:
    plan: Path
    meta: Path
    built: bool


def ensure_engine(
    bundle: Bundle | str | Path,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    allow_build: bool = True,
    force: bool = False,
    device: DeviceInfo | None = None,
    progress: ProgressFn | None = None,
    verify: bool = False,
) -> EngineFiles:
    """Return a plan that matches this device and the bundle's ONNX, building it when needed.

    ``verify`` also deserializes a plan whose ``engine.json`` matches (a truncated or corrupt
    plan is then rebuilt too); the runtime skips it because it deserializes the plan anyway.
    Needs a current CUDA context in the calling thread when a build or a verification happens.
    """
    bundle = as_bundle(bundle)
    device = device or current_device()
    plan_path, meta_path = engine_paths(bundle, device)
    onnx_sha = bundle.sha256(MODEL_ONNX)
    reason = "--force" if force else None
    if reason is None:
        reason = "no plan" if not plan_path.is_file() else stale_reason(read_engine_json(meta_path), device, onnx_sha, max_batch)
    if reason is None and verify and not plan_deserializes(plan_path):
        reason = "the plan does not deserialize (truncated or corrupt)"
    if reason is None:
        return EngineFiles(plan_path, meta_path, built=False)
    if not allow_build:
        raise EngineBuildError(
            f"no usable TensorRT engine in {plan_path.parent} ({reason}); build it with `edge-asd build-engine {bundle.path}`"
        )
    logger.info("building TensorRT engine for %s: %s", bundle.path, reason)
    plan, facts = build_plan(
        bundle.onnx_path,
        max_batch=max_batch,
        workspace_mib=workspace_mib,
        window_samples=bundle.manifest.window_samples,
        timing_cache=bundle.engines_dir / device.dir_name / TIMING_CACHE,
        progress=progress,
    )
    meta = {
        "tensorrt_version": device.trt_version,
        "gpu_name": device.gpu_name,
        "compute_capability": device.compute_capability,
        "sm_count": device.sm_count,
        "memory_gib": device.memory_gib,
        "onnx_sha256": onnx_sha,
        "onnx_file": MODEL_ONNX,
        "precision": bundle.manifest.onnx.precision,
        "max_batch": int(max_batch),
        "workspace_mib": int(workspace_mib),
        "plan_bytes": len(plan),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **facts,
    }
    try:
        # The plan first, then its engine.json: a crash in between leaves a plan without a
        # matching engine.json, which the next start rebuilds, never a mismatched pair.
        atomic_write_bytes(plan_path, plan)
        atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    except OSError as err:
        raise EngineBuildError(
            f"cannot write the TensorRT engine to {plan_path.parent}: {err.strerror}; free space on that file system "
            "or make it writable for the service user"
        ) from None
    logger.info("TensorRT engine written to %s in %.1f s", plan_path, facts["build_seconds"])
    return EngineFiles(plan_path, meta_path, built=True)


def build_engine(
    bundle: Bundle | str | Path,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    allow_build: bool = True,
    force: bool = False,
    device_index: int = 0,
    progress: ProgressFn | None = None,
) -> EngineFiles:
    """``edge-asd build-engine``: ``ensure_engine`` in a thread of its own that holds the CUDA
    context (``run_in_cuda_thread``), so the caller's thread is left without one."""
    device = current_device(device_index)  # TensorRT first: its message is the one a user needs
    bundle = as_bundle(bundle)
    return run_in_cuda_thread(
        device_index,
        lambda: ensure_engine(
            bundle,
            max_batch=max_batch,
            workspace_mib=workspace_mib,
            allow_build=allow_build,
            force=force,
            device=device,
            progress=progress,
            verify=True,
        ),
        f"building the TensorRT engine for {bundle.path}",
    )


__all__ = [
    "ENGINE_JSON",
    "PLAN_NAME",
    "MIN_TENSORRT_MAJOR",
    "DeviceInfo",
    "EngineFiles",
    "build_engine",
    "build_plan",
    "current_device",
    "detached_error",
    "engine_dir_name",
    "ensure_engine",
    "import_pycuda",
    "import_tensorrt",
    "plan_deserializes",
    "read_engine_json",
    "release_primary_context",
    "run_in_cuda_thread",
    "sanitise",
    "stale_reason",
    "tensorrt_version_problem",
]
