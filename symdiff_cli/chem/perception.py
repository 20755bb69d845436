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


def _rdkit_perceived(mol: Molecule) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(bonds, formal charges or None) from RDKit's rdDetermineBonds, or None when RDKit cannot
    perceive the molecule.

    Connectivity comes from covalent radii (DetermineConnectivity); bond orders are then
    assigned for a molecule of net charge zero whose parts may be charged (DetermineBondOrders,
    xyz2mol), so a zwitterion gets its charges. When no consistent orders exist, as for many
    imperfect generated molecules, the bonds stay single and no charges are assigned.
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
                with_orders, charge=0, allowChargedFragments=True, embedChiral=False,
                maxIterations=_RDKIT_BOND_ORDER_MAX_ITERATIONS,
            )
    except Exception:
        return bonds_from_rdkit(connected), None
    charges = np.array([atom.GetFormalCharge() for atom in with_orders.GetAtoms()], dtype=np.int64)
    return bonds_from_rdkit(with_orders), (charges if charges.any() else None)


def perceive_bonds_and_charges(mol: Molecule, method: str = "benchmark") -> tuple[np.ndarray, np.ndarray | None]:
    """`perceive_bonds`, with the formal charges that go with the bonds: the molecule's own, or
    those RDKit assigned (method "rdkit"; the benchmark rules assign none)."""
    if method not in BOND_METHODS:
        raise SymdiffError(f"unknown bond perception {method!r} (choose from {', '.join(BOND_METHODS)})")
    if mol.bonds is not None:
        return np.asarray(mol.bonds, dtype=np.int64).reshape(-1, 3), mol.formal_charges
    if method == "rdkit":
        perceived = _rdkit_perceived(mol)
        if perceived is not None:
            return perceived
    return _benchmark_bonds(mol), mol.formal_charges


def perceive_bonds(mol: Molecule, method: str = "benchmark") -> np.ndarray:
    """The molecule's own bonds if it has them, else bonds perceived from its 3D coordinates.

    method "benchmark": the QM9/GEOM stability-metric distance rules (orders 1 to 3).
    method "rdkit": RDKit's rdDetermineBonds: DetermineConnectivity (covalent radii), then
    DetermineBondOrders for a molecule of net charge zero; bonds stay single where no consistent
    orders exist. When RDKit cannot perceive a molecule at all, the benchmark rules are used for it.
    """
    return perceive_bonds_and_charges(mol, method)[0]
