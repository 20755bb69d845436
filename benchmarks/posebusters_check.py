"""PoseBusters' checks for generated molecules on SDF files: the share passing every check and
each check's pass rate.

    pip install posebusters            # or: pip install 'symdiff-cli[bench]'
    python benchmarks/posebusters_check.py mols.sdf relaxed.sdf --json pb.json 2>/dev/null

Uses PoseBusters' "mol" configuration (Buttenschoen et al. 2024): the molecule loads and
sanitises, converts to InChI, is one connected fragment without radicals, has bond lengths and
angles within the bounds of distance geometry, no internal steric clash, flat aromatic rings and
double bonds, non-flat non-aromatic rings, and an energy no more than a set ratio above that of
an ensemble of RDKit conformers. A check PoseBusters could not run counts as failed. The energy
check embeds conformers for every molecule, so expect about 20 minutes per 1,000 molecules on
two cores. PoseBusters and RDKit log every molecule they cannot sanitise to stderr, hence the
2>/dev/null above; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys


def posebusters_rates(path: str) -> dict:
    """PoseBusters ("mol") on the SDF `path`: molecules, pass-all share and each check's pass rate."""
    from posebusters import PoseBusters

    table = PoseBusters(config="mol").bust(mol_pred=path, full_report=False)
    passed = table.fillna(False).astype(bool)  # one boolean column per check; None where it could not run
    return {"file": path, "molecules": len(table), "pass_all": float(passed.all(axis=1).mean()),
            "checks": {name: float(passed[name].mean()) for name in table.columns}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="SDF files")
    parser.add_argument("--json", help="also write the rates as JSON to this path")
    args = parser.parse_args()
    try:
        import posebusters  # noqa: F401
    except ImportError:
        sys.exit("PoseBusters is not installed: pip install posebusters (or pip install 'symdiff-cli[bench]')")
    results = [posebusters_rates(path) for path in args.files]
    for result in results:
        print(f"{result['file']}: {result['molecules']} molecules, pass-all {100 * result['pass_all']:.1f} %")
        for name, rate in result["checks"].items():
            print(f"  {name:32s} {100 * rate:5.1f} %")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
