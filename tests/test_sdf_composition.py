"""SDF and SMILES files say what the molecule is: a reader gets the atoms we wrote (no hydrogens
filled in), and `--bonds rdkit` gives aromatic rings and zwitterions as a chemist writes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Chem.rdMolDescriptors import CalcMolFormula

from cli_helpers import run_cli as cli  # tests/, beside this file


def write_xyz(path: Path, smiles: str, name: str) -> Path:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    AllChem.MMFFOptimizeMolecule(mol)
    rows = [f"{atom.GetSymbol()} {x:.5f} {y:.5f} {z:.5f}"
            for atom, (x, y, z) in zip(mol.GetAtoms(), mol.GetConformer().GetPositions())]
    path.write_text(f"{len(rows)}\n{name}\n" + "\n".join(rows) + "\n")
    return path


def read_with_rdkit(path: Path) -> Chem.Mol:
    mols = list(Chem.SDMolSupplier(str(path), removeHs=False))
    assert len(mols) == 1 and mols[0] is not None, path.read_text()
    return mols[0]


def convert(capfd, source: Path, target: Path, *options: str) -> None:
    code, _, err = cli(capfd, "convert", str(source), str(target), *options)
    assert code == 0, err


@pytest.fixture
def benzene_xyz(tmp_path) -> Path:
    return write_xyz(tmp_path / "benzene.xyz", "c1ccccc1", "benzene")


def test_benchmark_bonds_keep_the_composition_a_reader_sees(tmp_path, capfd, benzene_xyz):
    # The metric's distance rules read benzene's 1.39 A bonds as single; a reader must not then
    # add six hydrogens (it read C6H12 before): the short atoms are radicals.
    convert(capfd, benzene_xyz, tmp_path / "b.sdf")
    read = read_with_rdkit(tmp_path / "b.sdf")
    assert CalcMolFormula(read) == "C6H6"
    assert read.GetNumAtoms() == 12
    assert sum(atom.GetNumRadicalElectrons() for atom in read.GetAtoms()) == 6

    convert(capfd, tmp_path / "b.sdf", tmp_path / "again.sdf")  # the radicals survive a round trip
    assert CalcMolFormula(read_with_rdkit(tmp_path / "again.sdf")) == "C6H6"


def test_rdkit_bonds_give_an_aromatic_ring(tmp_path, capfd, benzene_xyz):
    convert(capfd, benzene_xyz, tmp_path / "b.sdf", "--bonds", "rdkit")
    read = read_with_rdkit(tmp_path / "b.sdf")
    assert Chem.MolToSmiles(Chem.RemoveHs(read)) == "c1ccccc1"
    convert(capfd, benzene_xyz, tmp_path / "b.smi", "--bonds", "rdkit")
    assert (tmp_path / "b.smi").read_text() == "c1ccccc1 benzene\n"


def test_rdkit_bonds_keep_a_zwitterions_charges(tmp_path, capfd):
    glycine = write_xyz(tmp_path / "gly.xyz", "[NH3+]CC(=O)[O-]", "glycine")
    convert(capfd, glycine, tmp_path / "gly.sdf", "--bonds", "rdkit")
    read = read_with_rdkit(tmp_path / "gly.sdf")  # sanitised: a neutral four-bonded N would fail
    assert Chem.MolToSmiles(Chem.RemoveHs(read)) == "[NH3+]CC(=O)[O-]"
    assert sorted(atom.GetFormalCharge() for atom in read.GetAtoms() if atom.GetFormalCharge()) == [-1, 1]
    convert(capfd, glycine, tmp_path / "gly.smi", "--bonds", "rdkit")
    assert (tmp_path / "gly.smi").read_text() == "[NH3+]CC(=O)[O-] glycine\n"


def test_a_stable_molecule_is_written_as_before(tmp_path, capfd):
    # Every atom at its valence: no radicals, and the SDF sanitises as the molecule it is.
    ethanol = write_xyz(tmp_path / "ethanol.xyz", "CCO", "ethanol")
    convert(capfd, ethanol, tmp_path / "e.sdf")
    read = read_with_rdkit(tmp_path / "e.sdf")
    assert CalcMolFormula(read) == "C2H6O"
    assert not any(atom.GetNumRadicalElectrons() for atom in read.GetAtoms())
    assert "M  RAD" not in (tmp_path / "e.sdf").read_text()
