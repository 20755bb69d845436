"""Time `symdiff evaluate --report` on 10,000 molecules (target: under 60 s on this CPU).

Usage: .venv/bin/python benchmarks/report_speed.py MOLS.sdf [--n 10000] [--out DIR]

Sampling 10,000 molecules on two CPU cores takes most of an hour, so the input is MOLS.sdf (or
.xyz) repeated until it holds --n molecules: the work per molecule is the same, only uniqueness
is lower. Runs the command as a user does (a subprocess, caches warm: a first run builds the QM9
novelty and reference caches once and is timed separately), once without and once with
--report, and prints both wall times and their difference, the report's own cost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SYMDIFF = Path(sys.executable).with_name("symdiff")


def count_records(text: str, suffix: str) -> int:
    if suffix == ".sdf":
        return text.count("$$$$")
    lines, count, k = text.splitlines(), 0, 0
    while k < len(lines) and lines[k].strip():
        k += int(lines[k]) + 2
        count += 1
    return count


def repeated_input(source: Path, n: int, folder: Path) -> Path:
    """`source` written over and over (its last copy cut short) into a file of n molecules."""
    if source.suffix not in (".sdf", ".xyz"):
        sys.exit("give an .sdf or .xyz file (records are repeated as text)")
    text = source.read_text()
    if not text.endswith("\n"):
        text += "\n"
    per_copy = count_records(text, source.suffix)
    copies = -(-n // per_copy)
    target = folder / f"repeated{n}{source.suffix}"
    if source.suffix == ".sdf":
        records = [r + "$$$$\n" for r in text.split("$$$$\n") if r.strip()]
        target.write_text("".join((records * copies)[:n]))
    else:
        target.write_text(text * copies)  # xyz: whole copies (the count is rounded up)
    return target


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([str(SYMDIFF), *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(result.stderr)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/report_speed"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    big = repeated_input(args.source, args.n, args.out)
    warm = timed(["evaluate", str(args.source), "--report", str(args.out / "warm.html")])
    print(f"warm-up on {args.source} (builds the QM9 caches if missing): {warm:.1f} s")
    plain = timed(["evaluate", str(big)])
    report_path = args.out / "report.html"
    with_report = timed(["evaluate", str(big), "--report", str(report_path)])
    size_kb = report_path.stat().st_size / 1024
    print(f"evaluate {big.name}: {plain:.1f} s; with --report: {with_report:.1f} s "
          f"(the report's own cost {with_report - plain:.1f} s; page {size_kb:.0f} KB)")


if __name__ == "__main__":
    main()
