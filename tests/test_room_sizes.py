"""Small rooms: no module of engine/ or io/ over 400 lines, no function there over 80.

A newcomer reads a module in one sitting and a function on one screen; read from the source
with `ast`, not by running it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "symdiff_cli"
CHECKED_PACKAGES = ("engine", "io")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def checked_modules() -> list[Path]:
    return sorted(path for name in CHECKED_PACKAGES for path in (PACKAGE / name).rglob("*.py"))


def test_there_are_modules_to_check():
    assert len(checked_modules()) > 10


def test_no_module_over_the_line_limit():
    too_long = {}
    for path in checked_modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            too_long[str(path.relative_to(PACKAGE))] = lines
    assert too_long == {}


def test_no_function_over_the_line_limit():
    too_long = {}
    for path in checked_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long[f"{path.relative_to(PACKAGE)}:{node.name}"] = lines
    assert too_long == {}
