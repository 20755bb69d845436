"""`symdiff evaluate`."""

from __future__ import annotations

import typer


def evaluate_command() -> None:
    """Not built yet."""
    typer.echo("symdiff evaluate is not built yet", err=True)
    raise typer.Exit(2)
