"""Bonds from 3D coordinates, for molecules read without them (XYZ, npz, generated ones).

Two methods: the benchmark distance rules of the stability metric (`bonds="benchmark"`, in
chem/bonds.py) or RDKit's rdDetermineBonds (`bonds="rdkit"`).
"""

from __future__ import annotations

import numpy as np

from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.quiet import captured_rdkit_errors
from symdiff_cli.errors import SymdiffError

BOND_METHODS = ("benchmark", "rdkit")

# Bound on RDKit's bond-order search (xyz2mol), which is exponential in bad cases.
_RDKIT_BOND_ORDER_MAX_ITERATIONS = 10000


def _benchmark_bonds(mol: Molecule) -> np.ndarray:
    from symdiff_cli.chem.bonds import benchmark_bonds

    return benchmark_bonds(mol.atomic_numbers, mol.positions)


def _rdkit_perceived_bonds(mol: Molecule) -> np.ndarray | None:
    """Bonds from RDKit's rdDetermineBonds, or None when RDKit cannot perceive the molecule.

    Connectivity comes from covalent radii (DetermineConnectivity); bond orders are then
    assigned for a neutral molecule (DetermineBondOrders, xyz2mol). When no consistent
    orders exist, as for many imperfect generated molecules, the bonds stay single.
    """
    from rdkit import Chem

    from symdiff_cli.chem.rdkit_mol import bonds_from_rdkit, rdkit_mol_from_bonds

    try:
        from rdkit.Chem import rdDetermineBonds
    except ImportError:
        return None
    connected = Chem.RWMol(rdkit_mol_from_bonds(mol, np.zeros((0, 3), dtype=np.int64)))
    try:
        with captured_rdkit_errors():
            rdDetermineBonds.DetermineConnectivity(connected)
    except Exception:  # RDKit raises assorted classes (missing radii, bad input)
        return None
    with_orders = Chem.RWMol(connected)
    try:
        with captured_rdkit_errors():
            # The iteration cap keeps large or odd molecules from searching for minutes.
            rdDetermineBonds.DetermineBondOrders(
                with_orders, charge=0, allowChargedFragments=False, embedChiral=False,
                maxIterations=_RDKIT_BOND_ORDER_MAX_ITERATIONS,
            )
    except Exception:
        return bonds_from_rdkit(connected)
    return bonds_from_rdkit(with_orders)


def perceive_bonds(mol: Molecule, method: str = "benchmark") -> np.ndarray:
    """The molecule's own bonds if it has them, else bonds perceived from its 3D coordinates.

    method "benchmark": the QM9/GEOM stability-metric distance rules (orders 1 to 3).
    method "rdkit": RDKit's rdDetermineBonds: DetermineConnectivity (covalent radii), then
    DetermineBondOrders for a neutral molecule; bonds stay single where no consistent orders
    exist. When RDKit cannot perceive a molecule at all, the benchmark rules are used for it.
    """
    if method not in BOND_METHODS:
        raise SymdiffError(f"unknown bond perception {method!r} (choose from {', '.join(BOND_METHODS)})")
    if mol.bonds is not None:
        return np.asarray(mol.bonds, dtype=np.int64).reshape(-1, 3)
    if method == "rdkit":
        bonds = _rdkit_perceived_bonds(mol)
        if bonds is not None:
            return bonds
    return _benchmark_bonds(mol)
