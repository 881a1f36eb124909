"""``edge-asd synth`` (make a synthetic DCASE-layout data set) and ``edge-asd data-info``.

The implementation modules are imported inside the commands so ``edge-asd --help`` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from edge_asd.cli.output import console

logger = logging.getLogger(__name__)


def _parse_types(value: str) -> int | list[str]:
    """``--types 2`` (the first two types) or ``--types fan,valve`` (these types)."""
    value = value.strip()
    if value.isdigit():
        return int(value)
    return [t.strip() for t in value.split(",") if t.strip()]


def register(app: typer.Typer) -> None:
    @app.command()
    def synth(
        out: Path = typer.Argument(..., help="Folder to write OUT/dev_data/<type>/{train,test}/*.wav into."),
        types: str = typer.Option(
            "2", "--types", help="How many machine types (fan, ToyCar, slider, valve, pump, ToyConveyor, in this order), or a comma list of names."
        ),
        ids: int = typer.Option(2, "--ids", help="Machine IDs per type (DCASE dev IDs first)."),
        train_clips: int = typer.Option(50, "--train-clips", help="Normal training clips per machine ID."),
        test_clips: int = typer.Option(20, "--test-clips", help="Normal and (as many) anomalous test clips per machine ID."),
        seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same files."),
        snr_db: float | None = typer.Option(None, "--snr-db", help="Machine-to-factory-noise ratio in dB (default +6)."),
    ) -> None:
        """Generate a synthetic machine-sound data set in the DCASE 2020 layout (10 s, 16 kHz, int16)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Table

        from edge_asd.core import synth as synth_mod
        from edge_asd.core.errors import UserError

        if train_clips < 0 or test_clips < 0 or train_clips + test_clips == 0:
            raise UserError("--train-clips and --test-clips must be >= 0 and not both 0")
        kwargs = {} if snr_db is None else {"snr_db": snr_db}
        type_arg = _parse_types(types)
        for machine_type in synth_mod.resolve_types(type_arg):  # fail before the progress bar
            synth_mod.resolve_ids(machine_type, ids)
        with Progress(
            TextColumn("[bold]synth[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
        ) as bar:
            task = bar.add_task("synth", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            summary = synth_mod.make_dataset(
                out,
                types=type_arg,
                ids=ids,
                train_clips=train_clips,
                test_clips=test_clips,
                seed=seed,
                progress=progress,
                **kwargs,
            )
        table = Table(title=f"synthetic data in {out}", show_header=True)
        table.add_column("machine type")
        table.add_column("IDs")
        table.add_column("train", justify="right")
        table.add_column("test normal", justify="right")
        table.add_column("test anomaly", justify="right")
        for machine_type in summary["types"]:
            id_list = summary["ids"][machine_type]
            table.add_row(
                machine_type,
                ", ".join(f"id_{i:02d}" for i in id_list),
                str(train_clips * len(id_list)),
                str(test_clips * len(id_list)),
                str(test_clips * len(id_list)),
            )
        console.print(table)
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(summary["anomaly_kinds"].items()))
        console.print(f"{summary['files']} files, anomalies: {kinds or 'none'}; seed {seed}")

    @app.command("data-info")
    def data_info(
        data: list[Path] = typer.Argument(..., help="Data folders (or CSV manifests)."),
        layout: str = typer.Option("auto", "--layout", help="auto, dcase2020, dcase2021, own or manifest."),
        class_by: str = typer.Option("section", "--class-by", help="DCASE 2021+: section or attribute."),
    ) -> None:
        """Show the detected layout, the class map and the clip counts of a data set."""
        from rich.table import Table

        from trainer.data.layouts import build_index

        index = build_index(data, layout=layout, class_by=class_by)
        table = Table(title=f"layout {index.layout}: {index.num_classes} classes")
        table.add_column("#", justify="right")
        table.add_column("class")
        table.add_column("train", justify="right")
        table.add_column("test normal", justify="right")
        table.add_column("test anomaly", justify="right")
        counts = {name: [0, 0, 0] for name in index.class_names}
        for clip in index.clips:
            if clip.class_name not in counts:
                continue
            col = 0 if clip.split == "train" else (1 if clip.label == 0 else 2 if clip.label == 1 else None)
            if col is not None:
                counts[clip.class_name][col] += 1
        for i, name in enumerate(index.class_names):
            table.add_row(str(i), name, *(str(n) for n in counts[name]))
        console.print(table)
        s = index.summary()
        console.print(
            f"{s['train']} training clips, {s['test_normal']} normal / {s['test_anomaly']} anomalous / "
            f"{s['test_unlabelled']} unlabelled test clips"
        )
