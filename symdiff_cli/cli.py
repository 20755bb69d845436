"""The `symdiff` command line: parses options and hands them to the engine.

Each subcommand lives in `symdiff_cli/commands/<name>.py` and imports heavy modules (torch,
rdkit) inside its body so that `symdiff --help` stays fast.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from symdiff_cli import __version__
from symdiff_cli.commands import convert, evaluate, generate, train
from symdiff_cli.errors import SymdiffError

app = typer.Typer(
    name="symdiff",
    help="Generate, train and evaluate 3D molecule diffusion models (SymDiff, ICLR 2025).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"symdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Generate, train and evaluate 3D molecule diffusion models (SymDiff, ICLR 2025)."""


app.command("generate")(generate.generate_command)
app.command("train")(train.train_command)
app.command("evaluate")(evaluate.evaluate_command)
app.command("convert")(convert.convert_command)


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit code."""
    try:
        app()
    except SymdiffError as err:
        sys.stderr.write(f"Error: {err}\n")
        sys.exit(err.exit_code)
    except BrokenPipeError:
        # A downstream tool (head, a closed pipe) stopped reading: not an error of ours.
        sys.stderr.close()
        sys.exit(141)
