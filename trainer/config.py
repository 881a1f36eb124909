"""The knobs of a training run and what a run returns: one source for every training default.

``TrainConfig`` is what ``edge-asd train`` fills in (its options default to these fields) and
what ``config.json["train"]`` records. The defaults are the released Noisy-ArcMix code's
recipe: 300 epochs, batch 64, AdamW (lr 1e-4, weight decay 0.01) with a cosine schedule down
to 1e-5 stepped once per epoch, ArcFace scale s = 30 and margin m = 0.7, mixup
lambda ~ Beta(0.5, 0.5), a 5 % held-out split and seed 2023. torch-free, so the CLI can read
the defaults without importing torch.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_asd.core.errors import UserError
from edge_asd.core.scoring import DEFAULT_KNN_K

LOSSES = ("noisy-arcmix", "arcmix", "arcface")
ARCHS = ("tastgram", "stgram")
SCORES = ("ce", "knn", "ensemble")

EMBEDDINGS_PER_CLASS = 512
"""At most this many training-normal embeddings per class are kept as knn references: enough to
cover a class's normal variety, small enough for a per-window matrix product on a Jetson."""

BN_RECALIBRATION_CLIPS = 256
"""Clean training clips whose batch statistics replace BatchNorm's running averages before
each validation (0 = off, the reference code's behaviour); see ``trainer.validation``."""

DEFAULT_FALSE_ALARM_RATE = 1e-3
"""Target false-alarm probability per 10 s window that thresholds are calibrated for."""

DEFAULT_SEED = 2023
"""The released code's seed (for ``random``, numpy and torch)."""


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
    seed: int = DEFAULT_SEED
    device: str = "auto"
    workers: int = 0
    layout: str = "auto"
    class_by: str = "section"
    skip_bad: bool = False
    resume: bool = False
    score: str = "ce"
    knn_k: int = DEFAULT_KNN_K
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE
    max_minutes: float | None = None
    threads: int | None = None
    embeddings_per_class: int = EMBEDDINGS_PER_CLASS
    bn_recalibration_clips: int = BN_RECALIBRATION_CLIPS
    cache_dir: str | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Refuse values the loop cannot run with, naming the option to fix."""
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


def default(name: str) -> Any:
    """The default of ``TrainConfig.<name>`` (the CLI's help texts and fallbacks read it here)."""
    for f in fields(TrainConfig):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            break
    raise KeyError(f"TrainConfig.{name} has no default")


def config_from_dict(d: dict[str, Any], **overrides: Any) -> TrainConfig:
    """A TrainConfig from a saved ``config.json["train"]`` block plus overrides."""
    names = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in d.items() if k in names}
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


@dataclass
class TrainResult:
    """What ``train`` did: epochs finished, the kept ("best") epoch and the rule that chose it."""

    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    interrupted: bool = False
    is_main: bool = True
    selection: str = ""


__all__ = [
    "ARCHS",
    "BN_RECALIBRATION_CLIPS",
    "DEFAULT_FALSE_ALARM_RATE",
    "DEFAULT_SEED",
    "EMBEDDINGS_PER_CLASS",
    "LOSSES",
    "SCORES",
    "TrainConfig",
    "TrainResult",
    "config_from_dict",
    "default",
]
