"""Where a benchmark's memory goes: RSS steps, peaks, and onnxruntime session-option variants.

Why a module of its own: the RSS of ``listen`` at 32 streams is a product goal (<= 400 MiB on
the 2-core VM), and finding what it is made of takes the same few tools in every script that
runs the daemon or an engine: the kernel's VmRSS/VmHWM (what the goal is about, including
native allocations that Python cannot see), tracemalloc (numpy and Python objects only), and
session options of onnxruntime tried *without* editing the backend (the bench patches
``onnxruntime.InferenceSession`` in its own process, so a measured variant can be proposed to
the backend with its figure).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.memory")

ORT_OPTIONS = ("no-arena", "no-mem-pattern", "mem-pattern", "env-arena-same-as-requested", "no-spin", "opt-basic",
               "opt-extended", "opt-disable")
"""Session-option changes ``patch_onnxruntime`` knows; a variant joins some with ``+``
(``no-arena+no-spin``); ``default`` is the backend as written (memory pattern off since issue 13;
``mem-pattern`` turns it back on, as before)."""
ORT_VARIANTS = ("default", "mem-pattern", "no-arena", "env-arena-same-as-requested")
"""The variants ``bench/memory.py`` compares by default."""


def parse_variant(variant: str) -> list[str]:
    """The options of a variant name, or SystemExit naming the known ones."""
    if variant == "default":
        return []
    options = variant.split("+")
    unknown = [o for o in options if o not in ORT_OPTIONS]
    if unknown:
        raise SystemExit(f"unknown onnxruntime option(s) {unknown}: join some of {', '.join(ORT_OPTIONS)} with +")
    return options


def status_mib(field: str) -> float:
    """One ``/proc/self/status`` field in MiB (``VmRSS`` now, ``VmHWM`` peak); NaN where absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_mib() -> float:
    """Resident set size now (what the RSS goal measures)."""
    return status_mib("VmRSS")


def hwm_mib() -> float:
    """Peak resident set size of the process so far."""
    return status_mib("VmHWM")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssSteps:
    """Named RSS marks (``mark``) plus a sampler thread that keeps the running peak between them."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.steps: list[dict[str, Any]] = []
        self.samples: list[tuple[float, float]] = []
        self._interval = interval_s
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread: threading.Thread | None = None

    def mark(self, name: str) -> float:
        rss = rss_mib()
        self.steps.append({"step": name, "t_s": round(time.monotonic() - self._t0, 2), "rss_mib": round(rss, 1),
                           "hwm_mib": round(hwm_mib(), 1)})
        return rss

    def start_sampling(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self._interval):
                self.samples.append((round(time.monotonic() - self._t0, 2), round(rss_mib(), 1)))

        self._thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)

    def report(self) -> str:
        lines = [f"{'step':44s} {'t s':>7s} {'RSS MiB':>8s} {'+MiB':>7s} {'peak MiB':>8s}"]
        previous = None
        for s in self.steps:
            delta = "" if previous is None else f"{s['rss_mib'] - previous:+7.1f}"
            lines.append(f"{s['step']:44s} {s['t_s']:7.1f} {s['rss_mib']:8.1f} {delta:>7s} {s['hwm_mib']:8.1f}")
            previous = s["rss_mib"]
        return "\n".join(lines)


def patch_onnxruntime(variant: str) -> None:
    """Make every ``InferenceSession`` this process opens use the session-option ``variant``.

    The backend builds its own ``SessionOptions``; this wraps the class so the variant is
    applied to them just before the session is created (bench only: the product is unchanged).
    ``env-arena-same-as-requested`` registers one shared CPU arena that grows by exactly what
    is asked (instead of doubling) and tells the session to use it; ``no-spin`` stops the
    intra-op threads from busy-waiting for work between and inside runs (the CPU they burn
    is what the capture threads and other processes need on a small machine).
    """
    options = parse_variant(variant)
    if not options:
        return
    import onnxruntime as ort

    original = ort.InferenceSession
    if "env-arena-same-as-requested" in options:
        cfg = ort.OrtArenaCfg({"max_mem": 0, "arena_extend_strategy": 1, "initial_chunk_size_bytes": -1,
                               "max_dead_bytes_per_chunk": -1})
        ort.create_and_register_allocator(ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                                             ort.OrtMemType.DEFAULT), cfg)
    levels = {"opt-basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "opt-extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "opt-disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}

    class Patched(original):  # type: ignore[misc, valid-type]
        def __init__(self, path: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> None:
            so = sess_options or ort.SessionOptions()
            if "no-arena" in options:
                so.enable_cpu_mem_arena = False
            if "no-mem-pattern" in options:
                so.enable_mem_pattern = False
            if "mem-pattern" in options:
                so.enable_mem_pattern = True
            if "env-arena-same-as-requested" in options:
                so.add_session_config_entry("session.use_env_allocators", "1")
            if "no-spin" in options:
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            for name, level in levels.items():
                if name in options:
                    so.graph_optimization_level = level
            logger.info("onnxruntime session with variant %s", variant)
            super().__init__(path, so, *args, **kwargs)

    ort.InferenceSession = Patched  # type: ignore[misc]


def tracemalloc_top(limit: int = 12) -> list[dict[str, Any]]:
    """The biggest Python/numpy allocation sites alive now (needs ``tracemalloc.start()`` earlier)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return []
    snapshot = tracemalloc.take_snapshot()
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    rows = [{"total_mib": round(total / 2**20, 1)}]
    for stat in snapshot.statistics("lineno")[:limit]:
        frame = stat.traceback[0]
        rows.append({"where": f"{frame.filename.split('/work/main/')[-1]}:{frame.lineno}",
                     "mib": round(stat.size / 2**20, 2), "blocks": stat.count})
    return rows


