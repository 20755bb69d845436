"""`symdiff evaluate --report`: the HTML report of molecule files or of training runs.

The report package (symdiff_cli/report/) gathers, draws and renders; this module owns what a
command owns: the progress bars, the order of the work, the run-directory summary printed in
the terminal, and where the page is written (atomically, like every output of evaluate).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from symdiff_cli.errors import SymdiffError, UsageError

if TYPE_CHECKING:  # the report's modules import matplotlib and RDKit: loaded only when used
    from symdiff_cli.chem.metrics import EvaluationResult
    from symdiff_cli.chem.molecule import Molecule
    from symdiff_cli.report.stats import SetStats

# Molecules drawn per input file unless --report-molecules says otherwise.
DEFAULT_DEPICTIONS = 24


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient Rich progress bar on stderr (stdout may carry JSON); yields `advance(n)`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def check_report_path(path: str) -> None:
    """Refuse a report path that cannot be written before any work is done."""
    if path == "-":
        raise UsageError("--report writes an HTML file: give a file name, not '-'")
    check_output_path("--report", path, "report.html")


def check_output_path(option: str, path: str, example: str) -> None:
    """Refuse an output file that cannot be written before any work is done (an evaluation with
    --energy can take hours): a directory, or a folder that does not exist."""
    if not path.strip():  # an unset shell variable: Path("") is the current directory
        raise UsageError(f"{option} is empty: give a file name such as {example}")
    from symdiff_cli.io.atomic import names_a_stream

    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path} is a directory: give a file name such as {example}")
    if names_a_stream(path):
        raise UsageError(f"{option} {path} is a device or stream, not a file: give '-' for standard output")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {target.parent} does not exist")


def input_slices(origins: Sequence[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(source, start, stop) of each input file's molecules in the pooled list: a file starts
    where the index within its source returns to 0."""
    starts = [k for k, (_, index) in enumerate(origins) if index == 0]
    bounds = starts + [len(origins)]
    names = [origins[k][0] for k in starts]
    # The same file given twice is two columns; they need two names.
    labels = [f"{name} ({names[:k].count(name) + 1})" if names.count(name) > 1 else name
              for k, name in enumerate(names)]
    return [(label, bounds[k], bounds[k + 1]) for k, label in enumerate(labels)]


def _reference(dataset: str, train_smiles: frozenset[str] | None) -> SetStats | None:
    """The QM9 test split's statistics (novelty against `train_smiles`), or None for other data."""
    if dataset != "qm9":
        return None
    from symdiff_cli.report.reference import cached_qm9_reference, qm9_reference, qm9_reference_steps

    reference = cached_qm9_reference()
    if reference is None:
        with progress_bar("gathering QM9 test-split statistics (once)", qm9_reference_steps()) as advance:
            reference = qm9_reference(advance)
    return reference.with_novelty(train_smiles)


def molecule_report_html(molecules: Sequence[Molecule], origins: Sequence[tuple[str, int]],
                         result: EvaluationResult, train_smiles: frozenset[str] | None, dataset: str,
                         depictions: int, title: str) -> str:
    """The report page of evaluated molecules: one column per input file, QM9 beside them."""
    from symdiff_cli.chem.metrics import summarise
    from symdiff_cli.report.depict import depict_sample
    from symdiff_cli.report.page import InputSection, render_molecule_report
    from symdiff_cli.report.plots import colour, molecule_figures
    from symdiff_cli.report.stats import collect_stats, merge_stats

    reference = _reference(dataset, train_smiles)
    slices = input_slices(origins)
    inputs = []
    with progress_bar("gathering report statistics", len(molecules)) as advance:
        for name, start, stop in slices:
            reports = result.reports[start:stop]
            inputs.append(collect_stats(name, molecules[start:stop], reports, summarise(reports, train_smiles),
                                        advance))
    pooled = merge_stats("all inputs", inputs, result.as_dict()) if len(inputs) > 1 else None
    figures = molecule_figures(inputs, reference)
    sections = [InputSection(name, colour(k), stop - start,
                             depict_sample(molecules[start:stop], result.reports[start:stop], depictions))
                for k, (name, start, stop) in enumerate(slices) if depictions > 0]
    notes = [] if reference is not None else [f"No reference statistics for the {dataset} data: only QM9's are kept."]
    return render_molecule_report(inputs, pooled, reference, figures, sections, title, notes)


def is_folder(path: str) -> bool:
    """Whether a FILE argument names a folder: then it must be a training run directory."""
    return path != "-" and Path(path).is_dir()


def training_runs_report(paths: Sequence[str], report_path: str | None, write_text: Callable[[str, str], None],
                         console: Any) -> None:
    """Print a summary of each run's metrics.jsonl and, with a report path, write its page."""
    from rich.table import Table

    from symdiff_cli.chem.metric_rows import format_percent
    from symdiff_cli.report.runs import EVAL_METRICS, METRICS_FILE, is_run_dir, read_run, run_names, run_summary

    for path in paths:
        if not os.path.exists(path):
            raise SymdiffError(f"no such file or directory: {path}")
        if not is_folder(path):
            raise UsageError(f"{path} is a molecule file and the other inputs are folders: give either molecule "
                             f"files or training run directories, not both")
        if not is_run_dir(path):
            raise UsageError(f"{path} is a folder but not a training run directory (it has no {METRICS_FILE})")
    runs = [read_run(path, name) for path, name in zip(paths, run_names(paths))]
    table = Table(title=f"{len(runs)} training run{'s' if len(runs) > 1 else ''} (last evaluation)")
    # Short headers: the table must fit an 80-column terminal.
    short = {"molecule_stability": "Mol. stable", "atom_stability": "Atoms stable", "validity": "Valid",
             "uniqueness": "Unique"}
    for header in ("Run", "Steps", "Min", "Loss", *(short.get(key, label) for key, label in EVAL_METRICS)):
        table.add_column(header, justify="left" if header == "Run" else "right")
    for run in runs:
        row = run_summary(run)
        table.add_row(row["name"], "n/a" if row["steps"] is None else f"{row['steps']:,}",
                      "n/a" if row["time"] is None else f"{row['time'] / 60:.1f}",
                      "n/a" if row["loss"] is None else f"{row['loss']:.4f}",
                      *(format_percent(row[key]) for key, _ in EVAL_METRICS))
    console.print(table)
    if report_path is not None:
        if not any(run.steps or run.evals for run in runs):
            raise SymdiffError("no training records in " + ", ".join(paths) + ": nothing to plot")
        from symdiff_cli.report.page import render_training_report

        write_text(report_path, render_training_report(runs, f"Training report: {', '.join(run_names(paths))}"))


__all__ = ["DEFAULT_DEPICTIONS", "check_report_path", "input_slices", "is_folder", "molecule_report_html",
           "progress_bar", "training_runs_report"]
