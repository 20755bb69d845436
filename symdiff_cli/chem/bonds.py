"""Bond perception from 3D coordinates by the QM9/GEOM benchmark distance rules.

The rule and the tables come from the stability metric of EDM (Hoogeboom et al. 2022,
"Equivariant Diffusion for Molecule Generation in 3D"); the tables live in the packaged
`bond_rules.json`. For a pair at distance d (picometres):

    order 1 if d < single + margin_single, and inside that
    order 2 if the pair has a double entry and d < double + margin_double, and inside that
    order 3 if the pair has a triple entry and d < triple + margin_triple.

All comparisons are strict, as in the reference code; the exact benchmark numbers depend on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from symdiff_cli.chem.elements import SYMBOL_TO_Z

# Atomic numbers are looked up in tables indexed by Z; everything we know has Z <= 83.
_MAX_Z = max(SYMBOL_TO_Z.values())


@dataclass(frozen=True)
class BondRules:
    """The bond rules as dense per-atomic-number tables, built once.

    `single`, `double`, `triple` are (84, 84) float64 thresholds in pm (table length plus
    margin) indexed by atomic number; a pair without an entry holds -inf, which no distance
    is below, so it never gets that order. Row/column 0 stands for unknown elements.
    `valence[z]` is a tuple of allowed valences (empty when the element has none).
    """

    single: np.ndarray
    double: np.ndarray
    triple: np.ndarray
    valence: tuple[tuple[int, ...], ...]
    raw: dict

    def allowed_valences(self, z: int) -> tuple[int, ...]:
        z = int(z)
        return self.valence[z] if 0 <= z < len(self.valence) else ()

    def lowest_valence(self, z: int) -> int:
        """The smallest allowed valence of element z; 0 when the rules list none."""
        return min(self.allowed_valences(z) or (0,))


@lru_cache(maxsize=1)
def load_bond_rules() -> BondRules:
    """Read the packaged bond_rules.json and turn it into threshold tables (cached)."""
    text = resources.files("symdiff_cli.chem").joinpath("bond_rules.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    margins = raw["margins"]
    tables = {}
    for kind in ("single", "double", "triple"):
        table = np.full((_MAX_Z + 1, _MAX_Z + 1), -np.inf)
        for sym_a, row in raw[kind].items():
            for sym_b, length_pm in row.items():
                za, zb = SYMBOL_TO_Z[sym_a], SYMBOL_TO_Z[sym_b]
                threshold = float(length_pm + margins[kind])
                # The published tables are not fully symmetric: double C-S exists but S-C does
                # not. EDM's stability check looks up (atom_i, atom_j) in index order for QM9,
                # while its validity code sorts the pair by the dataset's atom-type index first,
                # so the two can disagree for such pairs. We make the lookup symmetric: a pair
                # gets an entry if either (a, b) or (b, a) exists. For the QM9 elements all
                # entries exist in both directions, so this reproduces both reference codes.
                # (No pair has two different values in the two directions.)
                table[za, zb] = threshold
                table[zb, za] = threshold
        tables[kind] = table
    valence: list[tuple[int, ...]] = [() for _ in range(_MAX_Z + 1)]
    for symbol, allowed in raw["allowed_valence"].items():
        valence[SYMBOL_TO_Z[symbol]] = tuple(allowed) if isinstance(allowed, list) else (int(allowed),)
    return BondRules(tables["single"], tables["double"], tables["triple"], tuple(valence), raw)


def _table_index(atomic_numbers: np.ndarray) -> np.ndarray:
    """Atomic numbers as table rows; anything outside 1..83 maps to row 0, which has no entries."""
    z = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
    return np.where((z >= 1) & (z <= _MAX_Z), z, 0)


# Pairs handled at once by the chunked functions below: a few arrays of this many float64s
# (tens of MB) instead of N x N x 3 of them, which for one 10,000-atom molecule was 24 GB.
_PAIRS_PER_CHUNK = 1 << 21


def _distances_pm(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(len(rows), len(cols)) float64 distances in picometres between two sets of positions.

    Written as sqrt(dx^2 + dy^2 + dz^2) in float64, the same arithmetic as the reference
    per-pair code, so that distances at a threshold compare the same way.
    """
    diff = rows[:, None, :] - cols[None, :, :]
    squared = diff[..., 0] ** 2 + diff[..., 1] ** 2 + diff[..., 2] ** 2
    return 100.0 * np.sqrt(squared)


