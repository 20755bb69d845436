"""`symdiff convert`."""

from __future__ import annotations

import typer


def convert_command() -> None:
    """Not built yet."""
    typer.echo("symdiff convert is not built yet", err=True)
    raise typer.Exit(2)
