"""Shared rich consoles for the CLI: results on stdout, messages and errors on stderr."""

from rich.console import Console

console = Console()
error_console = Console(stderr=True)