def pairwise_distances_pm(positions: np.ndarray) -> np.ndarray:
    """(N, N) float64 distances in picometres (100 x Angstrom), computed per coordinate."""
    x = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    return _distances_pm(x, x)


def _row_blocks(n: int) -> list[tuple[int, int]]:
    """(start, stop) row ranges of about _PAIRS_PER_CHUNK pairs each for N atoms."""
    step = max(1, _PAIRS_PER_CHUNK // max(n, 1))
    return [(start, min(n, start + step)) for start in range(0, n, step)]


def _orders(z_rows: np.ndarray, z_cols: np.ndarray, distance: np.ndarray, rules: "BondRules") -> np.ndarray:
    rows, cols = z_rows[:, None], z_cols[None, :]
    single = distance < rules.single[rows, cols]
    double = single & (distance < rules.double[rows, cols])
    triple = double & (distance < rules.triple[rows, cols])
    return single.astype(np.int64) + double + triple


def _prepared(atomic_numbers: np.ndarray, positions: np.ndarray) -> tuple[BondRules, np.ndarray, np.ndarray, int]:
    """The rules, table rows, float64 (N, 3) positions and N of a molecule, checked to agree."""
    z = _table_index(atomic_numbers)
    x = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(x) != len(z):
        raise ValueError("atomic_numbers and positions differ in length")
    return load_bond_rules(), z, x, len(z)


def bond_order_matrix(atomic_numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Symmetric (N, N) int64 bond orders (0 none, 1 single, 2 double, 3 triple).

    Elements without a single-bond entry for a pair (unknown elements included) get order 0.
    """
    rules, z, x, n = _prepared(atomic_numbers, positions)
    orders = np.zeros((n, n), dtype=np.int64)
    # Row blocks: the temporaries stay bounded; only the result is N x N.
    for start, stop in _row_blocks(n):
        orders[start:stop] = _orders(z[start:stop], z, _distances_pm(x[start:stop], x), rules)
    np.fill_diagonal(orders, 0)
    return orders


def benchmark_bonds(atomic_numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(M, 3) int64 rows (i, j, order), i < j, by the benchmark rules, in memory that grows with
    the bonds and not with N^2: the same rows as bonds_from_matrix(bond_order_matrix(...)).

    Pairs are examined in row blocks (time still grows as N^2: about a second per ten million
    pairs), so converting a molecule of tens of thousands of atoms works in bounded memory.
    """
    rules, z, x, n = _prepared(atomic_numbers, positions)
    found = []
    for start, stop in _row_blocks(n):
        # Only pairs with j > i: columns from start + 1, then the lower part of the block masked.
        cols = slice(start + 1, n)
        orders = _orders(z[start:stop], z[cols], _distances_pm(x[start:stop], x[cols]), rules)
        i, j = np.nonzero(orders)
        j_abs = j + start + 1
        keep = j_abs > i + start
        i, j, j_abs = i[keep], j[keep], j_abs[keep]
        found.append(np.stack([i + start, j_abs, orders[i, j]], axis=1).astype(np.int64))
    if not found:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(found).reshape(-1, 3)


def bonds_from_matrix(orders: np.ndarray) -> np.ndarray:
    """(M, 3) int64 rows (i, j, order) with i < j for every non-zero entry of a bond matrix."""
    orders = np.asarray(orders)
    i, j = np.nonzero(np.triu(orders, k=1))
    return np.stack([i, j, orders[i, j]], axis=1).astype(np.int64).reshape(-1, 3)


def bond_thresholds_angstrom(atom_types: tuple[str, ...] | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The rules for a vocabulary of atom types, for smooth (differentiable) bond counting.

    Returns (K, K, 3) float64 thresholds in Angstrom for bond order >= 1, 2, 3 between types a
    and b (table length plus margin; -1 where the pair has no such order, which no distance is
    below) and the (K,) allowed valence of each type (the lowest where several are allowed, 0
    where the rules list none).
    """
    rules = load_bond_rules()
    z = [SYMBOL_TO_Z[s] for s in atom_types]
    thresholds = np.full((len(z), len(z), 3), -1.0)
    for a, za in enumerate(z):
        for b, zb in enumerate(z):
            for k, table in enumerate((rules.single, rules.double, rules.triple)):
                if np.isfinite(table[za, zb]):
                    thresholds[a, b, k] = table[za, zb] / 100.0
    valences = np.array([float(rules.lowest_valence(zi)) for zi in z])
    return thresholds, valences
