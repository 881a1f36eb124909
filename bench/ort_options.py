"""onnxruntime session options side by side on one graph: which settings pay on this CPU.

Why interleaved: on a shared machine the load of other processes changes from second to
second, so timing one variant after another compares the load, not the settings. Here every
variant is its own ``InferenceSession`` on the same graph in one process, and in each round
every variant runs the same batch once, in turn; the medians over rounds are then comparable.
Besides wall time per window it reports CPU time per window (threads that spin or fault pages
show there) and the process RSS after all sessions ran every batch size. Each session has its
own intra-op threads, which spin for a while after a run: ``--gap-ms`` waits between runs so
one variant's spinning threads do not slow the next variant down.

Variants (``--variants``): ``default`` (what the backend sets: all cores, ``ORT_ENABLE_ALL``,
sequential, memory pattern off), ``mem-pattern`` (on, as before issue 13), ``no-arena``,
``no-spin`` (intra-op threads do not busy-wait), ``threads=N``, ``opt-extended``, ``opt-basic``,
``opt-disable``.

    python bench/ort_options.py BUNDLE --graph model_cpu_logmel.onnx --batches 4 8 --rounds 12
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import cpu_description
from bench.memory import rss_mib

logger = logging.getLogger("bench.ort_options")

DEFAULT_VARIANTS = ("default", "mem-pattern", "no-spin", "threads=1", "opt-extended", "opt-basic")


def session(ort: Any, path: Path, variant: str, threads: int) -> Any:
    """A session with the backend's options, changed as ``variant`` says."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_mem_pattern = False  # as engines/runtime/onnxruntime_backend.py
    if variant == "mem-pattern":
        so.enable_mem_pattern = True
    elif variant == "no-mem-pattern":  # the default since issue 13; kept so older commands run
        pass
    elif variant == "no-arena":
        so.enable_cpu_mem_arena = False
    elif variant == "no-spin":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif variant.startswith("threads="):
        so.intra_op_num_threads = int(variant.split("=", 1)[1])
    elif variant.startswith("opt-"):
        levels = {"opt-extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "opt-basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "opt-disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        if variant not in levels:
            raise SystemExit(f"unknown variant {variant!r}: use one of {', '.join(levels)}")
        so.graph_optimization_level = levels[variant]
    elif variant != "default":
        raise SystemExit(f"unknown variant {variant!r}; see the module docstring")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds_for(sess: Any, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random audio, and a plausible log-mel (dB) where the graph takes one."""
    feeds = {}
    for inp in sess.get_inputs():
        shape = [batch, *inp.shape[1:]]
        if inp.name == "audio":
            feeds[inp.name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            feeds[inp.name] = (10.0 * rng.standard_normal(shape) - 40.0).astype(np.float32)
    return feeds


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--graph", default="model_cpu.onnx", help="ONNX file of the bundle to run")
    parser.add_argument("--batches", type=int, nargs="+", default=[8])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of the default (all cores)")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="pause between two runs (lets spinning threads stop)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import onnxruntime as ort

    path = args.bundle / args.graph
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: pass a bundle folder and one of its .onnx files with --graph")
    threads = args.threads or os.cpu_count() or 1
    load_before = os.getloadavg()
    sessions = {v: session(ort, path, v, threads) for v in args.variants}
    rng = np.random.default_rng(0)
    feeds = {b: feeds_for(next(iter(sessions.values())), b, rng) for b in args.batches}
    for s in sessions.values():  # warm-up: every shape once
        for b in args.batches:
            s.run(None, feeds[b])
    wall: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for b in args.batches:
            for v, s in sessions.items():
                time.sleep(args.gap_ms / 1000.0)
                c0, t0 = cpu_seconds(), time.perf_counter()
                s.run(None, feeds[b])
                wall.setdefault((v, b), []).append(1000.0 * (time.perf_counter() - t0) / b)
                cpu.setdefault((v, b), []).append(1000.0 * (cpu_seconds() - c0) / b)
    rows = []
    for b in args.batches:
        for v in args.variants:
            w, c = np.array(wall[(v, b)]), np.array(cpu[(v, b)])
            rows.append({"variant": v, "batch": b, "wall_ms_median": float(np.median(w)),
                         "wall_ms_p10": float(np.percentile(w, 10)), "wall_ms_p90": float(np.percentile(w, 90)),
                         "cpu_ms_median": float(np.median(c))})
    machine = {**cpu_description(), "onnxruntime": ort.__version__, "threads": threads,
               "load_average_before": load_before, "load_average_after": os.getloadavg()}
    print(f"{path}: {args.rounds} rounds; load average {load_before[0]:.1f} -> {machine['load_average_after'][0]:.1f}; "
          f"RSS with all sessions {rss_mib():.0f} MiB\n")
    print("| variant | batch | ms/window median (p10-p90) | CPU ms/window |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['batch']} | {r['wall_ms_median']:.1f} ({r['wall_ms_p10']:.1f}-{r['wall_ms_p90']:.1f}) "
              f"| {r['cpu_ms_median']:.1f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "graph": str(path), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
