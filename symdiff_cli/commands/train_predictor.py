"""`symdiff train --predictor PROPERTY`: train the judge of conditional generation (engine/predictor.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from symdiff_cli.errors import UsageError


def train_predictor_command(prop: str, out: Path, preset: str, batch_size: int | None, lr: float | None,
                            max_time: float | None, max_steps: int | None, seed: int, threads: int, quiet: bool,
                            not_for_predictors: dict[str, Any]) -> None:
    """Check the options a predictor run reads, train it with a progress bar, print its references."""
    from rich.console import Console

    from symdiff_cli.engine.predictor_train import PredictorTraining, train_predictor
    from symdiff_cli.engine.stop_signals import exit_code_for

    given = sorted(name for name, value in not_for_predictors.items() if value)
    if given:
        raise UsageError(f"--predictor trains a property predictor; {', '.join(given)} do(es) not apply to it")
    settings = PredictorTraining(prop=prop, out=str(out), preset=preset, seed=seed, threads=threads,
                                 max_time=max_time if max_time or max_steps else PredictorTraining.max_time,
                                 max_steps=max_steps)
    if batch_size is not None:
        settings.batch_size = batch_size
    if lr is not None:
        settings.lr = lr
    console = Console(stderr=True, quiet=quiet)
    if quiet:
        summary = train_predictor(settings, console_print=console.print)
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                      TextColumn("validation MAE {task.fields[mae]}"), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task("predictor", total=1.0, epoch=0, mae="-")

            def on_progress(record: dict) -> None:
                progress.update(task, completed=record["fraction"], epoch=record["epoch"],
                                mae=f"{record['validation_mae']:.4g}")

            summary = train_predictor(settings, console_print=console.print, on_progress=on_progress)
    refs, unit = summary["references"], summary["unit"]
    console.print(f"{summary['property']} predictor written to {summary['out']} after {summary['steps']} steps. "
                  f"MAE ({unit}) on the second half: real molecules {refs['real_molecules']:.4g}, atom count "
                  f"{refs['atom_count']:.4g}, shuffled {refs['shuffled']:.4g}")
    if "signal" in summary:
        raise typer.Exit(exit_code_for(summary["signal"]))
