"""`symdiff generate`."""

from __future__ import annotations

import typer


def generate_command() -> None:
    """Not built yet."""
    typer.echo("symdiff generate is not built yet", err=True)
    raise typer.Exit(2)
