"""What the condition indicators cost on this machine, per window and per 1 s hop.

The live daemon scores a 10 s window every second; the indicators are built from 1 s blocks
so that each hop computes the statistics of the new block only and combines the last ten
(``edge_asd.core.indicators``). The target is <= 5 % of a window's model inference time. This
measures, in milliseconds:

* ``compute``: all ten blocks and the combination, as enrolment and offline scoring pay it;
* ``block_stats``, ``combine`` and one hop (``block_stats`` of the new block + ``combine`` of
  the last ten), as the live path pays it;
* per window, ``block_stats`` / ``combine`` / ``spectra.profile`` one window at a time against
  ``block_stats_many`` / ``combine_many`` / ``spectra.profile_many`` over W windows at once
  (``--batch``, default 1 8 32 96: the daemon batches every stream's window of one tick).

Each figure is the median (and 90th percentile) of many timed calls after a warm-up, on a real
DCASE clip when ../shared/data has one (else synthetic machine-like noise). The inference time
to compare with is read from ``--inference-json`` (``bench/engine_throughput.py``'s output:
onnxruntime, batch 1) or given with ``--inference-ms``.

    .venv/bin/python bench/indicator_cost.py
    .venv/bin/python bench/indicator_cost.py --repeats 500 --out bench/results/indicator_cpu.json
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/indicator_cost.py --batch 1 8 32 96
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import cpu_description  # noqa: E402
from edge_asd.core import indicators, spectra  # noqa: E402
from edge_asd.core.audio_io import fit_length, read_audio  # noqa: E402
from edge_asd.core.constants import SAMPLE_RATE, WINDOW_SAMPLES  # noqa: E402

logger = logging.getLogger("bench.indicator_cost")

DEFAULT_INFERENCE_JSON = REPO / "bench" / "results" / "engine_cpu.json"
TARGET_SHARE = 0.05


def machine_description() -> dict:
    return {**cpu_description(), "numpy": np.__version__}


def test_signal() -> tuple[np.ndarray, str]:
    """20 s of audio: a real clip (repeated) when one exists, else noise with tones and knocks."""
    clips = sorted((REPO.parent / "shared" / "data").rglob("*.wav"))
    if clips:
        clip = fit_length(read_audio(clips[0]))
        return np.concatenate([clip, clip[::-1]]), str(clips[0].relative_to(REPO.parent))
    rng = np.random.default_rng(0)
    t = np.arange(2 * WINDOW_SAMPLES) / SAMPLE_RATE
    x = (
        0.05 * rng.standard_normal(t.size)
        + 0.05 * np.sin(2 * np.pi * 120 * t)
        + 0.02 * np.sin(2 * np.pi * 1730 * t)
    )
    x[:: SAMPLE_RATE // 7] += 0.3
    return x.astype(np.float32), "synthetic noise + tones + knocks"


def timed(fn: Callable[[], object], repeats: int, warmup: int = 5) -> dict[str, float]:
    """Median and 90th percentile of ``repeats`` calls, in ms, of wall time and of this
    thread's CPU time. On a shared, loaded machine the wall time of anything longer than a
    scheduler slice includes other processes' turns; the CPU time is what the call costs."""
    for _ in range(warmup):
        fn()
    wall = np.empty(repeats)
    cpu = np.empty(repeats)
    for i in range(repeats):
        start_cpu = time.thread_time()
        start = time.perf_counter()
        fn()
        wall[i] = time.perf_counter() - start
        cpu[i] = time.thread_time() - start_cpu
    return {
        "median_ms": 1e3 * float(np.median(wall)),
        "p90_ms": 1e3 * float(np.percentile(wall, 90)),
        "cpu_median_ms": 1e3 * float(np.median(cpu)),
        "cpu_p90_ms": 1e3 * float(np.percentile(cpu, 90)),
    }


def per_window(row: dict[str, float], windows: int) -> dict[str, float]:
    """A ``timed`` row of calls over ``windows`` windows, divided down to one window."""
    return {key: value / windows for key, value in row.items()}


def batch_steps(
    new_blocks: list[np.ndarray], windows: list[list[indicators.BlockStats]]
) -> dict[str, Callable[[], object]]:
    """The three live-path steps over ``windows``, one window at a time and batched."""
    stacked = np.stack(new_blocks)
    return {
        "block_stats": lambda: [indicators.block_stats(b) for b in new_blocks],
        "block_stats_many": lambda: indicators.block_stats_many(stacked),
        "combine": lambda: [indicators.combine(w) for w in windows],
        "combine_many": lambda: indicators.combine_many(windows),
        "profile": lambda: [spectra.profile(w) for w in windows],
        "profile_many": lambda: spectra.profile_many(windows),
    }


def cyclic_batch(
    blocks: list[np.ndarray], stats: list[indicators.BlockStats], w: int
) -> tuple[list[np.ndarray], list[list[indicators.BlockStats]]]:
    """W new blocks and W ten-block windows, taken cyclically from the test signal's blocks."""
    n_blocks = len(blocks)
    new_blocks = [blocks[i % n_blocks] for i in range(w)]
    windows = [[stats[(i + k) % n_blocks] for k in range(indicators.BLOCKS_PER_WINDOW)] for i in range(w)]
    return new_blocks, windows


