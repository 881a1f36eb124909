"""Inference throughput of every runtime on this machine: windows/s at batch 1, 8 and 32.

Measures, in one run on one machine: torch eager (conv front end, as trained), onnxruntime
fp32 on both graphs (``model_cpu.onnx`` with the STFT front end, ``model.onnx`` with the
DFT-as-conv front end) and TensorRT fp16 where a GPU and TensorRT exist. For each it also
times the front end alone (same backend, same lowering) to report its share, and turns the
time into effective GFLOP/s against the model's analytic FLOP count (backbone from the
layer shapes; front end: DFT conv or FFT + mel MatMul).

The model is randomly initialised (throughput does not depend on the weights). Prints a
markdown table and the machine, and writes JSON to ``--out``.

    python bench/engine_throughput.py --out bench-results/engine.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# The random bundle that the tests use lives with the test fixtures (not product code).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import cpu_description

logger = logging.getLogger("bench.engine_throughput")

WINDOW = 160000
N_FFT = 2048
HOP = 512
FRAMES = 313
N_BINS = N_FFT // 2 + 1
N_MELS = 128


def frontend_flops(lowering: str) -> float:
    """FLOPs per window of the log-mel front end for one lowering."""
    mel = 2.0 * N_BINS * N_MELS * FRAMES
    power = 3.0 * N_BINS * FRAMES
    if lowering == "conv":
        dft = 2.0 * (2 * N_BINS) * N_FFT * FRAMES
    else:  # real FFT: ~2.5 N log2 N per frame, plus the window multiply
        dft = (2.5 * N_FFT * math.log2(N_FFT) + N_FFT) * FRAMES
    return dft + power + mel


def backbone_flops(model) -> float:
    """2 x MACs per window of every Conv/Linear outside the front end, counted with forward hooks."""
    import torch
    from torch import nn

    macs = [0.0]

    def hook(module, inputs, output) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            k = math.prod(module.kernel_size) * module.in_channels // module.groups
            macs[0] += output[0].numel() * k
        elif isinstance(module, nn.Linear):
            macs[0] += output[0].numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and not name.startswith("frontend")
    ]
    with torch.inference_mode():
        model(torch.zeros(1, WINDOW))
    for h in handles:
        h.remove()
    return 2.0 * macs[0] + 2.0 * model.config.num_classes * 128


def timed(fn: Callable[[np.ndarray], object], audio: np.ndarray, min_seconds: float, min_reps: int = 2) -> float:
    """Seconds per call (after one warm-up call), repeated for at least ``min_seconds``."""
    fn(audio)
    reps, started = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - started < min_seconds:
        fn(audio)
        reps += 1
    return (time.perf_counter() - started) / reps


def export_frontend(lowering: str, path: Path) -> Path:
    import torch

    from trainer.frontend import LogMel

    module = LogMel(lowering).eval()
    with torch.no_grad():
        torch.onnx.export(
            module, (torch.zeros(2, WINDOW),), str(path), input_names=["audio"], output_names=["logmel"],
            dynamic_axes={"audio": {0: "batch"}, "logmel": {0: "batch"}}, opset_version=17, dynamo=False,
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/engine_throughput.json"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per measurement")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all logical cores)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-conv", action="store_true", help="skip onnxruntime on the conv graph (slow on CPUs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import onnxruntime as ort
    import torch

    from engines.export import export_run
    from engines.runtime import open_runtime
    from engines.runtime.tensorrt_backend import available as trt_available
    from tests.fixtures.random_bundle import RANDOM_CLASSES, make_random_run
    from trainer.checkpoint import load_model

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="edge-asd-bench-"))
    run = make_random_run(work / "run", RANDOM_CLASSES, seed=0, n_train=2, n_heldout=2, score="ce")
    bundle32 = export_run(run, work / "bundle-fp32", precision="fp32")
    model, _ = load_model(run)
    bb_flops = backbone_flops(model)
    rng = np.random.default_rng(0)
    max_batch = max(args.batches)
    audio_all = (0.1 * rng.standard_normal((max_batch, WINDOW))).astype(np.float32)
    fe_onnx = {low: export_frontend(low, work / f"frontend_{low}.onnx") for low in ("stft", "conv")}

    def ort_frontend(lowering: str) -> Callable[[np.ndarray], object]:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(fe_onnx[lowering]), opts, providers=["CPUExecutionProvider"])
        return lambda a: sess.run(None, {"audio": a})

    configs: list[tuple[str, str, str, Callable[[int], tuple[Callable, Callable | None, object]]]] = []
    if not args.skip_torch:

        def torch_factory(batch: int):
            def full(a):
                with torch.inference_mode():
                    return model(torch.from_numpy(a))

            def fe(a):
                with torch.inference_mode():
                    return model.logmel(torch.from_numpy(a))

            return full, fe, None

        configs.append(("torch eager", "conv front end, fp32", "conv", torch_factory))

    def ort_factory(onnx_file: str, lowering: str):
        def factory(batch: int):
            rt = open_runtime(bundle32, backend="onnxruntime", max_batch=batch, threads=threads, onnx_file=onnx_file)
            return rt.infer, ort_frontend(lowering), rt

        return factory

    configs.append(("onnxruntime", "model_cpu.onnx (STFT, fp32)", "stft", ort_factory("model_cpu.onnx", "stft")))
    if not args.skip_conv:
        configs.append(("onnxruntime", "model.onnx (conv, fp32)", "conv", ort_factory("model.onnx", "conv")))
    trt_reason = trt_available()
    gpu_name = None
    if trt_reason is None:
        bundle16 = export_run(run, work / "bundle-fp16", precision="fp16")

        def trt_factory(batch: int):
            rt = open_runtime(bundle16, backend="tensorrt", max_batch=max(32, batch))
            return rt.infer, None, rt

        configs.append(("tensorrt", "model.onnx (conv, fp16 backbone)", "conv", trt_factory))
        from engines.build import current_device

        gpu_name = current_device().gpu_name
    else:
        logger.warning("TensorRT not measured: %s", trt_reason)

    rows = []
    for backend, graph, lowering, factory in configs:
        for batch in args.batches:
            audio = audio_all[:batch]
            full, fe, handle = factory(batch)
            seconds = timed(full, audio, args.seconds)
            fe_seconds = timed(fe, audio, args.seconds / 2) if fe is not None else None
            if handle is not None:
                handle.close()
            flops = (bb_flops + frontend_flops(lowering)) * batch
            row = {
                "backend": backend,
                "graph": graph,
                "batch": batch,
                "windows_per_s": batch / seconds,
                "ms_per_window": 1000.0 * seconds / batch,
                "frontend_share": None if fe_seconds is None else min(1.0, fe_seconds / seconds),
                "gflops_effective": flops / seconds / 1e9,
            }
            rows.append(row)
            print(
                f"{backend:12s} {graph:34s} batch {batch:3d}: {row['windows_per_s']:7.1f} windows/s",
                flush=True,
            )

    machine = {**cpu_description(), "threads": threads, "gpu": gpu_name, "onnxruntime": ort.__version__,
               "torch": torch.__version__, "tensorrt": None if trt_reason else "yes"}
    model_flops = {
        "backbone_gflop_per_window": bb_flops / 1e9,
        "frontend_gflop_per_window": {low: frontend_flops(low) / 1e9 for low in ("conv", "stft")},
    }
    print()
    print(f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores, {threads} threads"
          + (f", GPU {gpu_name}" if gpu_name else ", no GPU/TensorRT"))
    print(f"Model: backbone {model_flops['backbone_gflop_per_window']:.2f} GFLOP/window; front end "
          f"{model_flops['frontend_gflop_per_window']['conv']:.2f} (conv) / "
          f"{model_flops['frontend_gflop_per_window']['stft']:.3f} (FFT) GFLOP/window")
    print()
    print("| backend | graph | batch | windows/s | ms/window | front-end share | effective GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        share = "-" if r["frontend_share"] is None else f"{100 * r['frontend_share']:.0f} %"
        print(f"| {r['backend']} | {r['graph']} | {r['batch']} | {r['windows_per_s']:.1f} | "
              f"{r['ms_per_window']:.1f} | {share} | {r['gflops_effective']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "model": model_flops, "results": rows}, indent=2) + "\n")
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
