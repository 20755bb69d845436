"""Progress bars on stderr for the slow steps below the command line, which report through a
plain `on_progress(done, total)` callback and never draw on the terminal themselves."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(description: str, show_elapsed: bool = False,
                 enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A transient Rich bar labelled `description` on stderr (stdout stays clean for JSON); yields
    the `on_progress(done, total)` callback that moves it. The bar appears at the first report,
    so a step that finds its result cached shows nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    timing = TimeElapsedColumn() if show_elapsed else TimeRemainingColumn()
    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), timing,
                   console=Console(stderr=True), transient=True, disable=not enabled)
    task = None

    def on_progress(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield on_progress
    finally:
        if task is not None:
            bar.stop()
