"""Quality against sampling cost: molecule stability and time per 1,000 molecules for several --steps.

Runs the real commands (`symdiff generate`, then `symdiff evaluate --json`) so the times are
what a user sees, metrics and file writing included.

    python benchmarks/steps_tradeoff.py --model qm9 --n 1000 --steps 50 100 250 500 1000
    python benchmarks/steps_tradeoff.py --n 500 --steps 100 --spacing quadratic cubic uniform
    python benchmarks/steps_tradeoff.py --n 500 --steps 50 100 --guidance 1 5   # unguided against guided
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from symdiff_cli.model.config import DEFAULT_SPACING, SPACING_CHOICES


def run_one(model: str, n: int, steps: int, spacing: str, seed: int, precision: str, workdir: Path,
            guidance: float | None = None) -> dict:
    out = workdir / f"steps{steps}-{spacing}-{guidance}.sdf"
    cmd = [sys.executable, "-m", "symdiff_cli", "generate", "--model", model, "--n", str(n), "--steps", str(steps),
           "--spacing", spacing, "--seed", str(seed), "--precision", precision, "--out", str(out), "--quiet"]
    if guidance is not None:
        cmd += ["--guidance", str(guidance)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    res = subprocess.run([sys.executable, "-m", "symdiff_cli", "evaluate", str(out), "--dataset", "qm9", "--json", "-"],
                         check=True, capture_output=True, text=True)
    fractions = json.loads(res.stdout)["fractions"]
    return {"steps": steps, "spacing": spacing, "guidance": guidance, "n": n, "precision": precision,
            "seconds": round(seconds, 1),
            "seconds_per_1000": round(seconds * 1000 / n, 1), **fractions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="qm9")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 250, 500, 1000])
    ap.add_argument("--spacing", nargs="+", default=[DEFAULT_SPACING], choices=SPACING_CHOICES,
                    help=f"one or more of {', '.join(SPACING_CHOICES)} (default: {DEFAULT_SPACING}, generate's default)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[None],
                    help="one or more autoguidance weights (default: the model's own; 1 = no guidance)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'spacing':>9} {'guidance':>8} {'steps':>6} {'s/1000 mol':>11} {'atom st.':>9} {'mol st.':>8} "
              f"{'valid':>7} {'V&U':>7}", flush=True)
        for spacing, guidance, steps in itertools.product(args.spacing, args.guidance, args.steps):
            r = run_one(args.model, args.n, steps, spacing, args.seed, args.precision, Path(tmp), guidance)
            rows.append(r)
            shown = "model's" if guidance is None else f"{guidance:g}"
            print(f"{spacing:>9} {shown:>8} {steps:>6} {r['seconds_per_1000']:>11.1f} "
                  f"{100 * r['atom_stability']:>8.1f}% {100 * r['molecule_stability']:>7.1f}% "
                  f"{100 * r['validity']:>6.1f}% {100 * r['valid_and_unique']:>6.1f}%", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