def engine_steps(
    bundle: Path, variant: str, batch: int, threads: int | None, onnx_file: str | None, timed_s: float = 0.0
) -> tuple[RssSteps, dict[str, float]]:
    """RSS of the engine alone: import, open, first batch, every smaller batch, repeated batches.

    With ``timed_s`` it then runs full batches for that long and returns wall and CPU
    milliseconds per window (CPU time is what a loaded machine distorts least; a variant that
    maps and unmaps its buffers on every run pays it as system time).
    """
    import numpy as np

    steps = RssSteps()
    steps.mark("python + numpy")
    patch_onnxruntime(variant)
    from engines.bundle import load_bundle
    from engines.runtime import open_runtime

    steps.mark("import engines + onnxruntime")
    kwargs: dict[str, Any] = {"backend": "onnxruntime", "max_batch": batch, "threads": threads}
    if onnx_file:
        kwargs["onnx_file"] = onnx_file
    rt = open_runtime(load_bundle(bundle), **kwargs)
    steps.mark("session open")
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((batch, 160000))).astype(np.float32)
    rt.infer(audio)
    steps.mark(f"first batch of {batch}")
    for _ in range(3):
        rt.infer(audio)
    steps.mark(f"3 more batches of {batch}")
    for b in range(1, batch):
        rt.infer(audio[:b])
    steps.mark(f"one batch of each size 1..{batch - 1}")
    for _ in range(3):
        for b in range(1, batch + 1):
            rt.infer(audio[:b])
    steps.mark("3 more rounds of every size")
    speed: dict[str, float] = {}
    if timed_s > 0:
        reps, cpu0, t0 = 0, cpu_seconds(), time.perf_counter()
        while time.perf_counter() - t0 < timed_s or reps < 3:
            rt.infer(audio)
            reps += 1
        windows = reps * batch
        speed = {"wall_ms_per_window": 1000.0 * (time.perf_counter() - t0) / windows,
                 "cpu_ms_per_window": 1000.0 * (cpu_seconds() - cpu0) / windows, "windows": windows}
        steps.mark(f"after {windows} timed windows")
    rt.close()
    import gc

    gc.collect()
    steps.mark("session closed")
    return steps, speed


def main() -> None:
    """``python bench/memory.py``: the engine's share of RSS for each onnxruntime variant."""
    import argparse
    import json
    import os
    import subprocess
    import sys

    parser = argparse.ArgumentParser(description="RSS of the onnxruntime engine alone, per session-option variant")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--variants", nargs="+", default=list(ORT_VARIANTS),
                        help=f"session-option variants: default, or options joined by + from {', '.join(ORT_OPTIONS)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--onnx-file", default=None, help="graph to open (default: the backend's choice)")
    parser.add_argument("--timed", type=float, default=0.0, help="then time full batches for this many seconds")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.bundle is None:
        from bench.listen_scale import default_bundle

        args.bundle = default_bundle()
    if args.one:
        steps, speed = engine_steps(args.bundle, args.variants[0], args.batch, args.threads, args.onnx_file, args.timed)
        print(json.dumps({"steps": steps.steps, "speed": speed}))
        return
    results = {}
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--one", "--bundle", str(args.bundle), "--variants", variant,
               "--batch", str(args.batch), "--timed", str(args.timed)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.onnx_file:
            cmd += ["--onnx-file", args.onnx_file]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
        steps = RssSteps()
        steps.steps = results[variant]["steps"]
        env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_")) or "no MALLOC_ settings"
        print(f"\n{variant} (batch {args.batch}, {env})")
        print(steps.report())
        speed = results[variant]["speed"]
        if speed:
            print(f"{speed['wall_ms_per_window']:.1f} ms/window wall, {speed['cpu_ms_per_window']:.1f} ms/window CPU "
                  f"over {speed['windows']} windows (load average {os.getloadavg()[0]:.1f})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
