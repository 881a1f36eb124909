"""The training loop: TASTgram-MFN with ArcFace / ArcMix / Noisy-ArcMix (spec §4-§5).

One function, ``train(TrainConfig)``, used by ``edge-asd train`` and by the tests. It is
written for long runs that get interrupted: every finished epoch leaves ``model_last.pt``,
``model_best.pt`` and ``train_state.pt`` (all written to a temporary name, then renamed), so a
run killed by Ctrl-C, ``kill -9`` or a power cut resumes with ``--resume`` and loses at most
the epoch in progress. Per-epoch randomness (shuffle order, mixup draws) is derived from
``(seed, epoch, rank)`` rather than from a global RNG stream, so a resumed run draws exactly
what an uninterrupted one would have.

After the last epoch the best model embeds a subsample of the training normals of each class
(``embeddings/class_NNN.npy``, the knn score's references) and scores the held-out normals to
calibrate per-class thresholds (``thresholds.json``).

Started by ``torchrun`` the same command trains data-parallel (DDP; gloo on CPUs, nccl on
GPUs); only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_asd.core.atomic import atomic_write_text
from edge_asd.core.errors import UserError
from trainer import distributed as D
from trainer.checkpoint import atomic_torch_save

logger = logging.getLogger(__name__)

LOSSES = ("noisy-arcmix", "arcmix", "arcface")
ARCHS = ("tastgram", "stgram")
SCORES = ("ce", "knn", "ensemble")
EMBEDDINGS_PER_CLASS = 512
"""At most this many training-normal embeddings per class are kept as knn references: enough to
cover a class's normal variety, small enough for a per-window matrix product on a Jetson."""

BN_RECALIBRATION_CLIPS = 256
"""Clean training clips whose batch statistics replace BatchNorm's running averages before
each validation (0 = off, the reference code's behaviour); see ``recalibrate_batchnorm``."""

STATE_FILE = "train_state.pt"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"


class RunError(UserError):
    """The run directory is missing, incomplete or belongs to another training recipe."""


