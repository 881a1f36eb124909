"""``edge-asd synth`` (a synthetic DCASE-layout data set, or a site set) and ``edge-asd data-info``.

The implementation modules are imported inside the commands so ``edge-asd --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def _progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for a writer that calls ``progress(done, total)`` after each file."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as bar:
        task = bar.add_task(label, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


def _synth_site(out: Path, family: str, normal_clips: int | None, test_clips: int | None, seed: int, severity: float) -> None:
    """``edge-asd synth OUT --site FAMILY``: one site machine's enrolment and test folders."""
    from edge_asd.core import synth as synth_mod

    n_normal = 60 if normal_clips is None else normal_clips
    n_test = 30 if test_clips is None else test_clips
    synth_mod.family_doc(family)  # an unknown family fails before the progress bar
    with _progress_bar(f"synth --site {family}") as progress:
        normal_dir, test_dir = synth_mod.make_site_set(
            out, family, n_normal=n_normal, n_test_normal=n_test, n_test_anomaly=n_test, seed=seed,
            severity=severity, progress=progress,
        )
    console.print(f"{n_normal} normal clips to enrol from in {normal_dir}")
    console.print(f"{n_test} normal and {n_test} anomalous test clips in {test_dir} (what each is: {out / 'site.json'})")
    console.print(f"site {seed} of family {family}: {synth_mod.family_doc(family)}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def synth(
        out: Path = typer.Argument(
            ..., help="Folder to write OUT/dev_data/<type>/{train,test}/*.wav into (with --site: OUT/normal, OUT/test)."
        ),
        types: str = typer.Option(
            "2", "--types", help="How many machine types (fan, ToyCar, slider, valve, pump, ToyConveyor, in this order), or a comma list of names."
        ),
        ids: int = typer.Option(2, "--ids", help="Machine IDs per type (DCASE dev IDs first)."),
        train_clips: int | None = typer.Option(
            None, "--train-clips", help="Normal training clips per machine ID (default 50; with --site: normal clips to enrol from, default 60)."
        ),
        test_clips: int | None = typer.Option(
            None, "--test-clips", help="Normal and (as many) anomalous test clips per machine ID (default 20; with --site 30)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same files (with --site: the same site)."),
        snr_db: float | None = typer.Option(None, "--snr-db", help="Machine-to-factory-noise ratio in dB (default +6)."),
        site: str | None = typer.Option(
            None, "--site", help="Instead of the DCASE tree, one site machine of this family (impacts, tone, level, "
            "modulation): OUT/normal/*.wav to enrol from, OUT/test/{normal,anomaly}_id_00_*.wav, OUT/site.json.",
        ),
        severity: float = typer.Option(1.0, "--severity", help="With --site: strength of the anomalies (1: as documented)."),
    ) -> None:
        """Generate synthetic machine sounds: a DCASE 2020 data set, or a site set (10 s, 16 kHz, int16)."""
        from rich.table import Table

        from edge_asd.core import synth as synth_mod
        from edge_asd.core.errors import UserError

        if site is not None:
            if snr_db is not None:
                raise UserError("--snr-db does not apply to --site (each site draws its own room): leave it out")
            _synth_site(out, site, train_clips, test_clips, seed, severity)
            return
        train_clips = 50 if train_clips is None else train_clips
        test_clips = 20 if test_clips is None else test_clips
        if train_clips < 0 or test_clips < 0 or train_clips + test_clips == 0:
            raise UserError("--train-clips and --test-clips must be >= 0 and not both 0")
        kwargs = {} if snr_db is None else {"snr_db": snr_db}
        type_arg = _parse_types(types)
        for machine_type in synth_mod.resolve_types(type_arg):  # fail before the progress bar
            synth_mod.resolve_ids(machine_type, ids)
        with _progress_bar("synth") as progress:
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
