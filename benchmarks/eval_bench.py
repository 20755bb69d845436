"""Time the QM9 metrics on the 13,083 test molecules (target: under 60 s on 2 cores).

Usage: .venv/bin/python benchmarks/eval_bench.py [--split test|valid|train|all]

Prints the time to load (or first build) the QM9 cache, the time to evaluate the split, and
the metrics, which for the test split must read 99.34 / 95.22 / 97.74 %.
"""

from __future__ import annotations

import argparse
import time

from symdiff_cli.chem.metrics import evaluate_molecules
from symdiff_cli.data.qm9 import cache_path, load_qm9, qm9_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test", choices=("train", "valid", "test", "all"))
    args = parser.parse_args()

    cached = cache_path().is_file()
    start = time.perf_counter()
    load_qm9()
    load_seconds = time.perf_counter() - start
    print(f"QM9 cache {'load' if cached else 'build'}: {load_seconds:.1f} s ({cache_path()})")

    molecules = qm9_split(args.split)
    start = time.perf_counter()
    result = evaluate_molecules(molecules)
    eval_seconds = time.perf_counter() - start
    print(
        f"evaluated {result.num_molecules} molecules ({args.split}) in {eval_seconds:.1f} s "
        f"({1000 * eval_seconds / max(result.num_molecules, 1):.2f} ms per molecule)"
    )
    print(
        f"atom stability {100 * result.atom_stability:.2f} %, molecule stability "
        f"{100 * result.molecule_stability:.2f} %, validity {100 * result.validity:.2f} %, "
        f"uniqueness {100 * result.uniqueness:.2f} %"
    )


if __name__ == "__main__":
    main()
