"""``edge-asd train``, ``evaluate`` and ``calibrate-run``: the workstation side of the model.

torch and the torch modules of the trainer are imported inside the commands, so
``edge-asd --help`` works on a Jetson without PyTorch (``trainer.config``, read here for the
defaults, is torch-free). Hyperparameter options default to None so that ``--resume`` can tell
"not given" (take the run's saved value) from "given" (override).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import typer

from edge_asd.cli.output import RichProgress, console, error_console
from trainer.config import default

logger = logging.getLogger(__name__)

# Options whose value falls back to the resumed run's, then to ``TrainConfig``'s default (the
# released Noisy-ArcMix code's recipe).
RESUMABLE = (
    "loss", "arch", "epochs", "batch_size", "lr", "min_lr", "alpha", "val_fraction", "seed", "layout", "class_by",
    "score", "knn_k", "false_alarm_rate", "bn_recalibration_clips",
)


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        data: list[Path] = typer.Argument(..., help="Data folder(s): DCASE dev_data/eval_data roots, your own recordings, or a manifest."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory to write (config, checkpoints, metrics, thresholds)."),
        loss: str | None = typer.Option(None, help=f"noisy-arcmix | arcmix | arcface (default: {default('loss')})"),
        arch: str | None = typer.Option(None, help=f"tastgram | stgram (default: {default('arch')})"),
        epochs: int | None = typer.Option(None, help=f"Epochs (default: {default('epochs')})"),
        batch_size: int | None = typer.Option(None, "--batch-size", help=f"Batch size per process (default: {default('batch_size')})"),
        lr: float | None = typer.Option(None, help=f"AdamW learning rate (default: {default('lr'):g})"),
        min_lr: float | None = typer.Option(None, "--min-lr", help=f"Cosine schedule floor (default: {default('min_lr'):g})"),
        alpha: float | None = typer.Option(None, help=f"Mixup Beta(alpha, alpha) (default: {default('alpha')})"),
        val_fraction: float | None = typer.Option(
            None, "--val-fraction", help=f"Held-out share of each class's training clips (default: {default('val_fraction')})"
        ),
        seed: int | None = typer.Option(None, help=f"Random seed (default: {default('seed')})"),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        workers: int = typer.Option(0, help="DataLoader worker processes."),
        layout: str | None = typer.Option(None, help=f"auto | dcase2020 | dcase2021 | own | manifest (default: {default('layout')})"),
        class_by: str | None = typer.Option(None, "--class-by", help=f"section | attribute (default: {default('class_by')})"),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable clips (with a warning) instead of stopping."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out after its last finished epoch."),
        score: str | None = typer.Option(None, help=f"Score the thresholds are calibrated for: ce | knn | ensemble (default: {default('score')})"),
        knn_k: int | None = typer.Option(None, "--knn-k", help=f"Neighbours of the knn score (default: {default('knn_k')})"),
        false_alarm_rate: float | None = typer.Option(
            None, "--false-alarm-rate", help=f"Target false-alarm probability per window (default: {default('false_alarm_rate'):g})"
        ),
        max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop after the epoch that would pass this budget."),
        threads: int | None = typer.Option(None, help="CPU threads for PyTorch."),
        bn_recalibration_clips: int | None = typer.Option(
            None,
            "--bn-recalibration-clips",
            help=(
                "Clean clips that re-estimate BatchNorm statistics before each validation; 0 = off, as the "
                f"released code (default: {default('bn_recalibration_clips')})"
            ),
        ),
        cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Where the decoded-audio cache lives."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        """Train TASTgram-MFN (Noisy-ArcMix by default); also under torchrun for several GPUs."""
        from trainer.train import TrainConfig, train

        given = {
            "loss": loss, "arch": arch, "epochs": epochs, "batch_size": batch_size, "lr": lr, "min_lr": min_lr,
            "alpha": alpha, "val_fraction": val_fraction, "seed": seed, "layout": layout, "class_by": class_by,
            "score": score, "knn_k": knn_k, "false_alarm_rate": false_alarm_rate,
            "bn_recalibration_clips": bn_recalibration_clips,
        }
        saved = _saved_hyperparameters(out) if resume else {}
        values = {k: (v if v is not None else saved.get(k, default(k))) for k, v in given.items()}
        config = TrainConfig(
            data=[str(p) for p in data],
            out=str(out),
            device=device,
            workers=workers,
            skip_bad=skip_bad,
            resume=resume,
            max_minutes=max_minutes,
            threads=threads,
            cache_dir=str(cache_dir) if cache_dir else None,
            progress=progress,
            **values,
        )
        # Under torchrun only rank 0 draws (the trainer reports nothing on the other ranks).
        with _bars(progress and os.environ.get("RANK", "0") == "0") as bars:
            result = train(config, progress=bars or None)
        if result.interrupted:
            if result.is_main:
                error_console.print(
                    f"[yellow]interrupted[/]: {result.epochs_done} finished epoch(s) are saved in {result.run_dir}. "
                    "Continue with the same command plus [bold]--resume[/]."
                )
            raise typer.Exit(130)
        if not result.is_main:  # under torchrun only rank 0 reports
            return
        console.print(
            f"[green]trained[/] {result.epochs_done}/{config.epochs} epochs; model_best.pt is epoch "
            f"{result.best_epoch + 1} (loss {result.best_val_loss:.4f}), chosen by: {result.selection}; "
            f"run in {result.run_dir}"
        )
        if result.stopped_early:
            console.print("stopped by --max-minutes: continue with the same command plus --resume")

    @app.command("evaluate")
    def evaluate_cmd(
        run: Path = typer.Argument(..., help="Run directory written by `edge-asd train`."),
        data: list[Path] | None = typer.Argument(None, help="Data folder(s) with test clips (default: the run's)."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Where report.json/report.md/PNGs go (default: RUN)."),
        compare_paper: bool = typer.Option(False, "--compare-paper", help="Put the paper's TASTgram-MFN numbers beside ours."),
        score: list[str] | None = typer.Option(None, help="Score(s) to report: ce, knn, ensemble (default: all)."),
        checkpoint: str = typer.Option("best", help="best | last"),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="Write a PNG per machine type."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Per-ID AUC/pAUC, per-type mean and mAUC, arithmetic and harmonic averages."""
        from edge_asd.core.errors import UserError
        from trainer.evaluate import SCORE_KINDS, evaluate_run

        kinds = list(score) if score else list(SCORE_KINDS)
        bad = [k for k in kinds if k not in SCORE_KINDS]
        if bad:
            raise UserError(f"--score {bad[0]!r} is unknown: use {', '.join(SCORE_KINDS)}")
        with _bars(progress) as bars:
            doc = evaluate_run(
                run, data or None, out, kinds, compare_paper=compare_paper, device=device, progress=bars, plots=plots,
                which=checkpoint,
            )
        console.print(doc["markdown"], markup=False, highlight=False)
        console.print(f"report: {(out or run) / 'report.json'}")

    @app.command("calibrate-run")
    def calibrate_cmd(
        run: Path = typer.Argument(..., help="Run directory."),
        data: list[Path] | None = typer.Argument(None, help="Data folder(s) the run was trained on (default: the run's)."),
        score: str | None = typer.Option(None, help="ce | knn | ensemble (default: the run's)"),
        false_alarm_rate: float | None = typer.Option(None, "--false-alarm-rate", help="[default: the run's]"),
        knn_k: int | None = typer.Option(None, "--knn-k", help="[default: the run's]"),
        embeddings: bool = typer.Option(False, "--embeddings", help="Recompute the knn reference embeddings too."),
        device: str = typer.Option("auto", help="auto | cpu | cuda"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Recompute a run's thresholds.json (and optionally its knn references)."""
        from edge_asd.core.errors import UserError
        from trainer.config import SCORES
        from trainer.references import calibrate_run, write_reference_embeddings

        if score is not None and score not in SCORES:
            raise UserError(f"--score {score!r} is unknown: use {', '.join(SCORES)}")
        with _bars(progress) as bars:
            if embeddings:
                write_reference_embeddings(run, data or None, device, bars)
            doc = calibrate_run(run, data or None, score, false_alarm_rate, knn_k, device, bars)
        console.print(f"thresholds ({doc['score']}, false-alarm rate {doc['false_alarm_rate']:g}) for {len(doc['classes'])} classes:")
        for name, entry in doc["classes"].items():
            how = "gamma fit" if entry.get("fit") else "empirical"
            console.print(f"  {name}: {entry['threshold']:.4g} ({how}, n={entry['n']})")
        console.print(f"written to {run / 'thresholds.json'}")


def _saved_hyperparameters(out: Path) -> dict:
    """The hyperparameters of the run being resumed (``config.json``), or nothing."""
    cfg_path = out / "config.json"
    if not cfg_path.is_file():
        return {}
    cfg = json.loads(cfg_path.read_text())
    saved = dict(cfg.get("train", {}))
    saved.setdefault("loss", cfg.get("loss"))
    saved.setdefault("layout", cfg.get("data", {}).get("layout"))
    saved.setdefault("class_by", cfg.get("data", {}).get("class_by"))
    return {k: v for k, v in saved.items() if k in RESUMABLE and v is not None}


def _bars(enabled: bool) -> AbstractContextManager[RichProgress | bool]:
    """Rich progress bars for ``--progress``; ``False`` (report nothing) for ``--no-progress``."""
    return RichProgress() if enabled else nullcontext(False)
