#!/usr/bin/env python3
"""Print docs/experiments.csv, the measured runs and screens behind symdiff's defaults, as Markdown.

    python scripts/experiments_table.py                     # every row
    python scripts/experiments_table.py --area guidance     # training, sampler, guidance or architecture
    python scripts/experiments_table.py --columns date,run,molecule_stability,outcome

Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

DEFAULT_CSV = Path(__file__).resolve().parents[1] / "docs" / "experiments.csv"
AREAS = ("training", "sampler", "guidance", "architecture", "conditioning")


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(columns: list[str], rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "") or "") for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV, help="the table (default: docs/experiments.csv)")
    parser.add_argument("--area", choices=AREAS, help="only the rows of this area")
    parser.add_argument("--columns", help="comma-separated columns to print (default: all)")
    args = parser.parse_args(argv)

    columns, rows = read_rows(args.csv)
    if args.area:
        rows = [r for r in rows if r["area"] == args.area]
    if args.columns:
        wanted = [c.strip() for c in args.columns.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in columns]
        if unknown:
            parser.error(f"unknown column(s) {', '.join(unknown)}; the table has {', '.join(columns)}")
        columns = wanted
    print(markdown(columns, rows))
    print(f"\n{len(rows)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
