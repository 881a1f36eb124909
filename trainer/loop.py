"""The epoch loop: train, re-estimate BatchNorm, validate, keep the selected epoch, save.

``EpochLoop.run`` is the middle of ``train``: it gets a built model, optimizer and data
loaders, and leaves every finished epoch on disk (``trainer.resume``) so that an interrupted
run loses at most the epoch in progress. The shuffle order and the mixup draws of an epoch
depend only on ``(seed, epoch, rank)`` (``trainer.steps.epoch_generator``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_asd.core.errors import UserError
from trainer import distributed as D
from trainer.config import TrainConfig
from trainer.data.dataset import WaveDataset
from trainer.progress import Progress
from trainer.resume import save_epoch
from trainer.selection import SelectionRule
from trainer.steps import MIXUP_STREAM, SHUFFLE_STREAM, Amp, compute_loss, epoch_generator
from trainer.validation import recalibrate_batchnorm, validate

logger = logging.getLogger(__name__)


@dataclass
class Loaders:
    """The training and held-out loaders of a run, built once (``--workers`` stay alive)."""

    train_ds: WaveDataset
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    sampler: Any
    shuffle_gen: torch.Generator | None  # re-seeded per epoch when not distributed


def make_loaders(train_ds: WaveDataset, val_ds: WaveDataset, cfg: TrainConfig, info: D.DistInfo) -> Loaders:
    """Samplers and loaders; a last training batch of one clip is dropped.

    The released code keeps the last partial batch (no ``drop_last``), and so do we, except
    when it would hold a single clip: BatchNorm in training mode cannot normalise one sample
    (the (B, 512, 1, 1) head has one value per channel) and raises. That clip is then left
    out of that epoch only; the shuffle puts another clip last next epoch.
    """
    pin = info.device.type == "cuda"
    loader_kw: dict[str, Any] = {"num_workers": cfg.workers, "pin_memory": pin, "persistent_workers": cfg.workers > 0}
    sampler: Any
    shuffle_gen: torch.Generator | None = None
    if info.distributed:
        sampler = torch.utils.data.DistributedSampler(train_ds, info.world_size, info.rank, shuffle=True, seed=cfg.seed)
        val_sampler = torch.utils.data.DistributedSampler(val_ds, info.world_size, info.rank, shuffle=False)
    else:
        # One sampler (and loader) for the whole run; its generator is re-seeded from
        # (seed, epoch) at the start of every epoch.
        shuffle_gen = torch.Generator()
        sampler = torch.utils.data.RandomSampler(train_ds, generator=shuffle_gen)
        val_sampler = None
    per_rank = len(sampler)
    if per_rank < 2:
        raise UserError(
            f"only {len(train_ds)} training clip(s) left after the held-out split: BatchNorm needs at least 2 "
            "per process; add clips or lower --val-fraction"
        )
    drop_last = per_rank % cfg.batch_size == 1
    if drop_last:
        logger.info("%d clips per process and batch %d: the last batch of one clip is dropped each epoch", per_rank, cfg.batch_size)
    train = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last, **loader_kw)
    val = torch.utils.data.DataLoader(val_ds, batch_size=cfg.batch_size, sampler=val_sampler, shuffle=False, **loader_kw)
    return Loaders(train_ds, train, val, sampler, shuffle_gen)


@dataclass
class Trainee:
    """What the loop updates: the network (and its DDP wrapper), optimizer, schedule, scaler."""

    net: nn.Module
    model: nn.Module  # ``net`` or a DDP wrapper around it
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    amp: Amp


@dataclass
class LoopOutcome:
    """Where the loop ended: the last saved epoch, the kept epoch, and why it stopped."""

    completed: int
    best_epoch: int
    best_loss: float
    stopped_early: bool = False
    interrupted: bool = False


class EpochLoop:
    """Runs epochs ``start..cfg.epochs-1`` of one run (on every rank; rank 0 writes)."""

    def __init__(
        self,
        cfg: TrainConfig,
        info: D.DistInfo,
        run_dir: Path,
        trainee: Trainee,
        loaders: Loaders,
        rule: SelectionRule,
        progress: Progress,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> None:
        self.cfg, self.info, self.run_dir = cfg, info, run_dir
        self.t, self.loaders, self.rule = trainee, loaders, rule
        self.progress, self.on_epoch = progress, on_epoch
        self._epoch_times: list[float] = []

    def run(self, start_epoch: int, best_loss: float = math.inf, best_epoch: int = -1) -> LoopOutcome:
        """Train until the last epoch, ``--max-minutes`` or Ctrl-C (the outcome says which)."""
        out = LoopOutcome(start_epoch - 1, best_epoch, best_loss)
        t_start = time.monotonic()
        try:
            for epoch in range(start_epoch, self.cfg.epochs):
                self._one_epoch(epoch, out)
                if self._out_of_time(epoch, t_start):
                    out.stopped_early = True
                    break
        except KeyboardInterrupt:
            out.interrupted = True
        return out

    def _one_epoch(self, epoch: int, out: LoopOutcome) -> None:
        cfg, info = self.cfg, self.info
        t0 = time.monotonic()
        task = self.progress.start(f"epoch {epoch + 1}/{cfg.epochs}", total=len(self.loaders.train))
        train_loss, train_acc = self._train_epoch(epoch, task)
        recalibrate_batchnorm(
            self.t.net, self.loaders.train_ds, cfg.bn_recalibration_clips // info.world_size, cfg.batch_size,
            info.device, cfg.seed + info.rank,
        )
        val_loss, val_acc, n_val = validate(self.t.net, self.loaders.val, cfg, info)
        select = val_loss if n_val > 0 else train_loss
        lr = self.t.optimizer.param_groups[0]["lr"]
        self.t.scheduler.step()
        kept = self.rule.keeps(epoch, select, out.best_epoch, out.best_loss)
        if kept:
            out.best_loss, out.best_epoch = select, epoch
        seconds = time.monotonic() - t0
        self._epoch_times.append(seconds)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss if n_val else None,
            "val_acc": val_acc if n_val else None,
            "lr": lr,
            "seconds": round(seconds, 3),
            "best": kept,
            "selection": self.rule.rule,
        }
        val_text = f" val {val_loss:.3f}/{val_acc:.3f}" if n_val else ""
        self.progress.finish(task, f"loss {train_loss:.3f} acc {train_acc:.3f}{val_text}" + (" *" if kept else ""))
        if info.is_main:
            save_epoch(self.run_dir, self.t.net, self.t.optimizer, self.t.scheduler, epoch, out.best_loss, out.best_epoch, kept, row)
            if self.on_epoch is not None:
                self.on_epoch(row)
        out.completed = epoch
        D.barrier(info)

    def _train_epoch(self, epoch: int, task: int) -> tuple[float, float]:
        """One pass over the training loader; mean loss and accuracy over all ranks."""
        cfg, info, t = self.cfg, self.info, self.t
        if info.distributed:
            self.loaders.sampler.set_epoch(epoch)
        elif self.loaders.shuffle_gen is not None:
            self.loaders.shuffle_gen.manual_seed(int(epoch_generator(cfg.seed, epoch, 0, SHUFFLE_STREAM).initial_seed()))
        mix_gen = epoch_generator(cfg.seed, epoch, info.rank, MIXUP_STREAM)
        t.net.train()
        tot_loss, tot_correct, tot_n = 0.0, 0.0, 0.0
        for audio, y in self.loaders.train:
            audio = audio.to(info.device, non_blocking=True)
            y = y.to(info.device, non_blocking=True)
            loss, logits = compute_loss(t.model, audio, y, cfg, mix_gen, t.amp)
            if not torch.isfinite(loss):
                raise UserError(
                    f"the loss became {float(loss)} at epoch {epoch + 1}: lower --lr or check the data "
                    "for silent or clipped clips"
                )
            t.optimizer.zero_grad(set_to_none=True)
            t.scaler.scale(loss).backward()
            t.scaler.step(t.optimizer)
            t.scaler.update()
            b = y.shape[0]
            tot_loss += float(loss.detach()) * b
            tot_correct += float((logits.argmax(1) == y).sum())
            tot_n += b
            self.progress.update(task, advance=1, info=f"loss {tot_loss / tot_n:.3f} acc {tot_correct / tot_n:.3f}")
        tot_loss, tot_correct, tot_n = D.all_reduce_sum([tot_loss, tot_correct, tot_n], info)
        return tot_loss / max(tot_n, 1), tot_correct / max(tot_n, 1)

    def _out_of_time(self, epoch: int, t_start: float) -> bool:
        """Whether another epoch (of the mean length so far) would pass ``--max-minutes``."""
        cfg = self.cfg
        if cfg.max_minutes is None or epoch + 1 >= cfg.epochs:
            return False
        elapsed = time.monotonic() - t_start
        stop = elapsed + float(np.mean(self._epoch_times)) > cfg.max_minutes * 60
        if not D.any_rank(stop, self.info):
            return False
        if self.info.is_main:
            logger.warning(
                "stopping after epoch %d of %d: --max-minutes %.1f reached (continue with --resume)",
                epoch + 1, cfg.epochs, cfg.max_minutes,
            )
        return True


__all__ = ["EpochLoop", "LoopOutcome", "Loaders", "Trainee", "make_loaders"]
