"""Shared fixtures: a small real-chemistry dataset made with RDKit (no QM9 needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from symdiff_cli.io.molecule import Molecule, PackedMolecules

SHARED = Path(__file__).resolve().parents[2] / "shared"

# 32 small molecules over H, C, N, O, F: enough for overfitting and resume tests.
SMALL_SMILES = [
    "C", "N", "O", "CC", "CO", "CN", "C=O", "C#N", "CCO", "CCN", "CC=O", "OCO", "C#C", "CCC", "COC", "NC=O",
    "CC#N", "OC=O", "C1CC1", "CCCO", "CC(C)O", "C1CO1", "NCC=O", "CC(=O)C", "FC", "FCC", "OCCO", "CCCC",
    "C1CCC1", "CN(C)C", "CC(N)=O", "C=CC",
]


def embed_smiles(smiles: list[str]) -> PackedMolecules:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mols = []
    for i, s in enumerate(smiles):
        m = Chem.AddHs(Chem.MolFromSmiles(s))
        AllChem.EmbedMolecule(m, randomSeed=i + 1)
        AllChem.MMFFOptimizeMolecule(m)
        mols.append(Molecule([a.GetAtomicNum() for a in m.GetAtoms()], m.GetConformer().GetPositions()))
    return PackedMolecules.from_molecules(mols)


@pytest.fixture(scope="session")
def small_packed() -> PackedMolecules:
    return embed_smiles(SMALL_SMILES)


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory, small_packed) -> Path:
    path = tmp_path_factory.mktemp("data") / "small32.npz"
    np.savez(path, positions=small_packed.positions, atomic_numbers=small_packed.atomic_numbers,
             num_atoms=small_packed.num_atoms)
    return path
