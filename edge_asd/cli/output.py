"""Shared rich consoles for the CLI: results on stdout, messages and errors on stderr.

``RichProgress`` draws the progress that library code reports through a plain interface
(``start``/``update``/``finish``, the ``trainer.progress.Progress`` protocol): the libraries
never import the CLI, the CLI decides how progress looks.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
error_console = Console(stderr=True)


class RichProgress:
    """Progress bars on stderr, one per task (epoch, decoding, scoring); use as a context manager."""

    def __init__(self, out: Console | None = None) -> None:
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=out or error_console,
            transient=False,
        )

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.stop()

    def start(self, description: str, total: int | None = None) -> int:
        return int(self._bar.add_task(description, total=total, info=""))

    def update(self, task: int, *, advance: int = 0, completed: int | None = None, info: str | None = None) -> None:
        fields: dict[str, object] = {} if info is None else {"info": info}
        if completed is not None:
            self._bar.update(TaskID(task), completed=completed, **fields)
        else:
            self._bar.update(TaskID(task), advance=advance, **fields)

    def finish(self, task: int, info: str | None = None) -> None:
        fields: dict[str, object] = {} if info is None else {"info": info}
        total = next((t.total for t in self._bar.tasks if t.id == task), None)
        self._bar.update(TaskID(task), completed=total, **fields)
        self._bar.stop_task(TaskID(task))


__all__ = ["RichProgress", "console", "error_console"]