@dataclass
class TrainConfig:
    """Every knob of a training run; stored in ``config.json`` under ``"train"``."""

    data: list[str]
    out: str
    loss: str = "noisy-arcmix"
    arch: str = "tastgram"
    epochs: int = 300
    batch_size: int = 64
    lr: float = 1e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.01
    alpha: float = 0.5
    s: float = 30.0
    m: float = 0.7
    val_fraction: float = 0.05
    seed: int = 2023
    device: str = "auto"
    workers: int = 0
    layout: str = "auto"
    class_by: str = "section"
    skip_bad: bool = False
    resume: bool = False
    score: str = "ce"
    knn_k: int = 4
    false_alarm_rate: float = 1e-3
    max_minutes: float | None = None
    threads: int | None = None
    embeddings_per_class: int = EMBEDDINGS_PER_CLASS
    bn_recalibration_clips: int = BN_RECALIBRATION_CLIPS
    cache_dir: str | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise UserError(f"--loss {self.loss!r} is unknown: use one of {', '.join(LOSSES)}")
        if self.arch not in ARCHS:
            raise UserError(f"--arch {self.arch!r} is unknown: use one of {', '.join(ARCHS)}")
        if self.score not in SCORES:
            raise UserError(f"--score {self.score!r} is unknown: use one of {', '.join(SCORES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("--epochs and --batch-size must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 < self.false_alarm_rate < 1:
            raise UserError(f"--false-alarm-rate must be in (0, 1), got {self.false_alarm_rate}")
        if self.knn_k < 1:
            raise UserError("--knn-k must be at least 1")
        if not self.data:
            raise UserError("give at least one data folder (DATA...)")

    def hyperparameters(self) -> dict[str, Any]:
        """What ``config.json["train"]`` records (the CLI's knobs, minus plumbing)."""
        d = asdict(self)
        for k in ("data", "out", "resume", "progress", "extra"):
            d.pop(k)
        return d


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    interrupted: bool = False
    is_main: bool = True


# --------------------------------------------------------------------------------------------
# data


@dataclass
class Split:
    """Which training clips are used for gradient steps and which are held out (per class)."""

    train: list[int]
    val: list[int]


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> Split:
    """Hold out ``fraction`` of each class (at least one clip when the class has two or more).

    Stratified so that every class keeps held-out normals for calibration, which a plain
    random 5 % split of 41 classes would not guarantee for small classes.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = 0
        if fraction > 0 and idx.size >= 2:
            n_val = min(max(1, round(fraction * idx.size)), idx.size - 1)
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return Split(sorted(train), sorted(val))


class WaveDataset(torch.utils.data.Dataset):
    """Float32 waveforms ``(160000,)`` and labels, read from the data layer's int16 cache."""

    def __init__(self, audio: Any, labels: Sequence[int], rows: Sequence[int]) -> None:
        self.audio = audio
        self.labels = np.asarray(labels, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r = int(self.rows[i])
        x = np.asarray(self.audio[r], dtype=np.float32) * (1.0 / 32768.0)
        return torch.from_numpy(x), int(self.labels[r])


# --------------------------------------------------------------------------------------------
# helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_generator(seed: int, epoch: int, rank: int, stream: int) -> torch.Generator:
    """A generator whose draws depend only on (seed, epoch, rank, stream): resumable."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0]))
    return g


def _unwrap(model: nn.Module) -> nn.Module:
    """The TASTgramMFN inside a DDP wrapper (DDP -> _BackboneForward -> net)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "net", model)


def _amp(device: torch.device) -> tuple[bool, torch.dtype]:
    """Autocast on CUDA (bf16 where supported: no loss scaling needed), never on the CPU."""
    if device.type != "cuda":
        return False, torch.float32
    return True, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def compute_loss(
    model: nn.Module,
    audio: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    amp: tuple[bool, torch.dtype],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step's loss and the logits used for the accuracy (margin on ``y_a``).

    The log-mel of the clean batch is computed without gradients (it has no parameters),
    then waveform and log-mel are mixed with one lambda and one permutation (spec §4.1).
    """
    from trainer import losses

    net = _unwrap(model)
    with torch.no_grad():
        logmel = net.logmel(audio)
    enabled, dtype = amp
    if cfg.loss == "arcface":
        y_a, y_b, lam = y, y, 1.0
    else:
        audio, logmel, y_a, y_b, lam = losses.mixup(audio, logmel, y, cfg.alpha, generator)
        y_b = y_b.to(y.device)
    with torch.autocast(device_type=audio.device.type, dtype=dtype, enabled=enabled):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            cosine = model(audio, logmel)
        else:
            cosine = net.head_cosine(net.backbone(audio, logmel))
    if cfg.loss == "arcface":
        loss = losses.arcface(cosine, y_a, cfg.s, cfg.m)
    elif cfg.loss == "arcmix":
        loss = losses.arcmix(cosine, y_a, y_b, lam, cfg.s, cfg.m)
    else:
        loss = losses.noisy_arcmix(cosine, y_a, y_b, lam, cfg.s, cfg.m)
    logits = losses.margin_logits(cosine.detach(), y_a, cfg.s, cfg.m)
    return loss, logits


class _BackboneForward(nn.Module):
    """DDP wraps a module's ``forward``; training needs ``head_cosine(backbone(audio, logmel))``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, audio: torch.Tensor, logmel: torch.Tensor) -> torch.Tensor:
        return self.net.head_cosine(self.net.backbone(audio, logmel))


@torch.no_grad()
def recalibrate_batchnorm(
    net: nn.Module, dataset: torch.utils.data.Dataset, n_clips: int, batch_size: int, device: torch.device, seed: int
) -> None:
    """Replace BatchNorm's running statistics by exact averages over clean training clips.

    Why: the running averages are an exponential average over recent *training* batches, with
    weights that were still moving and inputs that were mixed up. With the paper's small
    learning rate over 300 epochs the lag is negligible, but in short or high-learning-rate
    runs it is not: the statistics then describe weights of several steps ago, and in eval mode
    every clip maps to nearly the same embedding (validation loss and AUC collapse while the
    training loss is low). One forward pass over at most ``n_clips`` clean clips (a fixed
    seeded subset, so a resumed run does the same) makes eval mode match the final weights;
    it costs well under 1 % of an epoch on DCASE-sized data.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    n = min(int(n_clips), len(dataset))
    if not norms or n < 2:
        return
    order = torch.randperm(len(dataset), generator=_epoch_generator(seed, 0, 0, 2))[:n].tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, order), batch_size=max(batch_size, 2))
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    enabled, dtype = _amp(device)
    net.train()
    try:
        for audio, _ in loader:
            if audio.shape[0] < 2:  # BatchNorm on the (B, 512, 1, 1) head needs two samples
                continue
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled):
                net.embed(audio.to(device, non_blocking=True))
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        net.eval()


@torch.no_grad()
def validate(
    net: nn.Module, loader: torch.utils.data.DataLoader, cfg: TrainConfig, info: D.DistInfo
) -> tuple[float, float, int]:
    """Mean CE with the margin on the true label, no mixup (the model-selection criterion)."""
    from trainer import losses

    net.eval()
    enabled, dtype = _amp(info.device)
    total, correct, n = 0.0, 0.0, 0.0
    for audio, y in loader:
        audio = audio.to(info.device, non_blocking=True)
        y = y.to(info.device, non_blocking=True)
        with torch.autocast(device_type=audio.device.type, dtype=dtype, enabled=enabled):
            embedding = net.embed(audio)
        logits = losses.margin_logits(net.head_cosine(embedding), y, cfg.s, cfg.m)
        total += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        n += y.shape[0]
    total, correct, n = D.all_reduce_sum([total, correct, n], info)
    if n == 0:
        return float("nan"), float("nan"), 0
    return total / n, correct / n, int(n)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from edge_asd.cli.output import error_console

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=error_console,
        disable=not enabled,
        transient=False,
    )


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("skipping a torn line in %s", path)
    return rows


def _rewrite_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# --------------------------------------------------------------------------------------------
# the run


def _check_run_dir(run_dir: Path, resume: bool) -> dict | None:
    """Refuse to overwrite a run by accident; return the saved state when resuming."""
    state_path = run_dir / STATE_FILE
    if resume:
        if not state_path.is_file():
            if (run_dir / "config.json").is_file():
                logger.warning("%s has no %s (killed before the first epoch ended): starting over", run_dir, STATE_FILE)
            return None
        return torch.load(state_path, map_location="cpu", weights_only=True)
    if state_path.is_file() or (run_dir / "model_last.pt").is_file():
        raise RunError(
            f"{run_dir} already holds a training run: pass --resume to continue it, or choose another --out"
        )
    return None


def train(cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg.out``; see the module docstring for what it writes."""
    from trainer import checkpoint, data
    from trainer.model import TASTgramMFN

    cfg.validate()
    info = D.init(cfg.device)
    try:
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        run_dir = Path(cfg.out)
        state = _check_run_dir(run_dir, cfg.resume) if info.is_main else None
        if info.distributed:
            holder = [state is not None]
            torch.distributed.broadcast_object_list(holder, src=0)
            if holder[0] and not info.is_main:
                state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
        seed_everything(cfg.seed + info.rank)

        index = data.build_index(cfg.data, layout=cfg.layout, class_by=cfg.class_by)
        train_clips = [c for c in index.clips if c.split == "train"]
        if not train_clips:
            raise UserError(f"no training clips found under {', '.join(map(str, cfg.data))} (layout {cfg.layout})")
        classes = _classes_for_run(run_dir, index, cfg.resume)
        class_of = {name: i for i, name in enumerate(classes)}
        labels = [class_of[c.class_name] for c in train_clips]
        split = _load_or_make_split(run_dir, train_clips, labels, cfg, info)
        store = _audio_store(data, train_clips, cfg, info)
        split = Split([i for i in split.train if store.ok(i)], [i for i in split.val if store.ok(i)])
        if not split.train:
            raise UserError("every training clip failed to load: check the data folders")

        model_cfg = {"num_classes": len(classes), "arch": cfg.arch, "s": cfg.s, "m": cfg.m}
        net = TASTgramMFN(len(classes), arch=cfg.arch, s=cfg.s, m=cfg.m, lowering="stft" if info.device.type == "cpu" else "conv")
        net.to(info.device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr)
        start_epoch, best_loss, best_epoch = 0, math.inf, -1
        if state is not None:
            net.load_state_dict(torch.load(run_dir / "model_last.pt", map_location="cpu", weights_only=True))
            net.to(info.device)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch = int(state["epoch"]) + 1
            best_loss, best_epoch = float(state["best_val_loss"]), int(state["best_epoch"])
            _restore_rng(state)
            if info.is_main:
                logger.info("resuming %s after epoch %d", run_dir, start_epoch)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.save_run_config(
                run_dir,
                model_cfg,
                list(classes),
                {
                    "loss": cfg.loss,
                    "train": cfg.hyperparameters(),
                    "data": {"layout": cfg.layout, "class_by": cfg.class_by, "roots": [str(Path(p).resolve()) for p in cfg.data]},
                    **cfg.extra,
                },
            )
            metrics_rows = [r for r in _read_metrics(run_dir / METRICS_FILE) if r.get("epoch", 10**9) < start_epoch]
            _rewrite_metrics(run_dir / METRICS_FILE, metrics_rows)

        model: nn.Module = net
        if info.distributed:
            model = nn.parallel.DistributedDataParallel(
                _BackboneForward(net), device_ids=[info.device.index] if info.device.type == "cuda" else None
            )
        pin = info.device.type == "cuda"
        train_ds = WaveDataset(store.audio, labels, split.train)
        val_ds = WaveDataset(store.audio, labels, split.val)
        loader_kw: dict[str, Any] = {"num_workers": cfg.workers, "pin_memory": pin, "persistent_workers": cfg.workers > 0}
        train_sampler: Any
        if info.distributed:
            train_sampler = torch.utils.data.DistributedSampler(train_ds, info.world_size, info.rank, shuffle=True, seed=cfg.seed)
            val_sampler = torch.utils.data.DistributedSampler(val_ds, info.world_size, info.rank, shuffle=False)
        else:
            # One sampler (and loader, so --workers stay alive) for the whole run; its generator
            # is re-seeded from (seed, epoch) at the start of every epoch.
            shuffle_gen = torch.Generator()
            train_sampler = torch.utils.data.RandomSampler(train_ds, generator=shuffle_gen)
            val_sampler = None
        loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, sampler=train_sampler, **loader_kw)
        val_loader = torch.utils.data.DataLoader(val_ds, batch_size=cfg.batch_size, sampler=val_sampler, shuffle=False, **loader_kw)

        amp = _amp(info.device)
        scaler = torch.amp.GradScaler("cuda", enabled=amp[0] and amp[1] == torch.float16)
        t_start = time.monotonic()
        epoch_times: list[float] = []
        stopped_early = False
        interrupted = False
        completed = start_epoch - 1  # last epoch whose files are saved
        with _progress(cfg.progress and info.is_main) as progress:
            try:
                for epoch in range(start_epoch, cfg.epochs):
                    t0 = time.monotonic()
                    if info.distributed:
                        train_sampler.set_epoch(epoch)
                    else:
                        shuffle_gen.manual_seed(int(_epoch_generator(cfg.seed, epoch, 0, 0).initial_seed()))
                    mix_gen = _epoch_generator(cfg.seed, epoch, info.rank, 1)
                    task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader), info="")
                    net.train()
                    tot_loss, tot_correct, tot_n = 0.0, 0.0, 0.0
                    for audio, y in loader:
                        audio = audio.to(info.device, non_blocking=True)
                        y = y.to(info.device, non_blocking=True)
                        loss, logits = compute_loss(model, audio, y, cfg, mix_gen, amp)
                        if not torch.isfinite(loss):
                            raise UserError(
                                f"the loss became {float(loss)} at epoch {epoch + 1}: lower --lr or check the data "
                                "for silent or clipped clips"
                            )
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                        b = y.shape[0]
                        tot_loss += float(loss.detach()) * b
                        tot_correct += float((logits.argmax(1) == y).sum())
                        tot_n += b
                        progress.update(
                            task, advance=1, info=f"loss {tot_loss / tot_n:.3f} acc {tot_correct / tot_n:.3f}"
                        )
                    tot_loss, tot_correct, tot_n = D.all_reduce_sum([tot_loss, tot_correct, tot_n], info)
                    train_loss, train_acc = tot_loss / max(tot_n, 1), tot_correct / max(tot_n, 1)
                    recalibrate_batchnorm(
                        net, train_ds, cfg.bn_recalibration_clips // info.world_size, cfg.batch_size, info.device,
                        cfg.seed + info.rank,
                    )
                    val_loss, val_acc, n_val = validate(net, val_loader, cfg, info)
                    select = val_loss if n_val > 0 else train_loss
                    lr = optimizer.param_groups[0]["lr"]
                    scheduler.step()
                    improved = select < best_loss
                    if improved:
                        best_loss, best_epoch = select, epoch
                    seconds = time.monotonic() - t0
                    epoch_times.append(seconds)
                    row = {
                        "epoch": epoch,
                        "train_loss": train_loss,
                        "train_acc": train_acc,
                        "val_loss": val_loss if n_val else None,
                        "val_acc": val_acc if n_val else None,
                        "lr": lr,
                        "seconds": round(seconds, 3),
                        "best": improved,
                    }
                    progress.update(
                        task,
                        info=f"loss {train_loss:.3f} acc {train_acc:.3f} val {val_loss:.3f}/{val_acc:.3f}"
                        + (" *" if improved else ""),
                    )
                    if info.is_main:
                        _save_epoch(run_dir, net, optimizer, scheduler, epoch, best_loss, best_epoch, improved, row)
                        if on_epoch is not None:
                            on_epoch(row)
                    completed = epoch
                    D.barrier(info)
                    if cfg.max_minutes is not None and epoch + 1 < cfg.epochs:
                        elapsed = time.monotonic() - t_start
                        stop = elapsed + float(np.mean(epoch_times)) > cfg.max_minutes * 60
                        if D.any_rank(stop, info):
                            stopped_early = True
                            if info.is_main:
                                logger.warning(
                                    "stopping after epoch %d of %d: --max-minutes %.1f reached (continue with --resume)",
                                    epoch + 1, cfg.epochs, cfg.max_minutes,
                                )
                            break
            except KeyboardInterrupt:
                interrupted = True
        epochs_done = completed + 1
        if interrupted:
            if info.is_main:
                from edge_asd.cli.output import error_console

                error_console.print(
                    f"[yellow]interrupted[/]: {epochs_done} finished epoch(s) are saved in {run_dir}. "
                    f"Continue with the same command plus [bold]--resume[/]."
                )
            return TrainResult(run_dir, epochs_done, best_epoch, best_loss, stopped_early, True, info.is_main)
        if info.is_main and best_epoch >= 0:
            finalize_run(run_dir, cfg, info.device, progress=cfg.progress)
        D.barrier(info)
        return TrainResult(run_dir, epochs_done, best_epoch, best_loss, stopped_early, False, info.is_main)
    finally:
        D.shutdown()


