"""RDKit molecules from our Molecule plus a perceived bond-order matrix."""

from __future__ import annotations

import numpy as np
from rdkit import Chem
from rdkit.Geometry import Point3D

from symdiff_cli.io.molecule import Molecule

BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


def to_rdkit_mol(mol: Molecule, orders: np.ndarray) -> Chem.Mol:
    """An unsanitised RDKit molecule with the atoms, the bonds of `orders` and a 3D conformer.

    Atoms keep RDKit's default implicit-hydrogen handling, as in EDM's validity code
    (`build_molecule`): sanitisation may add implicit hydrogens to under-bonded atoms, while
    over-bonded atoms (pentavalent carbon) make sanitisation fail.
    """
    rw = Chem.RWMol()
    for z in mol.atomic_numbers:
        rw.AddAtom(Chem.Atom(int(z)))
    i_idx, j_idx = np.nonzero(np.triu(np.asarray(orders), k=1))
    for i, j in zip(i_idx.tolist(), j_idx.tolist()):
        order = int(orders[i, j])
        rw.AddBond(i, j, BOND_TYPES[order])
    conformer = Chem.Conformer(mol.num_atoms)
    for k, (x, y, z) in enumerate(mol.positions.tolist()):
        conformer.SetAtomPosition(k, Point3D(x, y, z))
    conformer.Set3D(True)
    out = rw.GetMol()
    out.AddConformer(conformer, assignId=True)
    return out


def canonical_smiles(mol: Chem.Mol) -> str | None:
    """Canonical SMILES of a sanitised copy of `mol`, or None when sanitisation fails."""
    copy = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(copy)
    except Exception:  # RDKit raises several unrelated classes (valence, kekulisation, ...)
        return None
    return Chem.MolToSmiles(copy)
