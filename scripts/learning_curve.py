"""Print the learning curve of training runs as a Markdown table, from their metrics.jsonl.

    python scripts/learning_curve.py runs/small-learned runs/small-haar

One row per periodic evaluation: training wall time and CPU time (evaluation excluded), epoch,
step, and the sample-based metrics the run logged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from symdiff_cli.engine.metrics_log import read_metrics


def evaluations(run: Path) -> list[dict]:
    rows = read_metrics(run / "metrics.jsonl")
    seen, out = set(), []
    for r in rows:
        if r.get("event") == "eval" and r["step"] not in seen:
            seen.add(r["step"])
            out.append(r)
    return out


def main(paths: list[str]) -> None:
    print("| run | train time (min) | CPU time (min) | epoch | step | samples | atom stab. | mol. stab. | valid | unique |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        run = Path(path)
        for r in evaluations(run):
            cpu = r.get("cpu_time")
            print(f"| {run.name} | {r['time'] / 60:.1f} | {'' if cpu is None else f'{cpu / 60:.1f}'} | "
                  f"{r.get('epoch', '')} | {r['step']} | {r['num_molecules']} | {100 * r['atom_stability']:.1f} % | "
                  f"{100 * r['molecule_stability']:.1f} % | {100 * r['validity']:.1f} % | {100 * r['uniqueness']:.1f} % |")


if __name__ == "__main__":
    main(sys.argv[1:] or sys.exit(__doc__))
