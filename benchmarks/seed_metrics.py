"""The QM9 benchmark protocol for a release: generate 1,000 molecules per seed, evaluate each
file, pool the counts, and compare seed by seed with a measurement already in a release's
metrics.json (the same seeds and atom counts, so the per-seed differences are paired).

    python benchmarks/seed_metrics.py --model qm9 --seeds 0 1 2 3 4 5 6 7 8 9 \
        [--against qm9] [--keep DIR] [--name NAME --record RELEASE [--first]] [-- generate options]

Runs one generate command at a time (time it with nothing else running: the wall time of each
generate command is reported per 1,000 molecules). --keep DIR keeps the SDF files (for
benchmarks/failure_analysis.py) with each seed's evaluation and time; a later call with the same
--keep DIR reuses the seeds measured there (an interrupted run resumes, a finished one records). --record adds the result (or replaces the one of the same
--name) to RELEASE's metrics.json as a measurement, first with --first (the first is the model
card's results table), and renders its card again; nothing else of the release is written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from release_record import read_metrics, run, sampler_settings, write_metrics  # benchmarks/, beside this script
METRICS = {"atom_stability": ("stable_atoms", "atoms"), "molecule_stability": ("stable_molecules", "molecules"),
           "validity": ("valid", "molecules")}


def measure(model: str, n: int, seed: int, extra: list[str], folder: Path) -> dict:
    sdf, report, timing = (folder / f"seed{seed}{suffix}" for suffix in (".sdf", ".json", ".seconds"))
    if report.is_file() and timing.is_file():  # measured before into this --keep folder: resume
        seconds = float(timing.read_text())
    else:
        started = time.perf_counter()
        run(["generate", "--model", model, "--n", str(n), "--seed", str(seed), "--out", str(sdf), "-q", *extra])
        seconds = time.perf_counter() - started
        run(["evaluate", str(sdf), "--dataset", "qm9", "--json", str(report)])
        timing.write_text(f"{seconds:.3f}\n")
    counts = json.loads(report.read_text())["counts"]
    print(json.dumps({"seed": seed, "seconds": round(seconds, 1), **counts}), file=sys.stderr, flush=True)
    return {"seconds": seconds, **counts}


def baseline(release: Path, seeds: list[int], name: str | None) -> dict | None:
    """The per-seed percentages of a measurement in `release`'s metrics.json (by name, else its
    first) on the same seeds, or None."""
    path = release / "metrics.json"
    if not path.is_file():
        return None
    entries = json.loads(path.read_text())["measurements"]
    entry = next((e for e in entries if e.get("name") == name), None) if name else entries[0]
    if entry is None or entry.get("seeds") != seeds:
        return None
    return {key: entry["metrics"][key].get("per_seed") for key in METRICS} | {"name": entry["name"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qm9")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--against", default=None, metavar="RELEASE",
                        help="compare with a measurement of this release's metrics.json (default: --model's)")
    parser.add_argument("--against-name", default=None, help="that measurement's name (default: its first)")
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep the SDF and JSON files here")
    parser.add_argument("--name", default=None, help="the measurement's name for --record")
    parser.add_argument("--record", default=None, metavar="RELEASE")
    parser.add_argument("--first", action="store_true", help="with --record: put it first (the card's table)")
    parser.add_argument("--notes", default=None, help="with --record: the measurement's notes")
    parser.add_argument("--seconds", type=float, default=None,
                        help="with --record: seconds per 1,000 molecules measured apart (say how in --timing), "
                             "for seeds generated beside other jobs, whose own wall times are not the sampler's")
    parser.add_argument("--timing", default=None, help="with --record and --seconds: how --seconds was measured")
    parser.add_argument("extra", nargs="*", help="further `symdiff generate` options (after --)")
    args = parser.parse_args()
    if args.record and not args.name:
        sys.exit("error: --record needs --name")
    if (args.seconds is None) != (args.timing is None):
        sys.exit("error: --seconds and --timing go together")

    from symdiff_cli.engine.registry import resolve_model
    from symdiff_cli.errors import SymdiffError

    try:
        release_dir = resolve_model(args.model)
        against_dir = resolve_model(args.against) if args.against else release_dir
    except SymdiffError as err:
        sys.exit(f"error: {err}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results = [measure(args.model, args.n, seed, args.extra, folder) for seed in args.seeds]

    per_seed = {key: [round(100 * r[num] / r[den], 2) for r in results] for key, (num, den) in METRICS.items()}
    totals = {key: sum(r[key] for r in results) for key in results[0] if key != "seconds"}
    summary: dict = {
        "seeds": args.seeds, "per_seed": per_seed,
        "pooled": {key: round(100 * totals[num] / totals[den], 2) for key, (num, den) in METRICS.items()},
        "uniqueness": round(100 * totals["unique"] / max(totals["valid"], 1), 2),
        "novelty": round(100 * totals["novel"] / max(totals["unique"], 1), 2),
        "seconds_per_1000": [round(1000 * r["seconds"] / args.n, 1) for r in results],
    }
    reference = baseline(against_dir, args.seeds, args.against_name)
    if reference is not None:
        summary["paired_against"] = reference["name"]
        for key in METRICS:
            if reference[key] is None:
                continue
            diff = np.asarray(per_seed[key]) - np.asarray(reference[key])
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
            summary[f"{key}_difference"] = {"mean": round(float(diff.mean()), 2), "standard_error": round(se, 2)}
    print(json.dumps(summary, indent=2))
    if args.record:
        record(Path(args.record), args, per_seed, totals, summary)


def record(release: Path, args: argparse.Namespace, per_seed: dict, totals: dict, summary: dict) -> None:
    metrics = read_metrics(release)
    metrics_entry = {key: {"per_seed": per_seed[key], "count": totals[num], "of": totals[den]}
                     for key, (num, den) in METRICS.items()}
    metrics_entry["strict_validity"] = {"count": totals["strict_valid"], "of": totals["molecules"]}
    metrics_entry["uniqueness"] = {"count": totals["unique"], "of": totals["valid"]}
    metrics_entry["novelty"] = {"count": totals["novel"], "of": totals["unique"]}
    measurement = {
        "name": args.name, "date": datetime.date.today().isoformat(),
        "command": (f"symdiff generate --n {args.n} --seed S --out mols.sdf"
                    + (" " + " ".join(args.extra) if args.extra else "")
                    + " && symdiff evaluate mols.sdf --dataset qm9"),
        "sampler": sampler_settings(release, args.extra), "seeds": args.seeds, "n_per_seed": args.n,
        "metrics": metrics_entry,
        "seconds_per_1000": summary["seconds_per_1000"][0] if args.seconds is None else args.seconds,
        "timing": (f"seed {args.seeds[0]}, 2 CPU cores, the wall time of the generate command" if args.timing is None
                   else args.timing),
    }
    if args.notes:
        measurement["notes"] = args.notes
    others = [m for m in metrics["measurements"] if m.get("name") != args.name]
    metrics["measurements"] = [measurement] + others if args.first else others + [measurement]
    write_metrics(release, metrics)


if __name__ == "__main__":
    main()
