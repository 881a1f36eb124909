"""The training loop's mechanics on a tiny synthetic set: files, contracts, losses, evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.fixtures.training import tiny_synth


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, artifacts_dir):
    from trainer.evaluate import evaluate_run
    from trainer.train import TrainConfig, train

    data = tiny_synth(artifacts_dir / "tiny-synth")
    run = tmp_path_factory.mktemp("run") / "run"
    rows = []
    result = train(
        TrainConfig(
            data=[str(data)], out=str(run), epochs=2, batch_size=4, lr=1e-3, val_fraction=0.34, device="cpu",
            threads=2, progress=False, cache_dir=str(artifacts_dir / "audio-cache"), score="ensemble",
        ),
        on_epoch=rows.append,
    )
    report = evaluate_run(run, device="cpu", progress=False)
    return run, data, result, rows, report


def test_run_directory_follows_the_contract(tiny_run):
    run, data, result, rows, _ = tiny_run
    assert result.epochs_done == 2 and not result.interrupted
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["format"] == "edge-asd-run" and cfg["model"]["num_classes"] == 2
    assert cfg["classes"] == ["fan/id_00", "fan/id_02"]
    assert cfg["loss"] == "noisy-arcmix"
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["batch_size"] == 4 and cfg["train"]["knn_k"] == 4
    assert cfg["data"]["layout"] == "auto"
    for name in ("model_best.pt", "model_last.pt", "train_state.pt", "split.json"):
        assert (run / name).is_file(), name
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["epoch"] == 1 and "optimizer" in state and "scheduler" in state
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(metrics[0])
    assert metrics == [{**r} for r in rows]
    assert metrics[1]["lr"] < metrics[0]["lr"]  # cosine schedule stepped per epoch


def test_the_run_log_names_the_checkpoint_selection_rule(tiny_run):
    """4 held-out clips for 2 classes are too few to select on: the last epoch is kept, and said so."""
    from trainer.checkpoint import weights_fingerprint

    run, _, result, rows, _ = tiny_run
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["selection"]["rule"] == "last" and cfg["selection"]["val_clips"] == 4
    assert "held-out clips" in cfg["selection"]["reason"] and result.selection == cfg["selection"]["reason"]
    assert [r["selection"] for r in rows] == ["last", "last"] and all(r["best"] for r in rows)
    assert result.best_epoch == 1
    best = torch.load(run / "model_best.pt", weights_only=True)
    last = torch.load(run / "model_last.pt", weights_only=True)
    assert weights_fingerprint(best) == weights_fingerprint(last)
    record = json.loads((run / "embeddings" / "weights.json").read_text())
    assert record == {"checkpoint": "best", "weights_sha256": weights_fingerprint(best)}


def test_split_is_stratified_and_held_out_clips_are_not_references(tiny_run):
    run, *_ = tiny_run
    val = json.loads((run / "split.json").read_text())["val"]
    assert len(val) == 4  # 2 of the 6 clips of each of the 2 IDs
    assert {p.split("normal_")[1][:5] for p in val} == {"id_00", "id_02"}
    for c in (0, 1):
        emb = np.load(run / "embeddings" / f"class_{c:03d}.npy")
        assert emb.dtype == np.float32 and emb.shape == (4, 128)
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_thresholds_follow_the_contract(tiny_run):
    run, *_ = tiny_run
    doc = json.loads((run / "thresholds.json").read_text())
    assert doc["score"] == "ensemble" and doc["false_alarm_rate"] == 1e-3 and doc["knn_k"] == 4
    assert set(doc["classes"]) == {"fan/id_00", "fan/id_02"}
    entry = doc["classes"]["fan/id_00"]
    assert entry["n"] == 2
    assert entry["reference"]["ce"] == sorted(entry["reference"]["ce"]) and len(entry["reference"]["knn"]) == 2
    assert 0.0 < entry["threshold"] <= 1.0


def test_evaluate_writes_the_report(tiny_run):
    run, _, _, _, report = tiny_run
    assert set(report["scores"]) == {"ce", "knn", "ensemble"}
    fan = report["scores"]["ce"]["types"][0]
    assert fan["machine_type"] == "fan" and len(fan["ids"]) == 2
    assert len(report["clips"]) == 8
    assert (run / "report.json").is_file() and (run / "report.md").is_file()
    assert (run / "roc_fan.png").stat().st_size > 1000
    assert "| **Average** (arithmetic) |" in report["markdown"]


def test_an_existing_run_is_not_overwritten(tiny_run):
    from trainer.train import RunError, TrainConfig, train

    run, data, *_ = tiny_run
    with pytest.raises(RunError, match="--resume"):
        train(TrainConfig(data=[str(data)], out=str(run), epochs=1, device="cpu", progress=False))


def test_stratified_split_keeps_a_clip_of_every_class():
    from trainer.train import stratified_split

    labels = [0] * 40 + [1] * 3 + [2]
    split = stratified_split(labels, 0.05, seed=1)
    held = [labels[i] for i in split.val]
    assert held.count(0) == 2 and held.count(1) == 1 and held.count(2) == 0
    assert sorted(split.train + split.val) == list(range(len(labels)))
    assert stratified_split(labels, 0.05, seed=1) == split


@pytest.mark.parametrize("loss", ["noisy-arcmix", "arcmix", "arcface"])
def test_every_loss_gives_a_finite_loss_and_gradients(loss):
    from trainer.model import TASTgramMFN
    from trainer.steps import compute_loss, epoch_generator
    from trainer.train import TrainConfig

    torch.manual_seed(0)
    net = TASTgramMFN(3, lowering="stft")
    cfg = TrainConfig(data=["x"], out="y", loss=loss)
    audio = 0.1 * torch.randn(4, 160000)
    y = torch.tensor([0, 1, 2, 1])
    value, logits = compute_loss(net, audio, y, cfg, epoch_generator(1, 0, 0, 1), (False, torch.float32))
    value.backward()
    assert torch.isfinite(value) and logits.shape == (4, 3)
    assert net.arc_weight.grad is not None and torch.isfinite(net.arc_weight.grad).all()


def test_bad_options_are_user_errors():
    from edge_asd.core.errors import UserError
    from trainer.train import TrainConfig

    for kwargs in ({"loss": "softmax"}, {"arch": "resnet"}, {"val_fraction": 1.0}, {"score": "gmm"}):
        with pytest.raises(UserError):
            TrainConfig(data=["x"], out="y", **kwargs).validate()


def test_cli_calibrate_run_and_evaluate(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from edge_asd.cli import app

    run, data, *_ = tiny_run
    runner = CliRunner()
    res = runner.invoke(app, ["calibrate-run", str(run), "--score", "knn", "--false-alarm-rate", "0.01", "--no-progress"])
    assert res.exit_code == 0, res.output
    doc = json.loads((run / "thresholds.json").read_text())
    assert doc["score"] == "knn" and doc["false_alarm_rate"] == 0.01
    out = tmp_path / "eval"
    res = runner.invoke(
        app, ["evaluate", str(run), str(data), "--out", str(out), "--score", "ce", "--no-plots", "--no-progress", "--compare-paper"]
    )
    assert res.exit_code == 0, res.output
    assert "paper AUC" in res.output and "98.32" in res.output
    assert set(json.loads((out / "report.json").read_text())["scores"]) == {"ce"}


def test_max_minutes_stops_after_an_epoch_and_still_finalises(tmp_path, artifacts_dir):
    from trainer.train import TrainConfig, train

    data = tiny_synth(artifacts_dir / "tiny-synth")
    run = tmp_path / "run"
    result = train(
        TrainConfig(
            data=[str(data)], out=str(run), epochs=3, batch_size=4, val_fraction=0.34, device="cpu", threads=2,
            progress=False, cache_dir=str(artifacts_dir / "audio-cache"), max_minutes=1e-4, bn_recalibration_clips=0,
        )
    )
    assert result.stopped_early and result.epochs_done == 1
    assert torch.load(run / "train_state.pt", weights_only=True)["epoch"] == 0
    assert (run / "thresholds.json").is_file()
