"""Relaxation, filtering and energy metrics of the shipped model's molecules (issue 37).

    python benchmarks/relax_measure.py --n 1000 --workers 2 --out-dir bench-relax

1. Samples --n molecules with `symdiff generate --n N --seed 0` (or reads --raw FILE, a file
   that command wrote) and times it.
2. Relaxes the first --relax-n of them with GFN2-xTB and with MMFF94 (the code of
   `--relax xtb|mmff`), in --workers single-threaded processes. Time per molecule is the CPU
   time of each relaxation, measured inside its worker, so other work on the machine does not
   inflate it; the wall time of the whole run is printed beside it.
3. Stability and validity (the benchmark's rules) of the raw and the relaxed molecules.
4. The xtb strain energy and heavy-atom RMSD of the raw molecules (what `symdiff evaluate
   --energy` reports), beside those of --reference QM9 test molecules (seed 0; cached).
5. With --posebusters, the PoseBusters checks for generated molecules (its "mol" configuration:
   sanitisation, connectivity, bond lengths and angles, planarity, internal clashes, energy
   ratio) on the raw, MMFF- and xTB-relaxed molecules as SDF files (`pip install posebusters`;
   the three files are kept in --out-dir).
6. `--keep stable`'s acceptance rate is the fraction of attempts that pass, i.e. the molecule
   stability of the raw (or relaxed) samples; cost per kept molecule = (sampling + relaxation
   time per attempt) / acceptance rate. With --keep-n K it also runs `symdiff generate --keep
   stable --n K` and reports the acceptance and cost that run printed.

Writes results.json and results.md (the table for README.md and docs/relaxation.md) in
--out-dir and prints the table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _cli() -> list[str]:
    return [sys.executable, "-m", "symdiff_cli"]


def _generate(out: Path, n: int, threads: int, *extra: str) -> tuple[float, str]:
    started = time.perf_counter()
    run = subprocess.run(_cli() + ["generate", "--n", str(n), "--seed", "0", "--out", str(out),
                                   "--threads", str(threads), *extra], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"generate failed: {run.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started, run.stderr


def _metrics(mols) -> dict:
    from symdiff_cli.chem.metrics import evaluate_molecules

    result = evaluate_molecules(mols)
    return {"molecules": result.num_molecules, "atom_stability": result.atom_stability,
            "molecule_stability": result.molecule_stability, "validity": result.validity}


def _relax(mols, method: str, workers: int) -> dict:
    import copy

    from symdiff_cli.chem.relax import RelaxSettings
    from symdiff_cli.engine.relax_pool import RelaxPool
    from symdiff_cli.io.formats import round_to_stored_precision

    started = time.perf_counter()
    with RelaxPool(RelaxSettings(method), workers) as pool:
        outcomes = pool.relax(mols)
    wall = time.perf_counter() - started
    relaxed = copy.deepcopy(mols)
    for mol, outcome in zip(relaxed, outcomes):
        mol.positions = outcome.positions
    round_to_stored_precision(relaxed, "sdf")  # as the file stores them
    cpu = [o.cpu_seconds for o in outcomes]
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    return {"outcomes": outcomes, "molecules": relaxed, "wall_seconds": wall, "workers": workers,
            "cpu_seconds_median": statistics.median(cpu), "cpu_seconds_mean": float(np.mean(cpu)),
            "status": statuses, "metrics_after": _metrics(relaxed)}


def _keep_run(out_dir: Path, k: int, threads: int, workers: int, relax: str) -> dict:
    out = out_dir / f"keep-stable-{relax}-{k}.sdf"
    seconds, stderr = _generate(out, k, threads, "--keep", "stable", "--relax", relax, "--workers", str(workers))
    text = " ".join(stderr.split())
    found = re.search(r"--keep stable: kept (\d+) of (\d+) sampled", text)
    kept, attempts = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    return {"relax": relax, "n": k, "kept": kept, "attempts": attempts,
            "acceptance": kept / attempts if attempts else 0.0, "wall_seconds": seconds,
            "wall_seconds_per_kept": seconds / kept if kept else None}


def _posebusters(mols, path: Path) -> dict:
    """PoseBusters ("mol" configuration) on `mols` written as the SDF `path` (posebusters_check.py)."""
    from posebusters_check import posebusters_rates  # benchmarks/, beside this script

    from symdiff_cli.io.writer import write_molecules

    write_molecules(str(path), mols, "sdf")
    return posebusters_rates(str(path))


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _q(stats: dict, digits: int = 2) -> str:
    return f"{stats['median']:.{digits}f} [{stats['q1']:.{digits}f}, {stats['q3']:.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="molecules to sample (default 1000)")
    parser.add_argument("--raw", type=Path, help="an SDF from `symdiff generate --n N --seed 0` instead of sampling")
    parser.add_argument("--raw-seconds", type=float, help="with --raw: the wall time generate took, if known")
    parser.add_argument("--relax-n", type=int, help="molecules to relax (default: all)")
    parser.add_argument("--workers", type=int, default=1, help="relaxation processes (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads for sampling (default 1)")
    parser.add_argument("--reference", type=int, default=200, help="QM9 test molecules for the reference")
    parser.add_argument("--keep-n", type=int, default=0, help="also run generate --keep stable --n K (0: skip)")
    parser.add_argument("--posebusters", action="store_true", help="also run PoseBusters' checks on the three sets")
    parser.add_argument("--out-dir", type=Path, default=Path("bench-relax"))
    args = parser.parse_args()

    from symdiff_cli.chem.energy import MoleculeEnergy, summarise_energies
    from symdiff_cli.chem.quiet import quiet_library_warnings
    from symdiff_cli.engine.energy_reference import qm9_energy_reference
    from symdiff_cli.io.reader import read_molecules

    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.raw is None:
        args.raw = args.out_dir / f"raw-{args.n}.sdf"
        args.raw_seconds, _ = _generate(args.raw, args.n, args.threads)
    with quiet_library_warnings():
        mols, _ = read_molecules(str(args.raw))
        mols = mols[: args.relax_n or len(mols)]
        for mol in mols:
            mol.bonds = None  # relax and measure from coordinates, as generate does (not the file's bond block)
        results: dict = {"raw_file": str(args.raw), "molecules": len(mols), "workers": args.workers,
                         "sampling_wall_seconds_per_molecule": (args.raw_seconds / args.n) if args.raw_seconds else None,
                         "raw": _metrics(mols)}
        if args.posebusters:
            results["raw"]["posebusters"] = _posebusters(mols, args.out_dir / "posebusters-raw.sdf")
        for method in ("mmff", "xtb"):
            run = _relax(mols, method, args.workers)
            results[method] = {key: value for key, value in run.items() if key not in ("outcomes", "molecules")}
            if args.posebusters:
                results[method]["metrics_after"]["posebusters"] = _posebusters(
                    run["molecules"], args.out_dir / f"posebusters-{method}.sdf")
            if method == "xtb":
                energies = [MoleculeEnergy.from_outcome(o) for o in run["outcomes"]]
                results["energy"] = summarise_energies(energies)
            print(f"{method}: {run['status']} in {run['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
        results["qm9_reference"] = qm9_energy_reference(args.reference, args.workers)
        if args.keep_n:
            results["keep_runs"] = [_keep_run(args.out_dir, args.keep_n, args.threads, args.workers, relax)
                                    for relax in ("none", "xtb")]

    sample_s = results["sampling_wall_seconds_per_molecule"]
    rows = ["| | raw samples | after MMFF94 | after GFN2-xTB |", "|---|---|---|---|"]
    for key, name in (("atom_stability", "atom stability"), ("molecule_stability", "molecule stability"),
                      ("validity", "validity")):
        rows.append(f"| {name} | {_pct(results['raw'][key])} | {_pct(results['mmff']['metrics_after'][key])} | "
                    f"{_pct(results['xtb']['metrics_after'][key])} |")
    if args.posebusters:
        rows.append("| PoseBusters pass-all | " + " | ".join(
            _pct(stage["posebusters"]["pass_all"]) for stage in
            (results["raw"], results["mmff"]["metrics_after"], results["xtb"]["metrics_after"])) + " |")
    for method in ("mmff", "xtb"):
        r = results[method]
        results[method]["keep_stable_acceptance"] = r["metrics_after"]["molecule_stability"]
    rows.append(f"| CPU time per molecule, median (mean) | - | {results['mmff']['cpu_seconds_median']:.3f} s "
                f"({results['mmff']['cpu_seconds_mean']:.3f} s) | {results['xtb']['cpu_seconds_median']:.2f} s "
                f"({results['xtb']['cpu_seconds_mean']:.2f} s) |")
    rows.append(f"| relaxed (converged / step cap / left as sampled) | - | "
                f"{results['mmff']['status'].get('converged', 0)} / {results['mmff']['status'].get('step-cap', 0)} / "
                f"{results['mmff']['status'].get('unassigned', 0) + results['mmff']['status'].get('failed', 0)} | "
                f"{results['xtb']['status'].get('converged', 0)} / {results['xtb']['status'].get('step-cap', 0)} / "
                f"{results['xtb']['status'].get('failed', 0)} |")
    accept = {"none": results["raw"]["molecule_stability"], "mmff": results["mmff"]["keep_stable_acceptance"],
              "xtb": results["xtb"]["keep_stable_acceptance"]}
    if sample_s and all(accept.values()):  # with nothing stable there is no cost per kept molecule
        cost = {"none": sample_s / accept["none"],
                "mmff": (sample_s + results["mmff"]["cpu_seconds_mean"]) / accept["mmff"],
                "xtb": (sample_s + results["xtb"]["cpu_seconds_mean"]) / accept["xtb"]}
        results["keep_stable_seconds_per_kept"] = cost
        rows.append(f"| `--keep stable`: acceptance, seconds per kept molecule | {_pct(accept['none'])}, "
                    f"{cost['none']:.2f} s | {_pct(accept['mmff'])}, {cost['mmff']:.2f} s | "
                    f"{_pct(accept['xtb'])}, {cost['xtb']:.2f} s |")
    energy, reference = results["energy"], results["qm9_reference"]
    table2 = ["| GFN2-xTB relaxation: median [quartiles] | strain energy (kcal/mol) | heavy-atom RMSD (A) | "
              "relaxed / failed |", "|---|---|---|---|",
              f"| {len(mols)} raw samples | {_q(energy['strain_kcal_mol'])} | {_q(energy['rmsd_angstrom'], 3)} | "
              f"{energy['relaxed']} / {energy['failed']} |",
              f"| QM9 test ({reference['molecules']}, seed 0) | {_q(reference['strain_kcal_mol'])} | "
              f"{_q(reference['rmsd_angstrom'], 3)} | {reference['relaxed']} / {reference['failed']} |"]
    text = "\n".join(rows) + "\n\n" + "\n".join(table2) + "\n"
    if args.keep_n:
        keep_rows = ["| `generate --keep stable` run | kept / sampled | acceptance | wall s per kept |", "|---|---|---|---|"]
        for run in results["keep_runs"]:
            per = f"{run['wall_seconds_per_kept']:.2f}" if run["wall_seconds_per_kept"] else "n/a"
            keep_rows.append(f"| --relax {run['relax']} --n {run['n']} | {run['kept']} / {run['attempts']} | "
                             f"{_pct(run['acceptance'])} | {per} |")
        text += "\n" + "\n".join(keep_rows) + "\n"
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out_dir / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