@dataclass
class _AudioStore:
    """Decoded int16 clips, row i = training clip i, plus which rows are usable."""

    audio: Any
    good: np.ndarray

    def ok(self, i: int) -> bool:
        return bool(self.good[i])


def _audio_store(data: Any, clips: Sequence[Any], cfg: TrainConfig, info: D.DistInfo) -> _AudioStore:
    """The data layer's memory-mapped int16 cache of the training clips (built by rank 0)."""
    paths = [c.path for c in clips]
    if info.is_main:
        cache = data.load_audio_cache(paths, cache_dir=cfg.cache_dir, skip_bad=cfg.skip_bad, progress=cfg.progress)
    D.barrier(info)
    if not info.is_main:
        cache = data.load_audio_cache(paths, cache_dir=cfg.cache_dir, skip_bad=cfg.skip_bad, progress=False)
    return _AudioStore(cache.audio, np.asarray(cache.ok, dtype=bool))


def _classes_for_run(run_dir: Path, index: Any, resume: bool) -> list[str]:
    """The run's class list: from config.json when resuming (indices must not move)."""
    classes = list(index.classes)
    cfg_path = run_dir / "config.json"
    if resume and cfg_path.is_file():
        saved = json.loads(cfg_path.read_text()).get("classes")
        if saved and saved != classes:
            missing = sorted(set(classes) - set(saved))
            if missing:
                raise RunError(
                    f"the data now holds classes {missing[:5]} that the run {run_dir} was not trained on: "
                    "resume with the same data folders, or start a new run"
                )
            return list(saved)
    return classes


