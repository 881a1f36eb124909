"""Training throughput: clips/s of the data pipeline alone and of training steps (CPU, and GPU).

    .venv/bin/python bench/train_throughput.py [--clips 48] [--batch-size 16] [--steps 6]
        [--threads N] [--workers 0] [--data DIR] [--json OUT.json]

The data pipeline is what feeds the model in ``edge-asd train``: the memory-mapped int16
cache -> ``WaveDataset`` (int16 -> float32) -> DataLoader batches -> log-mel (the model's
``stft`` front end on the CPU). It must deliver several times what the model consumes, or the
accelerator waits; the script prints the ratio. Training steps are full Noisy-ArcMix steps
(log-mel, mixup, forward, loss, backward, AdamW) on random-free synthetic clips. Without
``--data`` a small synthetic set is written to a temporary folder first (not timed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("bench.train_throughput")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pipeline_rate(dataset, batch_size: int, workers: int, passes: int) -> float:
    """Clips/s from cache rows to log-mel batches (CPU)."""
    from trainer.frontend import LogMel

    front = LogMel("stft")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    n = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(passes):
            for audio, _y in loader:
                front(audio)
                n += audio.shape[0]
    return n / (time.perf_counter() - t0)


def train_rate(dataset, num_classes: int, batch_size: int, steps: int, device: torch.device) -> float:
    """Clips/s of full Noisy-ArcMix training steps on ``device`` (after two warm-up steps)."""
    from trainer.model import TASTgramMFN
    from trainer.train import TrainConfig, _amp, _epoch_generator, compute_loss

    net = TASTgramMFN(num_classes, lowering="stft" if device.type == "cpu" else "conv").to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    cfg = TrainConfig(data=["-"], out="-")
    amp = _amp(device)
    gen = _epoch_generator(0, 0, 0, 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    batches = []
    while len(batches) < steps + 2:
        batches.extend(list(loader))
    net.train()
    n = 0
    t0 = 0.0
    for i, (audio, y) in enumerate(batches[: steps + 2]):
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        audio, y = audio.to(device), y.to(device)
        loss, _ = compute_loss(net, audio, y, cfg, gen, amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            n += audio.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=48, help="synthetic training clips to make (without --data)")
    ap.add_argument("--data", type=Path, help="an existing data folder instead of synthetic clips")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--gpu-batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per device")
    ap.add_argument("--passes", type=int, default=3, help="timed passes over the data for the pipeline")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    from edge_asd.core.synth import make_dataset
    from trainer.data import build_index, load_audio_cache
    from trainer.train import WaveDataset

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            per_id = max(1, args.clips // 2)
            make_dataset(Path(tmp) / "synth", types=1, ids=2, train_clips=per_id, test_clips=1, seed=0)
            data = Path(tmp) / "synth"
        index = build_index([str(data)])
        clips = [c for c in index.clips if c.split == "train"]
        cache = load_audio_cache([c.path for c in clips], cache_dir=Path(tmp) / "cache")
        labels = [index.class_index(c) for c in clips]
        dataset = WaveDataset(cache.audio, labels, range(len(clips)))
        results: dict = {
            "cpu": _cpu_name(),
            "cpu_threads": torch.get_num_threads(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "clips": len(clips),
            "batch_size": args.batch_size,
            "workers": args.workers,
        }
        results["pipeline_clips_per_s"] = pipeline_rate(dataset, args.batch_size, args.workers, args.passes)
        results["train_cpu_clips_per_s"] = train_rate(dataset, index.num_classes, args.batch_size, args.steps, torch.device("cpu"))
        if torch.cuda.is_available():
            results["gpu"] = torch.cuda.get_device_name(0)
            results["train_gpu_clips_per_s"] = train_rate(
                dataset, index.num_classes, args.gpu_batch_size, args.steps, torch.device("cuda")
            )
    fastest = max(v for k, v in results.items() if k.startswith("train_") and k.endswith("_per_s"))
    results["pipeline_over_model"] = results["pipeline_clips_per_s"] / fastest
    print(f"machine: {results['cpu']} ({results['cores']} cores, torch threads {results['cpu_threads']})")
    if "gpu" in results:
        print(f"gpu: {results['gpu']}")
    print(f"data pipeline (cache -> batches -> log-mel): {results['pipeline_clips_per_s']:8.1f} clips/s")
    print(f"training, CPU (batch {args.batch_size}):          {results['train_cpu_clips_per_s']:8.2f} clips/s")
    if "train_gpu_clips_per_s" in results:
        print(f"training, GPU (batch {args.gpu_batch_size}):          {results['train_gpu_clips_per_s']:8.1f} clips/s")
    verdict = "ok" if results["pipeline_over_model"] >= 5 else "TOO SLOW (needs >= 5x): add --workers"
    print(f"pipeline / fastest model: {results['pipeline_over_model']:.1f}x  {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
