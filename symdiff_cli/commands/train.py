"""`symdiff train`."""

from __future__ import annotations

import typer


def train_command() -> None:
    """Not built yet."""
    typer.echo("symdiff train is not built yet", err=True)
    raise typer.Exit(2)
