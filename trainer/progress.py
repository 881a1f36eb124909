"""How long jobs of the trainer (epochs, decoding, scoring) report their progress.

The trainer never draws anything itself: it calls a ``Progress`` it is given, and whoever
called it decides how that looks (the CLI renders rich progress bars; a library user or a
test gets log lines or nothing). This keeps the trainer below the CLI in the layering and
lets the same code run in a terminal, under ``torchrun`` (only rank 0 reports) or in CI.

Plain Python: no numpy, no torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

logger = logging.getLogger(__name__)


@runtime_checkable
class Progress(Protocol):
    """A sink for the progress of counted tasks (``start`` -> ``update``... -> ``finish``)."""

    def start(self, description: str, total: int | None = None) -> int:
        """Open a task of ``total`` steps (None: unknown); returns its handle."""
        ...

    def update(self, task: int, *, advance: int = 0, completed: int | None = None, info: str | None = None) -> None:
        """Advance the task (or set it to ``completed``) and replace its one-line status."""
        ...

    def finish(self, task: int, info: str | None = None) -> None:
        """Close the task; ``info`` is its final status line."""
        ...


class NullProgress:
    """Reports nothing (``--no-progress``, other ranks, tests)."""

    def start(self, description: str, total: int | None = None) -> int:
        return 0

    def update(self, task: int, *, advance: int = 0, completed: int | None = None, info: str | None = None) -> None:
        return None

    def finish(self, task: int, info: str | None = None) -> None:
        return None


class LineProgress:
    """One line per finished task, with its final status and duration, handed to ``emit``.

    For callers without a live display (a demo that prints steps, a service log): a run still
    leaves a readable record (``epoch 3/12: loss 4.010 acc 0.380 val 0.036/1.000 * (20.7 s)``).
    """

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._tasks: dict[int, tuple[str, float, str]] = {}
        self._next = 0

    def start(self, description: str, total: int | None = None) -> int:
        self._next += 1
        self._tasks[self._next] = (description, time.monotonic(), "")
        return self._next

    def update(self, task: int, *, advance: int = 0, completed: int | None = None, info: str | None = None) -> None:
        if info is not None and task in self._tasks:
            description, started, _ = self._tasks[task]
            self._tasks[task] = (description, started, info)

    def finish(self, task: int, info: str | None = None) -> None:
        if task not in self._tasks:
            return
        description, started, last = self._tasks.pop(task)
        text = info if info is not None else last
        self._emit(f"{description}: {text or 'done'} ({time.monotonic() - started:.1f} s)")


class LogProgress(LineProgress):
    """``LineProgress`` into the log (INFO): the default when no renderer is given."""

    def __init__(self, log: logging.Logger | None = None, level: int = logging.INFO) -> None:
        target = log or logger
        super().__init__(lambda line: target.log(level, "%s", line))


def as_progress(progress: bool | Progress | None) -> Progress:
    """``True`` -> log lines, ``False``/None -> nothing, a ``Progress`` -> itself."""
    if isinstance(progress, bool) or progress is None:
        return LogProgress() if progress else NullProgress()
    return progress


__all__ = ["LineProgress", "LogProgress", "NullProgress", "Progress", "as_progress"]
