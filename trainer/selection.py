"""Which epoch's weights become ``model_best.pt``: the checkpoint-selection rule of a run.

The released Noisy-ArcMix code keeps the epoch with the lowest mean validation cross-entropy
over all epochs, on a 5 % split of ~37 000 DCASE clips (~1 800 held-out clips). That works when
the held-out set is large. On a site's few minutes of sound it does not: with 60 clips the 5 %
split holds 3 clips, their loss is noise, and a run of 120 epochs kept epoch 1, an untrained
model (measured: ce AUC 0.53 for that "best" model against 0.58 for the last epoch). So:

* **last** when the held-out set is tiny (fewer than ``MIN_VAL_CLIPS_PER_CLASS`` clips per
  class on average, including no held-out set at all): the last finished epoch is kept, since
  the cosine schedule has annealed the weights and no measurement can say otherwise;
* **min-val-loss** otherwise, but only over the epochs after a warm-up of
  ``WARMUP_FRACTION`` of the run (epochs 61-300 of the paper's 300): a loss minimum in the first
  epochs is a fluke of an untrained model on few clips, never the model to deploy. During the
  warm-up the latest epoch stands in as "best", so a run stopped early still has a model.

The rule is decided once per run start from the run's own numbers, written to ``config.json``
(``"selection"``) and named in every ``metrics.jsonl`` line and in the run log. torch-free.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

WARMUP_FRACTION = 0.2
"""Share of the epochs (rounded down) that can never be selected by validation loss."""

MIN_VAL_CLIPS_PER_CLASS = 5
"""Below this many held-out clips per class (on average) the validation loss selects nothing."""

RuleName = Literal["min-val-loss", "last"]


@dataclass(frozen=True)
class SelectionRule:
    """The rule of one run: its name, the first epoch it may pick (0-based) and why."""

    rule: RuleName
    first_eligible_epoch: int
    val_clips: int
    num_classes: int
    reason: str

    @classmethod
    def for_run(
        cls,
        epochs: int,
        val_clips: int,
        num_classes: int,
        warmup_fraction: float = WARMUP_FRACTION,
        min_val_clips_per_class: int = MIN_VAL_CLIPS_PER_CLASS,
    ) -> SelectionRule:
        """The rule for a run of ``epochs`` epochs with ``val_clips`` held-out clips."""
        needed = min_val_clips_per_class * max(num_classes, 1)
        if val_clips < needed:
            reason = (
                f"last epoch: {val_clips} held-out clips for {num_classes} classes, fewer than "
                f"{min_val_clips_per_class} per class, too few for the validation loss to choose"
            )
            return cls("last", 0, val_clips, num_classes, reason)
        first = min(int(math.floor(warmup_fraction * epochs)), max(epochs - 1, 0))
        reason = (
            f"lowest validation loss from epoch {first + 1} of {epochs} on "
            f"({val_clips} held-out clips; the first {first} epochs are warm-up)"
        )
        return cls("min-val-loss", first, val_clips, num_classes, reason)

    def keeps(self, epoch: int, loss: float, best_epoch: int, best_loss: float) -> bool:
        """Whether epoch ``epoch`` with selection loss ``loss`` replaces the current best."""
        if self.rule == "last" or epoch < self.first_eligible_epoch:
            return True
        if best_epoch < self.first_eligible_epoch:  # nothing eligible kept yet
            return True
        return loss < best_loss

    def to_dict(self) -> dict[str, Any]:
        """The ``"selection"`` block of ``config.json``."""
        return asdict(self)


__all__ = ["MIN_VAL_CLIPS_PER_CLASS", "WARMUP_FRACTION", "SelectionRule"]
