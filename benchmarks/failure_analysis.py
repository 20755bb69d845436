"""Why generated atoms are unstable: valence per element and bond-length spread, against QM9.

Bonds are perceived by the benchmark rules (the ones `symdiff evaluate` uses). Prints, for
each SDF given and for a sample of the QM9 test split:

- the share of each element's atoms per bond-order sum (valence), so under- and over-bonded
  heavy atoms can be told apart;
- the share of C-C and C-H pairs per distance bin (Å), over pairs closer than 2 Å, which shows
  how sharp the bond lengths are;
- composition against geometry (chem/composition.py): how many unstable molecules no geometry
  could make stable (an odd electron count), with their hydrogen balance (hydrogens minus what
  the heavy atoms' perceived skeleton needs) and atoms with no bond, and how many have a
  composition that allows a stable bonding but the wrong bond lengths.

    python benchmarks/failure_analysis.py mols.sdf [more.sdf ...] --reference 1000
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from symdiff_cli.chem.bonds import bond_order_matrix, pairwise_distances_pm
from symdiff_cli.chem.elements import element_symbol
from symdiff_cli.chem.metrics import MoleculeReport, evaluate_molecule
from symdiff_cli.io.reader import read_molecules
from symdiff_cli.io.molecule import Molecule

PAIR_BINS = {
    ("C", "C"): [0.0, 1.30, 1.38, 1.45, 1.50, 1.56, 1.60, 1.64, 1.70, 2.00],
    ("C", "H"): [0.0, 1.00, 1.06, 1.08, 1.10, 1.12, 1.14, 2.00],
}
HEAVY = ("C", "N", "O", "F")


def valence_shares(mols: list[Molecule]) -> dict[str, Counter]:
    """Per element symbol: Counter of bond-order sums over all its atoms."""
    shares: dict[str, Counter] = {}
    for mol in mols:
        valence = bond_order_matrix(mol.atomic_numbers, mol.positions).sum(axis=1)
        for z, v in zip(mol.atomic_numbers, valence):
            shares.setdefault(element_symbol(int(z)), Counter())[int(v)] += 1
    return shares


def pair_distances(mols: list[Molecule], pair: tuple[str, str], cutoff: float = 2.0) -> np.ndarray:
    """Distances (Å) of all pairs of the two elements closer than `cutoff`, over all molecules."""
    found = []
    for mol in mols:
        symbols = np.array([element_symbol(int(z)) for z in mol.atomic_numbers])
        d = pairwise_distances_pm(mol.positions) / 100.0
        a, b = symbols == pair[0], symbols == pair[1]
        mask = np.triu(np.ones_like(d, dtype=bool), k=1) & ((a[:, None] & b[None, :]) | (b[:, None] & a[None, :]))
        found.append(d[mask & (d < cutoff)])
    return np.concatenate(found) if found else np.zeros(0)


def composition_table(reports: list[MoleculeReport]) -> list[tuple[str, int, str]]:
    """Rows (label, count, share) of the composition-against-geometry breakdown."""
    n = len(reports)
    unstable = [r for r in reports if not r.stable]
    composition = [r for r in unstable if r.failure == "composition"]
    geometry = [r for r in unstable if r.failure == "geometry"]

    def row(label: str, count: int, of: int) -> tuple[str, int, str]:
        return label, count, f"{100 * count / of:.1f} % of {of}" if of else "-"

    return [
        row("stable", n - len(unstable), n),
        row("unstable", len(unstable), n),
        row("  composition (no geometry can make it stable)", len(composition), len(unstable)),
        row("    of which odd electron count", sum(r.odd_electrons for r in composition), len(composition)),
        row("    hydrogen deficit (balance < 0)", sum(r.hydrogen_balance < 0 for r in composition), len(composition)),
        row("    hydrogen excess (balance > 0)", sum(r.hydrogen_balance > 0 for r in composition), len(composition)),
        row("  geometry (composition allows a stable bonding)", len(geometry), len(unstable)),
        row("    with an atom with no bond", sum(r.isolated_atoms > 0 for r in geometry), len(geometry)),
        row("    hydrogen balance != 0", sum(r.hydrogen_balance != 0 for r in geometry), len(geometry)),
        row("stable with an odd electron count", sum(r.odd_electrons for r in reports if r.stable), n - len(unstable)),
    ]


def print_report(name: str, mols: list[Molecule]) -> None:
    print(f"\n== {name}: {len(mols)} molecules")
    for label, count, share in composition_table([evaluate_molecule(m) for m in mols]):
        print(f"  {label:<52} {count:>6}  {share}")
    shares = valence_shares(mols)
    for symbol in ("H", *HEAVY):
        counts = shares.get(symbol)
        if not counts:
            continue
        total = sum(counts.values())
        cells = "  ".join(f"{v}: {100 * c / total:5.1f}%" for v, c in sorted(counts.items()))
        print(f"  {symbol} valence ({total} atoms)  {cells}")
    for pair, edges in PAIR_BINS.items():
        d = pair_distances(mols, pair)
        hist, _ = np.histogram(d, bins=edges)
        share = 100 * hist / max(len(d), 1)
        cells = "  ".join(f"{lo:.2f}-{hi:.2f}: {s:4.1f}" for lo, hi, s in zip(edges[:-1], edges[1:], share))
        print(f"  {pair[0]}-{pair[1]} pairs < 2 Å ({len(d)})  {cells}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sdf", nargs="+", help="generated molecules (any format `symdiff evaluate` reads)")
    ap.add_argument("--reference", type=int, default=1000,
                    help="how many QM9 test molecules to analyse beside them (0: none)")
    args = ap.parse_args()
    for path in args.sdf:
        mols, _ = read_molecules(path)
        print_report(path, mols)
    if args.reference:
        from symdiff_cli.data.qm9 import qm9_split

        test = qm9_split("test")
        rng = np.random.default_rng(0)
        picks = rng.choice(len(test), size=min(args.reference, len(test)), replace=False)
        print_report(f"QM9 test ({len(picks)} random)", [test.molecule(int(k)) for k in picks])


if __name__ == "__main__":
    main()
