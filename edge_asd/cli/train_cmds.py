"""Commands of this group are registered here (work in progress)."""

import typer


def register(app: typer.Typer) -> None:
    return None