def _load_or_make_split(run_dir: Path, clips: Sequence[Any], labels: Sequence[int], cfg: TrainConfig, info: D.DistInfo) -> Split:
    """The held-out split, stored as file paths in ``split.json`` so resume and calibrate-run agree."""
    path = run_dir / SPLIT_FILE
    paths = [str(c.path) for c in clips]
    if cfg.resume and path.is_file():
        saved = json.loads(path.read_text())
        val_set = set(saved.get("val", []))
        val = [i for i, p in enumerate(paths) if p in val_set]
        train = [i for i, p in enumerate(paths) if p not in val_set]
        return Split(train, val)
    split = stratified_split(labels, cfg.val_fraction, cfg.seed)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            path, json.dumps({"seed": cfg.seed, "val_fraction": cfg.val_fraction, "val": [paths[i] for i in split.val]}, indent=1)
        )
    return split


def _save_epoch(
    run_dir: Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    best_loss: float,
    best_epoch: int,
    improved: bool,
    row: dict,
) -> None:
    """Weights, then the metrics line, then the state: the state file is the commit point.

    If a crash hits between the files, the state still names the previous epoch, so the
    resumed run redoes this epoch and the metrics line of the torn epoch is dropped on resume.
    """
    state_dict = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_torch_save(state_dict, run_dir / "model_last.pt")
    if improved:
        atomic_torch_save(state_dict, run_dir / "model_best.pt")
    rows = [r for r in _read_metrics(run_dir / METRICS_FILE) if r.get("epoch") != epoch] + [row]
    _rewrite_metrics(run_dir / METRICS_FILE, rows)
    state = {
        "epoch": epoch,
        "best_val_loss": best_loss,
        "best_epoch": best_epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": _python_rng_state(),
        "numpy_rng": _numpy_rng_state(),
    }
    atomic_torch_save(state, run_dir / STATE_FILE)


