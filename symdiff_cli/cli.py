"""The `symdiff` command line: parses options and hands them to the engine.

Each subcommand lives in `symdiff_cli/commands/<name>.py` and imports heavy modules (torch,
rdkit) inside its body so that `symdiff --help` stays fast.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from typing import Any, Callable, Optional

import typer

from symdiff_cli import __version__
from symdiff_cli.commands import convert, evaluate, generate, train
from symdiff_cli.engine.memory import keep_freed_memory
from symdiff_cli.engine.stop_signals import STOP_SIGNALS, StopSignals, exit_code_for, signal_name, signal_of
from symdiff_cli.errors import OutputClosed, SymdiffError, write_error

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


class _Stopped(Exception):
    """A stop signal ended a command that had nothing to keep (see engine/stop_signals.py)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


def _carried_past_click(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` with the two exceptions Click would misreport carried past it: Click turns a
    KeyboardInterrupt into "Aborted!" and an EPIPE OSError into a silent exit code 1."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as interrupt:
            raise _Stopped(signal_of(interrupt)) from None
        except BrokenPipeError:
            raise OutputClosed() from None

    return run


app.command("generate")(_carried_past_click(generate.generate_command))
app.command("train")(_carried_past_click(train.train_command))
app.command("evaluate")(_carried_past_click(evaluate.evaluate_command))
app.command("convert")(_carried_past_click(convert.convert_command))


def _silence_stdout() -> None:
    # Python flushes stdout once more at exit; into the closed pipe that would print
    # "Exception ignored ... BrokenPipeError" and change the exit code.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _stop_signals_end_the_process() -> None:
    # The command is over and its files are complete or gone. A stop signal from here on ends
    # the process at once, as by default (the shell sees 128 + its number), instead of raising
    # in the middle of the interpreter's exit, where SIGINT would print a traceback.
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit code.

    A stop signal (SIGINT, SIGTERM, SIGHUP) ends with 128 + its number, after the command has
    kept what it finished; a closed standard output ends quietly with 141 (128 + SIGPIPE).
    """
    keep_freed_memory()
    try:
        try:
            with StopSignals():
                app()
        finally:
            _stop_signals_end_the_process()
    except SymdiffError as err:
        sys.stderr.write(f"Error: {err}\n")
        sys.exit(err.exit_code)
    except _Stopped as stop:
        sys.stderr.write(f"Interrupted by {signal_name(stop.signum)}\n")
        sys.exit(exit_code_for(stop.signum))
    except (OutputClosed, BrokenPipeError):
        # A downstream tool (head, a closed pipe) stopped reading: not an error of ours.
        _silence_stdout()
        sys.exit(OutputClosed.exit_code)
    except OSError as err:
        # Commands report the files they write by name; this is the last line of defence, so
        # that a full disk anywhere is still one line and not a traceback.
        problem = write_error(err, err.filename or "the output")
        if problem is None:
            raise
        sys.stderr.write(f"Error: {problem}\n")
        sys.exit(problem.exit_code)
