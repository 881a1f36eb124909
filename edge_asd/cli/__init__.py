"""The ``edge-asd`` command line: one typer app, one module per command group.

Each module exposes ``register(app)``; heavy imports (torch, onnx, sounddevice) happen
inside the commands so that ``edge-asd --help`` works on a bare Jetson.
"""

from __future__ import annotations

import logging
import os
import sys

# numpy's BLAS must be single-threaded before numpy loads: the monitoring loop's small products
# (level check, whitening, distances) each woke a second OpenBLAS thread that fought the engine's
# threads for the cores, 8 ms a call on a busy 2-core box against 0.08 ms on one thread
# (bench/hop_overhead.py). The engine keeps its own thread pool. Set it to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer
from rich.markup import escape

from edge_asd.cli import (
    audio_cmds,
    console_cmd,
    data_cmds,
    demo_cmd,
    engine_cmds,
    feedback_cmds,
    info_cmds,
    listen_cmds,
    site_cmds,
    train_cmds,
    watch_cmd,
)
from edge_asd.cli.output import console, error_console
from edge_asd.core.errors import UserError

app = typer.Typer(
    name="edge-asd",
    help="Listen to machines, learn their normal sound, alert over MQTT when they sound wrong.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)



@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages from the libraries."),
) -> None:
    """edge-asd: record -> train -> evaluate -> export -> build-engine -> listen."""
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)


for _module in (info_cmds, data_cmds, train_cmds, engine_cmds, audio_cmds, listen_cmds, site_cmds, feedback_cmds, watch_cmd, console_cmd, demo_cmd):
    _module.register(app)


def main() -> None:
    """Console-script entry point: user errors become one clear message and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except UserError as err:
        error_console.print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(2)
    except KeyboardInterrupt:
        error_console.print("interrupted")
        sys.exit(130)


__all__ = ["app", "console", "main"]
