"""What the molecule report shows of one set of molecules, gathered in one pass.

Everything is kept as counts in plain dicts and lists so that a set's statistics can be cached
as JSON (the QM9 reference, reference.py) and compared with another set's by normalising at
plot time. The bonds are perceived exactly as the metrics perceive them (chem/bonds.py), so a
bond-length histogram and the stability numbers speak of the same bonds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rdkit import Chem

from symdiff_cli.chem.bonds import bond_order_matrix, load_bond_rules, pairwise_distances_pm
from symdiff_cli.chem.elements import SYMBOL_TO_Z, element_symbol
from symdiff_cli.chem.metrics import EvaluationResult, MoleculeReport, stable_atoms
from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.rdkit_mol import to_rdkit_mol

# The bond types plotted one by one; every other element pair is pooled as "rest".
BOND_TYPES = ("C-C", "C-H", "C-N", "C-O", "N-H", "O-H", "rest")
# Pairs closer than this are histogrammed whether or not the rules bond them: the near misses
# just past a threshold are what turns a molecule unstable, and they would be invisible in a
# histogram of perceived bonds alone. 2 Angstrom stays below the 1-3 distances of C, N and O.
DISTANCE_MIN, DISTANCE_MAX, DISTANCE_BIN = 0.6, 2.0, 0.01
DISTANCE_EDGES = np.round(np.arange(DISTANCE_MIN, DISTANCE_MAX + DISTANCE_BIN / 2, DISTANCE_BIN), 4)
FAILURES = ("stable", "composition", "geometry")
# Bump when what is gathered changes, so that cached reference statistics are rebuilt.
STATS_VERSION = 1


def _pair_type_table() -> np.ndarray:
    """(84, 84) index into BOND_TYPES for a pair of atomic numbers (the last index: rest)."""
    table = np.full((len(load_bond_rules().valence),) * 2, len(BOND_TYPES) - 1, dtype=np.int64)
    for k, name in enumerate(BOND_TYPES[:-1]):
        a, b = (SYMBOL_TO_Z[s] for s in name.split("-"))
        table[a, b] = table[b, a] = k
    return table


def bond_thresholds(bond_type: str) -> dict[str, float]:
    """The benchmark's distance thresholds (Angstrom, table length plus margin) of a bond type:
    below 'single' a pair is bonded, below 'double' doubly, below 'triple' triply."""
    if bond_type == "rest":
        return {}
    rules = load_bond_rules()
    a, b = (SYMBOL_TO_Z[s] for s in bond_type.split("-"))
    out = {}
    for name, table in (("single", rules.single), ("double", rules.double), ("triple", rules.triple)):
        if np.isfinite(table[a, b]):
            out[name] = float(table[a, b]) / 100.0
    return out


@dataclass
class SetStats:
    """The report's statistics of one set of molecules (counts; JSON-ready via to_json)."""

    name: str
    metrics: dict[str, Any]  # EvaluationResult.as_dict(): counts and fractions
    bond_hist: dict[str, list[int]]  # bond type -> pair counts per DISTANCE_EDGES bin
    atom_counts: dict[int, int]  # atoms per molecule -> molecules
    elements: dict[str, int]  # element -> atoms
    ring_sizes: dict[int, int]  # ring size (smallest set of smallest rings) -> rings
    unstable: dict[str, dict[int, int]]  # element -> bond-order sum -> unstable atoms
    failures: dict[str, int]  # stable / composition / geometry -> molecules
    odd_electrons: int  # molecules with an odd electron count
    with_isolated_atoms: int  # molecules with at least one atom without a bond
    hydrogen_balance: dict[int, int] = field(default_factory=dict)  # of unstable molecules
    version: int = STATS_VERSION

    @property
    def num_molecules(self) -> int:
        return int(self.metrics["counts"]["molecules"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "SetStats":
        # JSON turns integer dict keys into strings; they are turned back here.
        ints = lambda d: {int(k): int(v) for k, v in d.items()}  # noqa: E731
        return cls(
            name=raw["name"], metrics=raw["metrics"], bond_hist=raw["bond_hist"],
            atom_counts=ints(raw["atom_counts"]), elements={k: int(v) for k, v in raw["elements"].items()},
            ring_sizes=ints(raw["ring_sizes"]), unstable={e: ints(d) for e, d in raw["unstable"].items()},
            failures=raw["failures"], odd_electrons=raw["odd_electrons"],
            with_isolated_atoms=raw["with_isolated_atoms"], hydrogen_balance=ints(raw["hydrogen_balance"]),
            version=raw.get("version", 0),
        )


class _Accumulator:
    """Per-molecule facts added up; the distances are binned once at the end (one histogram per
    type over all pairs is far cheaper than one per molecule)."""

    def __init__(self) -> None:
        self.pair_types: list[np.ndarray] = []
        self.distances: list[np.ndarray] = []
        self.elements: Counter[int] = Counter()
        self.rings: Counter[int] = Counter()
        self.unstable: Counter[tuple[int, int]] = Counter()
        self.type_table = _pair_type_table()

    def add(self, mol: Molecule) -> None:
        z = np.asarray(mol.atomic_numbers, dtype=np.int64)
        n = len(z)
        if n == 0:
            return
        self.elements.update(z.tolist())
        orders = bond_order_matrix(z, mol.positions)
        valence = orders.sum(axis=1)
        unstable = ~stable_atoms(z, orders)
        self.unstable.update(zip(z[unstable].tolist(), valence[unstable].tolist()))
        if n > 1:
            i, j = np.triu_indices(n, 1)
            d = pairwise_distances_pm(mol.positions)[i, j] / 100.0
            near = d < DISTANCE_MAX
            zi = np.clip(z[i[near]], 0, len(self.type_table) - 1)
            zj = np.clip(z[j[near]], 0, len(self.type_table) - 1)
            self.pair_types.append(self.type_table[zi, zj])
            self.distances.append(d[near])
            # Rings of the perceived bond graph; RDKit finds them without sanitising, so invalid
            # molecules count too (a three-ring of carbons is worth seeing even when over-bonded).
            rdmol = to_rdkit_mol(mol, orders)
            self.rings.update(len(ring) for ring in Chem.GetSymmSSSR(rdmol))

    def bond_hist(self) -> dict[str, list[int]]:
        types = np.concatenate(self.pair_types) if self.pair_types else np.zeros(0, dtype=np.int64)
        dist = np.concatenate(self.distances) if self.distances else np.zeros(0)
        out = {}
        for k, name in enumerate(BOND_TYPES):
            counts, _ = np.histogram(dist[types == k], bins=DISTANCE_EDGES)
            out[name] = counts.astype(int).tolist()
        return out


def _symbol(z: int) -> str:
    return element_symbol(z) if 1 <= z <= 83 else f"Z={z}"


def collect_stats(name: str, molecules: Sequence[Molecule], reports: Sequence[MoleculeReport],
                  result: EvaluationResult, advance: Callable[[int], None] | None = None) -> SetStats:
    """The statistics of `molecules`, whose metric `reports` and summary `result` are given
    (the evaluation has been done once already; only the report's extra facts are computed).
    `advance(1)` is called after each molecule, for a progress bar the caller owns."""
    if len(molecules) != len(reports):
        raise ValueError("one report per molecule expected")
    acc = _Accumulator()
    for mol in molecules:
        acc.add(mol)
        if advance is not None:
            advance(1)
    unstable: dict[str, dict[int, int]] = {}
    for (z, valence), count in sorted(acc.unstable.items()):
        unstable.setdefault(_symbol(z), {})[int(valence)] = int(count)
    return SetStats(
        name=name,
        metrics=result.as_dict(),
        bond_hist=acc.bond_hist(),
        atom_counts=dict(sorted(Counter(int(r.num_atoms) for r in reports).items())),
        elements={_symbol(z): int(c) for z, c in sorted(acc.elements.items())},
        ring_sizes=dict(sorted(acc.rings.items())),
        unstable=unstable,
        failures={f: sum(r.failure == f for r in reports) for f in FAILURES},
        odd_electrons=sum(bool(r.odd_electrons) for r in reports),
        with_isolated_atoms=sum(r.isolated_atoms > 0 for r in reports),
        hydrogen_balance=dict(sorted(Counter(int(r.hydrogen_balance) for r in reports if not r.stable).items())),
    )


def _add_counts(target: dict, source: dict) -> None:
    for key, value in source.items():
        target[key] = target.get(key, 0) + value


def merge_stats(name: str, parts: Sequence[SetStats], metrics: dict[str, Any]) -> SetStats:
    """The statistics of several sets taken together (their counts added); `metrics` is the
    pooled evaluation's as_dict(), since uniqueness and novelty do not add up."""
    merged = SetStats(name, metrics, {t: [0] * (len(DISTANCE_EDGES) - 1) for t in BOND_TYPES}, {}, {}, {}, {},
                      {f: 0 for f in FAILURES}, 0, 0, {})
    for part in parts:
        for bond_type, counts in part.bond_hist.items():
            merged.bond_hist[bond_type] = [a + b for a, b in zip(merged.bond_hist[bond_type], counts)]
        for mine, theirs in ((merged.atom_counts, part.atom_counts), (merged.elements, part.elements),
                             (merged.ring_sizes, part.ring_sizes), (merged.failures, part.failures),
                             (merged.hydrogen_balance, part.hydrogen_balance)):
            _add_counts(mine, theirs)
        for element, by_valence in part.unstable.items():
            _add_counts(merged.unstable.setdefault(element, {}), by_valence)
        merged.odd_electrons += part.odd_electrons
        merged.with_isolated_atoms += part.with_isolated_atoms
    return merged


__all__ = ["BOND_TYPES", "DISTANCE_EDGES", "FAILURES", "SetStats", "bond_thresholds", "collect_stats", "merge_stats"]
