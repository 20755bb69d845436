"""The package's imports point one way: commands -> engine -> data -> io -> model/chem -> errors.

Read from the import statements (function-local ones included), not from running the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "symdiff_cli"
# A module may import from its own package or from a package of a lower rank. report/ sits
# between commands and engine: it reads training logs (engine) and commands call it.
RANK = {"__main__": 7, "cli": 6, "commands": 5, "report": 4.5, "engine": 4, "data": 3, "io": 2, "model": 1, "chem": 1,
        "errors": 0, "__init__": 0}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules of the package that a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("symdiff_cli"):
            found.add(node.module)
            for alias in node.names:  # `from symdiff_cli.engine import release`
                if (PACKAGE.parent / (node.module.replace(".", "/") + f"/{alias.name}.py")).exists():
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("symdiff_cli")}
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_points_up():
    upward = [(src, dst) for src, dsts in graph().items() for dst in dsts
              if room(src) != room(dst) and RANK[room(dst)] >= RANK[room(src)]]
    assert upward == []


def test_no_import_circle():
    edges = {src: {d for d in dsts if d != src} for src, dsts in graph().items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt in edges and not state.get(nxt):
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if not state.get(start):
            visit(start, [start])
    assert circles == []


def test_every_room_has_a_rank():
    assert {room(m) for m in graph()} <= set(RANK)
