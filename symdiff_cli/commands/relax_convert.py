"""`symdiff convert --relax`: option checks, the progress bar and the closing line."""

from __future__ import annotations

from typing import Optional

import typer

from symdiff_cli.errors import UsageError


def check_relax_options(relax: str, workers: Optional[int], relax_steps: int) -> None:
    """Bad values and a missing optional package fail before anything is read."""
    from symdiff_cli.chem.relax import RELAX_METHODS, require_method

    if relax not in RELAX_METHODS:
        raise UsageError(f"--relax must be one of {', '.join(RELAX_METHODS)}, not {relax!r}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    if relax_steps < 1:
        raise UsageError(f"--relax-steps must be at least 1, not {relax_steps}")
    require_method(relax)


def relax_and_write(molecules: list, output_path: str, output_format: str, bonds: str, relax: str,
                    workers: Optional[int], relax_steps: int) -> tuple[int, str]:
    """Relax and write `molecules`; returns (molecules left out, the relaxation's summary line).
    A stop signal prints what was kept and exits with the shell's code for it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from symdiff_cli.chem.relax import RelaxSettings
    from symdiff_cli.commands.relax_summary import relax_status_line
    from symdiff_cli.engine.relax_file import relax_into_file
    from symdiff_cli.engine.stop_signals import exit_code_for, signal_name

    columns = (TextColumn(f"relaxing ({relax})"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("relaxing", total=len(molecules))
        result = relax_into_file(molecules, output_path, output_format, bonds, RelaxSettings(relax, relax_steps),
                                 workers, on_done=lambda k: bar.update(task, completed=k))
    line = relax_status_line(relax, result.status, result.seconds)
    if result.stop_signal is not None:
        target = "standard output" if output_path == "-" else result.out
        kept = f" ({output_path} was left as it was)" if result.out != output_path else ""
        written = (f"wrote {result.written} of {result.total} molecules to {target}{kept}"
                   if result.written + result.left_out else "nothing was written")
        typer.echo(f"Interrupted by {signal_name(result.stop_signal)}: {written}. {line}", err=True)
        raise typer.Exit(exit_code_for(result.stop_signal))
    return result.left_out, line


__all__ = ["check_relax_options", "relax_and_write"]