def _python_rng_state() -> list[int]:
    version, internal, gauss = random.getstate()
    return [int(version), *[int(v) for v in internal], -1 if gauss is None else 0]


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    py = state.get("python_rng")
    if py:
        random.setstate((py[0], tuple(py[1:-1]), None))
    npst = state.get("numpy_rng")
    if npst:
        np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached"]))


# --------------------------------------------------------------------------------------------
# after training: references and thresholds


def finalize_run(run_dir: Path, cfg: TrainConfig, device: torch.device, progress: bool = True) -> dict:
    """Embeddings of the training normals (knn references) and the thresholds, with the best model."""
    from trainer.evaluate import calibrate_run, write_reference_embeddings

    write_reference_embeddings(run_dir, device=device, progress=progress)
    return calibrate_run(
        run_dir, score=cfg.score, false_alarm_rate=cfg.false_alarm_rate, knn_k=cfg.knn_k, device=device, progress=progress
    )


def config_from_dict(d: dict[str, Any], **overrides: Any) -> TrainConfig:
    """A TrainConfig from a saved ``config.json["train"]`` block plus overrides."""
    names = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in d.items() if k in names}
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


__all__ = [
    "ARCHS",
    "LOSSES",
    "SCORES",
    "RunError",
    "Split",
    "TrainConfig",
    "TrainResult",
    "WaveDataset",
    "atomic_torch_save",
    "compute_loss",
    "recalibrate_batchnorm",
    "config_from_dict",
    "finalize_run",
    "stratified_split",
    "train",
    "validate",
]
