"""trainer.selection: which epoch becomes model_best.pt (torch-free)."""

from __future__ import annotations

import math

from trainer.selection import MIN_VAL_CLIPS_PER_CLASS, WARMUP_FRACTION, SelectionRule


def _kept(rule: SelectionRule, losses: list[float]) -> int:
    """Replays a run's per-epoch selection losses through the rule; returns the kept epoch."""
    best_epoch, best_loss = -1, math.inf
    for epoch, loss in enumerate(losses):
        if rule.keeps(epoch, loss, best_epoch, best_loss):
            best_epoch, best_loss = epoch, loss
    return best_epoch


def test_a_tiny_held_out_set_keeps_the_last_epoch():
    # The site run of issue 10: 60 clips of one machine, 5 % held out = 3 clips, 120 epochs.
    rule = SelectionRule.for_run(epochs=120, val_clips=3, num_classes=1)
    assert rule.rule == "last" and "3 held-out clips" in rule.reason
    losses = [0.01] + [0.5] * 119  # epoch 1 has the lowest (noisy) validation loss
    assert _kept(rule, losses) == 119


def test_no_held_out_set_keeps_the_last_epoch():
    rule = SelectionRule.for_run(epochs=10, val_clips=0, num_classes=4)
    assert rule.rule == "last"
    assert _kept(rule, [3.0, 1.0, 2.0, 5.0]) == 3


def test_enough_clips_select_by_loss_after_the_warm_up():
    # The paper's recipe: 41 classes, ~1 800 held-out clips, 300 epochs.
    rule = SelectionRule.for_run(epochs=300, val_clips=1800, num_classes=41)
    assert rule.rule == "min-val-loss"
    assert rule.first_eligible_epoch == int(WARMUP_FRACTION * 300) == 60
    losses = [0.001] * 60 + [1.0 - i / 1000 for i in range(240)]
    losses[150] = 0.1  # the minimum after the warm-up
    assert _kept(rule, losses) == 150  # not one of the warm-up epochs with loss 0.001


def test_warm_up_epochs_stand_in_until_an_eligible_epoch_exists():
    rule = SelectionRule.for_run(epochs=10, val_clips=100, num_classes=2)
    assert rule.first_eligible_epoch == 2
    assert _kept(rule, [0.1, 0.2]) == 1  # a run stopped during the warm-up keeps its latest epoch
    assert _kept(rule, [0.1, 0.2, 0.9]) == 2  # the first eligible epoch replaces the stand-in
    assert _kept(rule, [0.1, 0.2, 0.9, 0.5, 0.7]) == 3


def test_the_threshold_is_per_class_and_recorded():
    classes = 4
    just_enough = SelectionRule.for_run(epochs=5, val_clips=MIN_VAL_CLIPS_PER_CLASS * classes, num_classes=classes)
    too_few = SelectionRule.for_run(epochs=5, val_clips=MIN_VAL_CLIPS_PER_CLASS * classes - 1, num_classes=classes)
    assert just_enough.rule == "min-val-loss" and too_few.rule == "last"
    doc = just_enough.to_dict()
    assert doc["rule"] == "min-val-loss" and doc["first_eligible_epoch"] == 1 and doc["val_clips"] == 20
    assert "lowest validation loss from epoch 2 of 5" in doc["reason"]
