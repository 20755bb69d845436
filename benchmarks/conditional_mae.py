"""EDM's conditional-generation benchmark for a conditional release: generate molecules for values
drawn with their atom counts from the release's training data, judge them with the property
predictor, and report the MAE to the requested values beside the predictor's references, with
the benchmark's stability metrics of the same molecules.

    python benchmarks/conditional_mae.py --model qm9-alpha --n 1000 --seeds 0 \
        [--name "unguided"] [--record weights/qm9-alpha] [--keep DIR] [--against DIR] [-- extra generate options]

--keep DIR keeps each seed's files (and reuses them when called again); --against DIR pairs this
run's molecules with another release's run kept there (the same seeds ask for the same values),
for a difference of MAEs whose standard error the shared requests do not inflate.

--record adds (or replaces, by --name) the result in the release's metrics.json under
"property_mae" and as a stability measurement, then re-renders its card; nothing else of the
release is written.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from release_record import read_metrics, run, sampler_settings, write_metrics  # benchmarks/, beside this script


def measure(model: str, prop: str, n: int, seed: int, predictor: str | None, extra: list[str], folder: Path) -> dict:
    """Generate and judge one seed into `folder`; a seed measured there before is read back."""
    sdf, report, rows, timing = (folder / f"seed{seed}{suffix}" for suffix in (".sdf", ".json", ".csv", ".seconds"))
    if not (report.is_file() and rows.is_file() and timing.is_file()):
        started = time.perf_counter()
        run(["generate", "--model", model, "--n", str(n), "--seed", str(seed), "--condition", prop, "--out", str(sdf),
             "-q", *extra])
        seconds = time.perf_counter() - started
        run(["evaluate", str(sdf), "--property", prop, "--json", str(report), "--per-molecule", str(rows),
             *(["--predictor", predictor] if predictor else [])])
        timing.write_text(f"{seconds:.3f}\n")
    result = json.loads(report.read_text())
    requested, errors = read_errors(rows)
    return {"seconds": float(timing.read_text()), "requested": requested, "errors": errors, **result}


def read_errors(rows: Path) -> tuple[list[float], list[float]]:
    """The requested values and absolute errors of an `evaluate --property --per-molecule` CSV."""
    with rows.open(newline="") as handle:
        table = [(float(row["requested"]), float(row["predicted"])) for row in csv.DictReader(handle)]
    return [r for r, _ in table], [abs(p - r) for r, p in table]


def paired_difference(results: list[dict], against: Path, seeds: list[int]) -> dict:
    """Mean and standard error of this run's absolute errors minus those of the run kept in
    `against` (another release, the same seeds and n: the same requested values, molecule by molecule)."""
    diffs = []
    for result, seed in zip(results, seeds):
        requested, theirs = read_errors(against / f"seed{seed}.csv")
        if len(requested) != len(result["requested"]) or not np.allclose(requested, result["requested"]):
            sys.exit(f"error: {against} asked seed {seed} for other values than this run: nothing to pair")
        diffs += [a - b for a, b in zip(result["errors"], theirs)]
    diffs_array = np.asarray(diffs)
    return {"against": str(against), "mean": round(float(diffs_array.mean()), 4),
            "standard_error": round(float(diffs_array.std(ddof=1) / np.sqrt(len(diffs_array))), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--property", default=None, help="default: the release's first condition")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--predictor", default=None)
    parser.add_argument("--name", default="generated")
    parser.add_argument("--record", default=None, metavar="RELEASE")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep each seed's SDF, evaluation and per-molecule CSV here; seeds found there are reused")
    parser.add_argument("--against", default=None, metavar="DIR",
                        help="the --keep DIR of another release's run (same seeds and --n): report the paired "
                             "difference of the absolute errors, molecule by molecule")
    parser.add_argument("extra", nargs="*", help="further `symdiff generate` options (after --)")
    args = parser.parse_args()

    from symdiff_cli.engine.registry import resolve_model
    from symdiff_cli.engine.release_config import read_release_config
    from symdiff_cli.errors import SymdiffError

    try:
        release_dir = resolve_model(args.model)
        conditions = read_release_config(release_dir)[1].conditions
    except SymdiffError as err:
        sys.exit(f"error: {err}")
    if not args.property and not conditions:
        sys.exit(f"error: {args.model} is not a conditional release; name a --property of a conditional one")
    prop = args.property or conditions[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results = [measure(args.model, prop, args.n, seed, args.predictor, args.extra, folder) for seed in args.seeds]
    maes = [r["property"]["mae"] for r in results]
    counts = {key: sum(r["counts"][key] for r in results) for key in ("molecules", "atoms", "stable_atoms",
                                                                       "stable_molecules", "valid")}
    section = results[0]["property"]
    # the molecules' errors pooled: the per-seed SEs combine as independent samples of equal size
    se = float(np.sqrt(np.mean([r["property"]["mae_standard_error"] ** 2 for r in results]) / len(results)))
    command = (f"symdiff generate --model {args.model} --n {args.n} --seed S --condition {prop} --out mols.sdf"
               + (" " + " ".join(args.extra) if args.extra else "")
               + f" && symdiff evaluate mols.sdf --property {prop}")
    summary = {
        "name": args.name, "property": prop, "unit": section["unit"], "date": datetime.date.today().isoformat(),
        "command": command, "seeds": args.seeds, "num_molecules": counts["molecules"],
        "mae": round(float(np.mean(maes)), 4), "mae_standard_error": round(se, 4),
        "molecule_stability": round(100 * counts["stable_molecules"] / counts["molecules"], 2),
        "atom_stability": round(100 * counts["stable_atoms"] / counts["atoms"], 2),
        "validity": round(100 * counts["valid"] / counts["molecules"], 2),
        "references": section["references"], "predictor": Path(section["predictor"]).name,
        "seconds_per_1000": round(1000 * float(np.mean([r["seconds"] for r in results])) / args.n, 1),
    }
    if args.against:
        summary["mae_difference"] = paired_difference(results, Path(args.against), args.seeds)
    print(json.dumps(summary, indent=2))
    if args.record:
        record(Path(args.record), summary, counts, args)


def record(release: Path, summary: dict, counts: dict, args: argparse.Namespace) -> None:
    metrics = read_metrics(release)
    entries = [e for e in metrics.get("property_mae", []) if e.get("name") != args.name]
    metrics["property_mae"] = entries + [summary]
    measurement = {
        "name": f"{args.name}: values of {summary['property']} drawn with the atom count",
        "date": summary["date"], "command": summary["command"].split(" && ")[0] + " && symdiff evaluate mols.sdf",
        "seeds": args.seeds, "n_per_seed": args.n,
        "sampler": sampler_settings(release, args.extra),
        "metrics": {
            "atom_stability": {"count": counts["stable_atoms"], "of": counts["atoms"]},
            "molecule_stability": {"count": counts["stable_molecules"], "of": counts["molecules"]},
            "validity": {"count": counts["valid"], "of": counts["molecules"]},
        },
        "seconds_per_1000": summary["seconds_per_1000"],
        "timing": "2 CPU cores, the wall time of the generate command",
    }
    metrics["measurements"] = [m for m in metrics["measurements"] if m.get("name") != measurement["name"]] + [measurement]
    write_metrics(release, metrics)


if __name__ == "__main__":
    main()
