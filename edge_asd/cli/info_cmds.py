"""``edge-asd version``."""

from __future__ import annotations

import platform

import typer

from edge_asd import __version__
from edge_asd.cli.output import console


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print the edge-asd version and the Python it runs on."""
        console.print(f"edge-asd {__version__} (Python {platform.python_version()})")
