"""``train(TrainConfig)``: TASTgram-MFN with ArcFace / ArcMix / Noisy-ArcMix, start to finish.

Used by ``edge-asd train``, the demo and the tests. The steps, each in its own module:

1. the data: clip index and classes (``trainer.data``), the held-out split
   (``trainer.data.split``), the decoded-audio cache and the torch dataset
   (``trainer.data.dataset``);
2. the model, AdamW and the cosine schedule, restored from ``train_state.pt`` on ``--resume``
   (``trainer.resume``);
3. the epochs (``trainer.loop``), each leaving ``model_last.pt``, ``model_best.pt`` (chosen by
   ``trainer.selection``), a ``metrics.jsonl`` line and ``train_state.pt`` on disk;
4. after the last epoch, the kept model embeds the training normals (the knn references) and
   scores the held-out normals to calibrate per-class thresholds (``trainer.references``).

Started by ``torchrun`` the same call trains data-parallel (DDP; gloo on CPUs, nccl on GPUs);
only rank 0 writes files and reports progress. Progress goes to the ``Progress`` the caller
passes (the CLI draws bars) or, by default, to the log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_asd.core.errors import UserError
from trainer import distributed as D
from trainer.checkpoint import CHECKPOINTS, RunError, atomic_torch_save, save_run_config
from trainer.config import ARCHS, LOSSES, SCORES, TrainConfig, TrainResult, config_from_dict
from trainer.data.dataset import AudioStore, WaveDataset, load_training_audio
from trainer.data.split import Split, load_or_make_split, stratified_split
from trainer.loop import EpochLoop, LoopOutcome, Trainee, make_loaders
from trainer.progress import NullProgress, Progress, as_progress
from trainer.references import finalize_run
from trainer.resume import (
    STATE_FILE,
    check_run_dir,
    classes_for_run,
    keep_metrics_before,
    load_state,
    restore_rng,
)
from trainer.selection import SelectionRule
from trainer.steps import BackboneForward, amp_for, compute_loss, epoch_generator, seed_everything
from trainer.validation import recalibrate_batchnorm, validate

logger = logging.getLogger(__name__)

# Names older callers (bench/, tests) import from here.
_amp = amp_for
_epoch_generator = epoch_generator


def train(
    cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None, progress: Progress | None = None
) -> TrainResult:
    """Train (or resume) the run ``cfg.out``; see the module docstring for what it writes.

    ``on_epoch(row)`` gets each epoch's ``metrics.jsonl`` line (rank 0). ``progress`` receives
    the epochs and the audio decoding; without it, ``cfg.progress`` decides between log lines
    and silence.
    """
    cfg.validate()
    info = D.init(cfg.device)
    try:
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        report = (progress or as_progress(cfg.progress)) if info.is_main else NullProgress()
        run_dir = Path(cfg.out)
        state = _initial_state(run_dir, cfg, info)
        seed_everything(cfg.seed + info.rank)
        classes, labels, split, store = _prepare_data(run_dir, cfg, info, report)
        rule = SelectionRule.for_run(cfg.epochs, len(split.val), len(classes))
        trainee, start_epoch, best_loss, best_epoch = _build_trainee(run_dir, cfg, info, len(classes), state)
        if info.is_main:
            _write_run_config(run_dir, cfg, classes, rule, start_epoch)
            logger.info("model selection: %s", rule.reason)
        loaders = make_loaders(WaveDataset(store.audio, labels, split.train), WaveDataset(store.audio, labels, split.val), cfg, info)
        loop = EpochLoop(cfg, info, run_dir, trainee, loaders, rule, report, on_epoch)
        outcome = loop.run(start_epoch, best_loss, best_epoch)
        return _finish(run_dir, cfg, info, outcome, rule, report)
    finally:
        D.shutdown()


def _initial_state(run_dir: Path, cfg: TrainConfig, info: D.DistInfo) -> dict | None:
    """The saved state to resume from (None: a new run); every rank gets the same answer."""
    state = check_run_dir(run_dir, cfg.resume) if info.is_main else None
    if info.distributed:
        holder = [state is not None]
        torch.distributed.broadcast_object_list(holder, src=0)
        if holder[0] and not info.is_main:
            state = load_state(run_dir)
    return state


def _prepare_data(
    run_dir: Path, cfg: TrainConfig, info: D.DistInfo, report: Progress
) -> tuple[list[str], list[int], Split, AudioStore]:
    """Classes, per-clip labels, the held-out split (unreadable clips removed) and the audio."""
    from trainer import data

    index = data.build_index(cfg.data, layout=cfg.layout, class_by=cfg.class_by)
    train_clips = [c for c in index.clips if c.split == "train"]
    if not train_clips:
        raise UserError(f"no training clips found under {', '.join(map(str, cfg.data))} (layout {cfg.layout})")
    classes = classes_for_run(run_dir, index, cfg.resume)
    class_of = {name: i for i, name in enumerate(classes)}
    labels = [class_of[c.class_name] for c in train_clips]
    split = load_or_make_split(run_dir, train_clips, labels, cfg.val_fraction, cfg.seed, cfg.resume, write=info.is_main)
    store = _load_audio(train_clips, cfg, info, report)
    split = Split([i for i in split.train if store.ok(i)], [i for i in split.val if store.ok(i)])
    if not split.train:
        raise UserError("every training clip failed to load: check the data folders")
    return classes, labels, split, store


def _load_audio(clips: list[Any], cfg: TrainConfig, info: D.DistInfo, report: Progress) -> AudioStore:
    """The decoded-audio cache: rank 0 builds it (with progress), the others open it after."""
    paths = [c.path for c in clips]
    store = None
    if info.is_main:
        task = report.start("decoding audio", total=len(paths))
        store = load_training_audio(
            paths, cfg.cache_dir, cfg.skip_bad, lambda done, total: report.update(task, completed=done)
        )
        report.finish(task, f"{len(paths)} clips")
    D.barrier(info)
    if store is None:
        store = load_training_audio(paths, cfg.cache_dir, cfg.skip_bad)
    return store


def _build_trainee(
    run_dir: Path, cfg: TrainConfig, info: D.DistInfo, num_classes: int, state: dict | None
) -> tuple[Trainee, int, float, int]:
    """Model, AdamW, cosine schedule and scaler; restored from ``state`` when resuming.

    Returns the trainee, the first epoch to run and the best loss and epoch so far.
    """
    from trainer.model import TASTgramMFN

    lowering = "stft" if info.device.type == "cpu" else "conv"
    net = TASTgramMFN(num_classes, arch=cfg.arch, s=cfg.s, m=cfg.m, lowering=lowering).to(info.device)  # type: ignore[arg-type]
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr)
    start_epoch, best_loss, best_epoch = 0, math.inf, -1
    if state is not None:
        net.load_state_dict(torch.load(run_dir / CHECKPOINTS["last"], map_location="cpu", weights_only=True))
        net.to(info.device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        best_loss, best_epoch = float(state["best_val_loss"]), int(state["best_epoch"])
        restore_rng(state)
        if info.is_main:
            logger.info("resuming %s after epoch %d", run_dir, start_epoch)
    model: nn.Module = net
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(BackboneForward(net), device_ids=device_ids)
    amp = amp_for(info.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp[0] and amp[1] == torch.float16)
    return Trainee(net, model, optimizer, scheduler, scaler, amp), start_epoch, best_loss, best_epoch


def _write_run_config(run_dir: Path, cfg: TrainConfig, classes: list[str], rule: SelectionRule, start_epoch: int) -> None:
    """``config.json`` (model, classes, loss, hyperparameters, data, selection rule); metrics trimmed on resume."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(
        run_dir,
        {"num_classes": len(classes), "arch": cfg.arch, "s": cfg.s, "m": cfg.m},
        list(classes),
        {
            "loss": cfg.loss,
            "train": cfg.hyperparameters(),
            "data": {"layout": cfg.layout, "class_by": cfg.class_by, "roots": [str(Path(p).resolve()) for p in cfg.data]},
            "selection": rule.to_dict(),
            **cfg.extra,
        },
    )
    keep_metrics_before(run_dir, start_epoch)