def batched_rows(
    blocks: list[np.ndarray], stats: list[indicators.BlockStats], sizes: list[int], repeats: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-window ms of the three live-path steps, one window at a time and batched, for each
    batch size W (``cyclic_batch``)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    # Warm up at the largest batch first: glibc's malloc serves the batches' MB-sized
    # temporaries with fresh mmaps (page faults on every call) until a free of that size has
    # raised its dynamic mmap threshold, as it has in a daemon that has run a few ticks.
    for size in sorted(sizes)[-1:]:
        for fn in batch_steps(*cyclic_batch(blocks, stats, size)).values():
            fn()
    for w in sizes:
        calls = max(5, repeats // w)
        steps = batch_steps(*cyclic_batch(blocks, stats, w))
        out[str(w)] = {name: per_window(timed(fn, calls, warmup=2), w) for name, fn in steps.items()}
    return out


def inference_ms(path: Path) -> float | None:
    """onnxruntime batch-1 ms per window from an engine_throughput JSON, if there is one."""
    try:
        rows = json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError) as err:
        logger.info("no inference figure from %s: %s", path, err)
        return None
    for row in rows:
        if row.get("backend") == "onnxruntime" and row.get("batch") == 1:
            return float(row["ms_per_window"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=200, help="timed calls per measurement (per-hop figures)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--inference-json", type=Path, default=DEFAULT_INFERENCE_JSON)
    parser.add_argument(
        "--inference-ms", type=float, default=None, help="model ms per window (overrides the JSON)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        nargs="*",
        default=[1, 8, 32, 96],
        help="batch sizes W for the per-window batched figures (none: skip them)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    signal, source = test_signal()
    block = indicators.BLOCK_SAMPLES
    n_blocks = signal.size // block
    blocks = [signal[i * block : (i + 1) * block] for i in range(n_blocks)]
    window = signal[:WINDOW_SAMPLES]
    stats = [indicators.block_stats(b) for b in blocks]

    recent: deque[indicators.BlockStats] = deque(
        stats[: indicators.BLOCKS_PER_WINDOW], maxlen=indicators.BLOCKS_PER_WINDOW
    )
    next_block = [indicators.BLOCKS_PER_WINDOW]

    def hop() -> np.ndarray:
        """The live path: statistics of the newest block, combined with the nine before it."""
        recent.append(indicators.block_stats(blocks[next_block[0] % n_blocks]))
        next_block[0] += 1
        return indicators.combine(list(recent))

    ten = stats[: indicators.BLOCKS_PER_WINDOW]
    rows = {
        "compute (one window)": timed(lambda: indicators.compute(window), max(20, args.repeats // 5)),
        "block_stats (one block)": timed(lambda: indicators.block_stats(blocks[0]), args.repeats),
        "combine (ten blocks)": timed(lambda: indicators.combine(ten), args.repeats),
        "hop (block_stats + combine)": timed(hop, args.repeats),
    }
    batched = batched_rows(blocks, stats, args.batch, args.repeats)
    model_ms = args.inference_ms if args.inference_ms is not None else inference_ms(args.inference_json)
    machine = machine_description()
    machine["load_average"] = list(os.getloadavg())

    print(f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, numpy {machine['numpy']}")
    print("Load average during the run: " + ", ".join(f"{x:.2f}" for x in machine["load_average"]))
    print(f"Signal: {source}; {len(indicators.INDICATORS)} indicators; BlockStats {stats[0].nbytes} bytes")
    print()
    print(
        "| measurement | CPU median ms | CPU p90 ms | wall median ms | wall p90 ms | share of inference (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        share = "-" if model_ms is None else f"{100 * row['cpu_median_ms'] / model_ms:.1f} %"
        row["share_of_inference"] = None if model_ms is None else row["cpu_median_ms"] / model_ms
        print(
            f"| {name} | {row['cpu_median_ms']:.3f} | {row['cpu_p90_ms']:.3f} | "
            f"{row['median_ms']:.3f} | {row['p90_ms']:.3f} | {share} |"
        )
    if model_ms is not None:
        per_hop = rows["hop (block_stats + combine)"]["cpu_median_ms"]
        verdict = "within" if per_hop <= TARGET_SHARE * model_ms else "OVER"
        print(
            f"\nModel inference: {model_ms:.1f} ms per window; per-hop indicators ({per_hop:.2f} ms CPU) "
            f"{verdict} the {100 * TARGET_SHARE:.0f} % target ({TARGET_SHARE * model_ms:.2f} ms)."
        )
    if batched:
        print("\nPer window, CPU median ms: one window at a time vs W windows in one batched call")
        print()
        print(
            "| W | block_stats | block_stats_many | combine | combine_many | profile | profile_many | all three, batched |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for w, row in batched.items():
            cpu = {name: figures["cpu_median_ms"] for name, figures in row.items()}
            together = cpu["block_stats_many"] + cpu["combine_many"] + cpu["profile_many"]
            print(
                f"| {w} | {cpu['block_stats']:.3f} | {cpu['block_stats_many']:.3f} | {cpu['combine']:.3f} | "
                f"{cpu['combine_many']:.3f} | {cpu['profile']:.3f} | {cpu['profile_many']:.3f} | {together:.3f} |"
            )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine,
            "signal": source,
            "inference_ms_per_window": model_ms,
            "results": rows,
            "batched_per_window": batched,
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
