"""Inference throughput of every runtime on this machine: windows/s at batch 1, 8 and 32.

Measures, in one run on one machine: the official network as its authors run it (the same
TASTgram-MFN built from ``trainer/model.py``, in PyTorch eager, with a torchaudio-style mel
front end: ``torch.stft`` -> ``|X|^2`` -> slaney mel matrix -> ``10*log10(x + eps)``; its rows
are named ``official torch eager``), our torch eager model (conv front end, as trained),
onnxruntime fp32 on both graphs (``model_cpu.onnx`` with the STFT front end, ``model.onnx``
with the DFT-as-conv front end) and TensorRT fp16 where a GPU and TensorRT exist. Every row
also gets its ratio to the official network at the same batch (the issue's yardstick: how
much faster the device path is than running the published model as published). For each it
also times the front end alone (same backend, same lowering) to report its share, and turns
the time into effective GFLOP/s against the model's analytic FLOP count (backbone from the
layer shapes; front end: DFT conv or FFT + mel MatMul).

The model is randomly initialised (throughput does not depend on the weights). Prints a
markdown table and the machine, and writes JSON to ``--out``. On a shared machine, run it
``--repeat`` times: the JSON keeps every repetition and the table shows the median and spread.

    python bench/engine_throughput.py --out bench-results/engine.json
    python bench/engine_throughput.py --batches 1 8 --repeat 3 --skip-conv   # quicker, with spread
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
from typing import Any

import numpy as np

# The random bundle that the tests use lives with the test fixtures (not product code).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import cpu_description
from bench.memory import patch_onnxruntime
from edge_asd.core.constants import WINDOW_SAMPLES
from edge_asd.core.logmel import EPS, FRAMES, HOP, N_BINS, N_FFT, N_MELS, grid_start, mel_filterbank

logger = logging.getLogger("bench.engine_throughput")

WINDOW = WINDOW_SAMPLES
STREAMING = "cpu (streaming front end): model_cpu_logmel.onnx + streaming numpy log-mel, 1 s hop"
"""Graph label of the rows whose windows/s include the streaming front end's per-window cost
(one call at a time on every thread; with `` x N parallel runs`` appended: as ``listen`` runs it,
N single-threaded calls at once while the next streams' front end is computed)."""
OFFICIAL = "official torch eager"
"""Backend name of the official network's rows in the JSON (the ratios are taken against them)."""


def frontend_flops(lowering: str) -> float:
    """FLOPs per window of the log-mel front end for one lowering."""
    mel = 2.0 * N_BINS * N_MELS * FRAMES
    power = 3.0 * N_BINS * FRAMES
    if lowering == "conv":
        dft = 2.0 * (2 * N_BINS) * N_FFT * FRAMES
    elif lowering == "fft-stream":  # the frames a 1 s hop computes on the grid: 31.25 interior + 4 edge
        return frontend_flops("fft") * 35.25 / FRAMES
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


def official_frontend() -> Any:
    """The public code's mel front end, written the way torchaudio computes it (no torchaudio needed).

    ``torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=2048, hop_length=512,
    n_mels=128, power=2, pad_mode="constant", norm="slaney", mel_scale="slaney")`` is
    ``torch.stft(return_complex=True)``, ``abs().pow(2)``, then a matmul with the filterbank on
    the transposed spectrogram; the public code takes ``10*log10(x + eps)`` of it. Written out
    because torchaudio is not a dependency; the filterbank is the trainer's (tested against
    librosa), so the numbers match our front end and only the way of computing them differs.
    """
    import torch
    from torch import nn

    class TorchaudioStyleMel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)
            self.register_buffer("fb", torch.from_numpy(mel_filterbank()), persistent=False)  # (n_bins, n_mels)

        def forward(self, audio: torch.Tensor) -> torch.Tensor:
            spec = torch.stft(audio, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window=self.window, center=True,
                              pad_mode="constant", normalized=False, onesided=True, return_complex=True)
            power = spec.abs().pow(2.0)
            mel = torch.matmul(power.transpose(-1, -2), self.fb).transpose(-1, -2)
            return 10.0 * torch.log10(mel + EPS)

    return TorchaudioStyleMel()


def official_model(model: Any) -> Any:
    """The same architecture and weights as ``model``, with the official (torchaudio-style) front end."""
    from trainer.model import TASTgramMFN

    cfg = model.config
    official = TASTgramMFN(cfg.num_classes, cfg.arch, cfg.s, cfg.m)
    official.load_state_dict(model.state_dict())
    official.frontend = official_frontend()
    return official.eval()


