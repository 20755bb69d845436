"""Why a molecule is unstable: its composition, or its geometry.

Stability (chem/metrics.py) asks every atom's perceived bond-order sum to equal its allowed
valence. Whether that is possible at all depends on the elements alone: the bond orders of a
molecule sum to half the sum of its atoms' valences, so that sum must be even. For the QM9
elements (H 1, C 4, N 3, O 2, F 1) an odd valence sum is the same as an odd number of
electrons (H, N and F have odd atomic numbers and odd valences): a radical, which no geometry
can make stable under the benchmark's rules. Such a molecule has a *composition* failure; an
unstable molecule whose composition allows a stable bonding has a *geometry* failure (bond
lengths perceived wrong).

The hydrogen balance says which way a composition is off: the hydrogens a molecule has minus
the hydrogens its heavy atoms need once their perceived bonds to each other are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from symdiff_cli.chem.bonds import load_bond_rules

HYDROGEN = 1


@dataclass(frozen=True)
class CompositionCheck:
    """Composition facts of one molecule (see the module docstring)."""

    electrons: int
    odd_electrons: bool
    feasible: bool
    hydrogens: int
    hydrogen_balance: int
    isolated_atoms: int


def _valence_parities(z: int) -> set[int]:
    """Parities (0 even, 1 odd) the allowed valences of element z can take; empty if it has none."""
    return {v % 2 for v in load_bond_rules().allowed_valences(z)}


def composition_feasible(atomic_numbers: np.ndarray) -> bool:
    """True when some bonding of these atoms gives every atom an allowed valence.

    Necessary conditions that are also sufficient for the benchmark's multigraphs in practice:
    every element has an allowed valence, the valences can sum to an even number, and no atom
    needs more bonds than all the others together can give it.
    """
    z = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
    if len(z) == 0:
        return False
    rules = load_bond_rules()
    parity_fixed = 0
    parity_free = False
    lowest = []
    for zi in z:
        parities = _valence_parities(int(zi))
        if not parities:
            return False
        if len(parities) == 2:
            parity_free = True
        else:
            parity_fixed += next(iter(parities))
        lowest.append(rules.lowest_valence(int(zi)))
    if parity_fixed % 2 and not parity_free:
        return False
    lowest_arr = np.asarray(lowest)
    return bool(2 * lowest_arr.max() <= lowest_arr.sum())


def check_composition(atomic_numbers: np.ndarray, orders: np.ndarray) -> CompositionCheck:
    """Electron parity, feasibility, hydrogen balance and isolated atoms of one molecule.

    `orders` is the (N, N) perceived bond-order matrix (chem/bonds.py). The hydrogens a heavy
    atom needs are its (lowest) allowed valence minus its bond orders to other heavy atoms,
    never below zero.
    """
    z = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
    orders = np.asarray(orders)
    rules = load_bond_rules()
    heavy = z != HYDROGEN
    heavy_orders = orders[np.ix_(heavy, heavy)].sum(axis=1) if heavy.any() else np.zeros(0, dtype=np.int64)
    valences = np.array([rules.lowest_valence(int(zi)) for zi in z[heavy]], dtype=np.int64)
    needed = int(np.clip(valences - heavy_orders, 0, None).sum())
    hydrogens = int((~heavy).sum())
    return CompositionCheck(
        electrons=int(z.sum()),
        odd_electrons=bool(z.sum() % 2),
        feasible=composition_feasible(z),
        hydrogens=hydrogens,
        hydrogen_balance=hydrogens - needed,
        isolated_atoms=int((orders.sum(axis=1) == 0).sum()) if len(z) > 1 else 0,
    )


def failure_cause(stable: bool, check: CompositionCheck) -> str:
    """'stable', 'composition' (no geometry can make it stable) or 'geometry'."""
    if stable:
        return "stable"
    return "geometry" if check.feasible else "composition"
