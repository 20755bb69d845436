"""Checks on the paths a command is given, before it reads or writes anything."""

from __future__ import annotations

import os
from typing import Iterable, Mapping

from symdiff_cli.errors import UsageError

STDIO_PATH = "-"


def same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same path, a symlink and its target, or two hard
    links. Standard input/output ('-') is never a file here."""
    first, second = os.fspath(first), os.fspath(second)
    if STDIO_PATH in (first, second):
        return False
    try:
        return os.path.samefile(first, second)
    except OSError:
        # One of them does not exist (yet): only an identical resolved path can be the same.
        return os.path.realpath(first) == os.path.realpath(second)


def refuse_overwriting_inputs(outputs: Mapping[str, str | os.PathLike | None],
                              inputs: Iterable[str | os.PathLike]) -> None:
    """UsageError when an output would replace an input file or another output.

    `outputs` maps how each output was given (e.g. "--json", "OUT") to its path (None: not
    given). Writing is atomic, so such a command would silently swap the user's input for
    its output; nobody asks for that on purpose.
    """
    inputs = [os.fspath(path) for path in inputs]
    given = [(label, os.fspath(path)) for label, path in outputs.items() if path is not None]
    for index, (label, path) in enumerate(given):
        for source in inputs:
            if same_file(path, source):
                raise UsageError(f"{label} {path} is the input file {source}: refusing to overwrite it "
                                 "(choose another output path)")
        for other_label, other in given[:index]:
            if same_file(path, other):
                raise UsageError(f"{other_label} and {label} both name {path}: give them different paths")


__all__ = ["same_file", "refuse_overwriting_inputs"]