def _finish(
    run_dir: Path, cfg: TrainConfig, info: D.DistInfo, outcome: LoopOutcome, rule: SelectionRule, report: Progress
) -> TrainResult:
    """References and thresholds with the kept model, unless the run was interrupted."""
    epochs_done = outcome.completed + 1
    result = TrainResult(
        run_dir, epochs_done, outcome.best_epoch, outcome.best_loss, outcome.stopped_early, outcome.interrupted,
        info.is_main, rule.reason,
    )
    if outcome.interrupted:
        if info.is_main:
            logger.info("interrupted: %d finished epoch(s) are saved in %s", epochs_done, run_dir)
        return result
    if info.is_main and outcome.best_epoch >= 0:
        logger.info("model_best.pt is epoch %d (%s)", outcome.best_epoch + 1, rule.reason)
        finalize_run(run_dir, cfg, info.device, progress=report)
    D.barrier(info)
    return result


__all__ = [
    "ARCHS",
    "LOSSES",
    "SCORES",
    "STATE_FILE",
    "RunError",
    "Split",
    "TrainConfig",
    "TrainResult",
    "WaveDataset",
    "atomic_torch_save",
    "compute_loss",
    "config_from_dict",
    "finalize_run",
    "recalibrate_batchnorm",
    "stratified_split",
    "train",
    "validate",
]