class StreamingHops:
    """``batch`` streams at a 1 s hop through the device's streaming log-mel, as ``listen`` feeds them.

    Each call moves every stream one hop on (its audio drops the oldest second and gains a new
    one, taken from a pool of noise blocks), moves the window back onto the frame grid as
    ``Stream.model_window`` does, and computes its log-mel with the stream's ``LogMelStream``:
    only the frames it does not have yet, plus the four edge frames. The windows, log-mel and
    stream state are what the engine row's input is made of, so the windows/s of that row
    include the front end at its streaming cost. ``timed`` sees the same function signature as
    the other rows (the audio argument is only a stand-in).
    """

    def __init__(self, batch: int, hop: int = 16000, seed: int = 1, pool_blocks: int = 32) -> None:
        from edge_asd.core.logmel import LogMelStream

        rng = np.random.default_rng(seed)
        self.hop = hop
        self.pool = (0.1 * rng.standard_normal((pool_blocks, hop))).astype(np.float32)
        # Each stream's newest WINDOW + 512 samples: room to move its window back onto the grid.
        self.audio = (0.1 * rng.standard_normal((batch, WINDOW + HOP))).astype(np.float32)
        self.windows = np.empty((batch, WINDOW), dtype=np.float32)
        self.streams = [LogMelStream(hop_samples=hop, on_grid=True) for _ in range(batch)]
        self.start = HOP
        self.k = 0
        self.frontend_s = 0.0
        for _ in range(6):  # past the first windows: the cache holds what later windows reuse
            self.step()
        self.frontend_s = 0.0
        self._counts0 = self._counts()

    def _counts(self) -> tuple[int, int]:
        return sum(s.stats.computed for s in self.streams), sum(s.stats.reused for s in self.streams)

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """One hop of every stream: ``(audio (B, 160000), logmel (B, 128, 313))``."""
        t0 = time.perf_counter()
        self.start += self.hop
        moved = grid_start(self.start)
        back = self.audio.shape[1] - WINDOW - (self.start - moved)  # offset of the moved window
        for i in range(self.audio.shape[0]):
            block = self.pool[(self.k + 7 * i) % self.pool.shape[0]]
            self.audio[i, :-self.hop] = self.audio[i, self.hop:]
            self.audio[i, -self.hop:] = block
            self.windows[i] = self.audio[i, back : back + WINDOW]
        self.k += 1
        logmel = np.stack([s.window(w, moved) for s, w in zip(self.streams, self.windows)])
        self.frontend_s += time.perf_counter() - t0
        return self.windows, logmel

    def reuse(self) -> float:
        """Share of a window's 313 frames reused rather than computed, after the warm-up hops."""
        computed, reused = (now - then for now, then in zip(self._counts(), self._counts0))
        return reused / max(1, computed + reused)


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
    parser.add_argument("--skip-official", action="store_true", help="skip the official network (torch eager)")
    parser.add_argument("--parallel-runs", type=int, default=None,
                        help="parallel runs of the second streaming row (default: one per thread)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="measure every row this many times (median + spread)")
    parser.add_argument("--ort-variant", default="default",
                        help="onnxruntime session options to try, e.g. no-arena+no-spin (bench only, bench/memory.py)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    load_before = os.getloadavg()
    patch_onnxruntime(args.ort_variant)

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
    streaming_reuse: dict[int, Callable[[], float]] = {}
    if not args.skip_official:
        official = official_model(model)
        with torch.inference_mode():  # same numbers, other computation: say so before timing it
            probe = torch.from_numpy(audio_all[:1])
            gap_db = float((official.logmel(probe) - model.logmel(probe)).abs().max())
        print(f"official front end vs ours: max |difference| {gap_db:.2e} dB", flush=True)

        def official_factory(batch: int):
            def full(a):
                with torch.inference_mode():
                    return official(torch.from_numpy(a))

            def fe(a):
                with torch.inference_mode():
                    return official.logmel(torch.from_numpy(a))

            return full, fe, None

        configs.append((OFFICIAL, "TASTgram-MFN, torchaudio-style mel (torch.stft), fp32", "stft", official_factory))
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
            rt = open_runtime(bundle32, backend="onnxruntime", max_batch=batch, threads=threads, onnx_file=onnx_file,
                              parallel_runs=1)  # fmt: skip
            return rt.infer, ort_frontend(lowering), rt

        return factory

    configs.append(("onnxruntime", "model_cpu.onnx (STFT, fp32)", "stft", ort_factory("model_cpu.onnx", "stft")))
    logmel_graph = bundle32.logmel_onnx_path
    if logmel_graph is not None:
        # The CPU graph with a log-mel input (issue 13): once fed by the stateless numpy front end
        # (every frame of every window), once by the streaming one at a 1 s hop (new frames only).
        def numpy_factory(batch: int):
            from edge_asd.core.logmel import LogMelFrontEnd

            rt = open_runtime(bundle32, backend="onnxruntime", max_batch=batch, threads=threads, parallel_runs=1)
            fe = LogMelFrontEnd()
            return (lambda a: rt.infer(a, logmel=fe.window(a))), fe.window, rt

        def streaming_factory(runs: int):
            def factory(batch: int):
                rt = open_runtime(bundle32, backend="onnxruntime", max_batch=batch, threads=threads, parallel_runs=runs)
                if not getattr(rt, "accepts_logmel", False):
                    raise SystemExit(f"{logmel_graph.name} is in the bundle but the runtime did not open it: {rt.describe()}")
                hops = StreamingHops(batch)
                fe_hops = StreamingHops(batch, seed=2)
                in_flight: list = []

                def full(_a):
                    # As listen does: hand this batch to the engine, then wait for the one before it,
                    # so with parallel runs the next front end is computed while the engine runs.
                    audio, logmel = hops.step()
                    in_flight.append(rt.submit(audio.copy(), logmel))  # the next step shifts `audio`
                    return in_flight.pop(0).result() if len(in_flight) >= max(2, runs) else None

                streaming_reuse[batch] = hops.reuse
                return full, (lambda _a: fe_hops.step()), rt

            return factory

        configs.append(("onnxruntime", f"{logmel_graph.name} + numpy log-mel per window", "fft", numpy_factory))
        configs.append(("onnxruntime", STREAMING, "fft-stream", streaming_factory(1)))
        parallel = args.parallel_runs or threads
        if parallel > 1:
            configs.append(("onnxruntime", f"{STREAMING} x {parallel} parallel runs", "fft-stream", streaming_factory(parallel)))
    else:
        logger.warning("the exported bundle has no log-mel-input CPU graph: no streaming front-end row")
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

    # Rows are measured round-robin (every config at a batch, then again): on a shared machine a
    # burst of someone else's load then hits all rows of a round alike instead of one row.
    samples: dict[tuple[int, int], list[tuple[float, float | None]]] = {}
    for _ in range(max(1, args.repeat)):
        for batch in args.batches:
            audio = audio_all[:batch]
            for ci, (backend, graph, _lowering, factory) in enumerate(configs):
                full, fe, handle = factory(batch)
                seconds = timed(full, audio, args.seconds)
                fe_seconds = timed(fe, audio, args.seconds / 2) if fe is not None else None
                if handle is not None:
                    handle.close()
                samples.setdefault((ci, batch), []).append((seconds, fe_seconds))
                print(f"{backend:20s} {graph:40s} batch {batch:3d}: {batch / seconds:7.1f} windows/s", flush=True)
    rows = []
    for ci, (backend, graph, lowering, _factory) in enumerate(configs):
        for batch in args.batches:
            runs = samples[(ci, batch)]
            rates = sorted(batch / s for s, _ in runs)
            seconds = batch / float(np.median(rates))
            fe_runs = [f for _, f in runs if f is not None]
            fe_seconds = float(np.median(fe_runs)) if fe_runs else None
            flops = (bb_flops + frontend_flops(lowering)) * batch
            rows.append({
                "backend": backend,
                **({"frames_reused": round(streaming_reuse[batch](), 3)} if graph.startswith(STREAMING) else {}),
                "graph": graph,
                "batch": batch,
                "windows_per_s": batch / seconds,
                "windows_per_s_runs": [round(r, 2) for r in rates],
                "ms_per_window": 1000.0 * seconds / batch,
                "frontend_share": None if fe_seconds is None else min(1.0, fe_seconds / seconds),
                "gflops_effective": flops / seconds / 1e9,
            })
    official_rate = {r["batch"]: r["windows_per_s"] for r in rows if r["backend"] == OFFICIAL}
    official_best = max(official_rate.values()) if official_rate else None
    for r in rows:
        base = official_rate.get(r["batch"])
        # Same batch, and against the official network at its own best batch (a user of the
        # published code would pick that one: eager PyTorch on a CPU is fastest at batch 1).
        r["vs_official"] = None if base is None else r["windows_per_s"] / base
        r["vs_official_best"] = None if official_best is None else r["windows_per_s"] / official_best

    machine = {**cpu_description(), "threads": threads, "ort_variant": args.ort_variant,
               "load_average_before": load_before, "load_average_after": os.getloadavg(), "gpu": gpu_name, "onnxruntime": ort.__version__,
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
    print(f"Load average before / after: {load_before[0]:.1f} / {machine['load_average_after'][0]:.1f}"
          + (f"; {args.repeat} repetitions, windows/s is the median (min-max in brackets)" if args.repeat > 1 else ""))
    print()
    print("| backend | graph | batch | windows/s | ms/window | front-end share | effective GFLOP/s | vs official |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        share = "-" if r["frontend_share"] is None else f"{100 * r['frontend_share']:.0f} %"
        spread = r["windows_per_s_runs"]
        rate = f"{r['windows_per_s']:.1f}" + (f" ({spread[0]:.1f}-{spread[-1]:.1f})" if len(spread) > 1 else "")
        ratio = "-" if r["vs_official"] is None else f"{r['vs_official']:.2f}x"
        print(f"| {r['backend']} | {r['graph']} | {r['batch']} | {rate} | "
              f"{r['ms_per_window']:.1f} | {share} | {r['gflops_effective']:.1f} | {ratio} |")
    if official_rate:
        best_batch = max(official_rate, key=lambda b: official_rate[b])
        print(f"\nRatios to the official network: same batch / its best batch ({best_batch}, "
              f"{official_rate[best_batch]:.1f} windows/s):")
        for r in rows:
            if r["backend"] != OFFICIAL and r["vs_official"] is not None:
                print(f"  {r['backend']} {r['graph']} batch {r['batch']}: {r['vs_official']:.2f}x / "
                      f"{r['vs_official_best']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "model": model_flops, "results": rows}, indent=2) + "\n")
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
