"""RDKit molecules from our Molecule plus bond rows or a perceived bond-order matrix."""

from __future__ import annotations

import numpy as np
from rdkit import Chem
from rdkit.Geometry import Point3D

from symdiff_cli.chem.bonds import bonds_from_matrix
from symdiff_cli.chem.quiet import captured_rdkit_errors
from symdiff_cli.errors import SymdiffError
from symdiff_cli.chem.molecule import Molecule

# Bond-row orders -> RDKit bond types; 4 is aromatic (the SDF bond code).
BOND_TYPES = {
    1: Chem.BondType.SINGLE,
    2: Chem.BondType.DOUBLE,
    3: Chem.BondType.TRIPLE,
    4: Chem.BondType.AROMATIC,
}


def rdkit_mol_from_bonds(mol: Molecule, bonds: np.ndarray) -> Chem.Mol:
    """An unsanitised RDKit molecule with our atoms (and their formal charges, if any), the
    (M, 3) bond rows (i, j, order) and a 3D conformer.

    Atoms keep RDKit's default implicit-hydrogen handling, as in EDM's validity code
    (`build_molecule`): sanitisation may add implicit hydrogens to under-bonded atoms, while
    over-bonded atoms (pentavalent carbon) make sanitisation fail. Nothing is sanitised here,
    so molecules with impossible valences still build; the property cache is updated
    non-strictly because writers need implicit-hydrogen counts. An aromatic bond (order 4)
    marks its atoms aromatic, or sanitisation could not kekulise it.
    """
    editable = Chem.RWMol()
    charges = [0] * mol.num_atoms if mol.formal_charges is None else np.asarray(mol.formal_charges).tolist()
    for z, charge in zip(mol.atomic_numbers.tolist(), charges):
        atom = Chem.Atom(int(z))
        atom.SetFormalCharge(int(charge))
        editable.AddAtom(atom)
    for i, j, order in np.asarray(bonds, dtype=np.int64).reshape(-1, 3).tolist():
        if order not in BOND_TYPES:
            raise SymdiffError(f"bond {i}-{j} has unsupported order {order} (use 1, 2, 3 or 4)")
        editable.AddBond(i, j, BOND_TYPES[order])
        if order == 4:
            editable.GetBondBetweenAtoms(i, j).SetIsAromatic(True)
            editable.GetAtomWithIdx(i).SetIsAromatic(True)
            editable.GetAtomWithIdx(j).SetIsAromatic(True)
    conformer = Chem.Conformer(mol.num_atoms)
    for k, (x, y, z) in enumerate(mol.positions.tolist()):
        conformer.SetAtomPosition(k, Point3D(x, y, z))
    conformer.Set3D(True)
    rd_mol = editable.GetMol()
    rd_mol.AddConformer(conformer, assignId=True)
    rd_mol.UpdatePropertyCache(strict=False)
    return rd_mol


def without_implicit_hydrogens(rd_mol: Chem.Mol) -> Chem.Mol:
    """`rd_mol` (changed in place) with no implicit hydrogens allowed on any atom, and a radical
    marked where an atom is short of its valence.

    For file output of molecules whose every atom is explicit (XYZ, npz, generated ones): a
    reader would otherwise fill under-bonded atoms with hydrogens that are not in the molecule
    (a 16-atom record read back as 30 atoms). The valence field and `M  RAD` lines RDKit then
    writes tell every reader the composition as it is.
    """
    for atom in rd_mol.GetAtoms():
        atom.SetNoImplicit(True)
    rd_mol.UpdatePropertyCache(strict=False)
    Chem.AssignRadicals(rd_mol)
    return rd_mol


def mark_radicals(rd_mol: Chem.Mol, radicals: np.ndarray) -> Chem.Mol:
    """`rd_mol` (changed in place) with the unpaired electrons a source file gave its atoms."""
    for atom, count in zip(rd_mol.GetAtoms(), np.asarray(radicals).tolist()):
        if count > 0:
            atom.SetNumRadicalElectrons(int(count))
            atom.SetNoImplicit(True)
    rd_mol.UpdatePropertyCache(strict=False)
    return rd_mol


def stereo_from_coordinates(rd_mol: Chem.Mol) -> Chem.Mol:
    """`rd_mol` (changed in place) with its double bonds' E/Z and its stereocentres taken from its
    3D conformer, for file output: left unassigned, RDKit writes every double bond of an SDF as
    "either" (bond stereo 3), which readers take over the coordinates, and a SMILES has no stereo.
    A molecule RDKit cannot perceive (impossible valences) is left as it was."""
    try:
        with captured_rdkit_errors():
            Chem.FastFindRings(rd_mol)
            Chem.AssignStereochemistryFrom3D(rd_mol)
    except Exception:  # RDKit raises assorted classes for impossible valences
        pass
    return rd_mol


def _radicals_of(rd_mol: Chem.Mol) -> np.ndarray | None:
    """Unpaired electrons per atom as a file gives them: `M  RAD`, or what an atom without implicit
    hydrogens lacks of its valence (RDKit assigns those only when sanitising)."""
    copy = Chem.Mol(rd_mol)
    try:
        copy.UpdatePropertyCache(strict=False)
        Chem.AssignRadicals(copy)
    except Exception:  # RDKit raises assorted classes for impossible valences
        copy = rd_mol
    radicals = np.array([atom.GetNumRadicalElectrons() for atom in copy.GetAtoms()], dtype=np.int64)
    return radicals if radicals.any() else None


def to_rdkit_mol(mol: Molecule, orders: np.ndarray) -> Chem.Mol:
    """`rdkit_mol_from_bonds` for a symmetric (N, N) bond-order matrix, as the metrics perceive it."""
    return rdkit_mol_from_bonds(mol, bonds_from_matrix(orders))


def canonical_smiles(mol: Chem.Mol) -> str | None:
    """Canonical SMILES of a sanitised copy of `mol`, or None when sanitisation fails."""
    copy = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(copy)
    except Exception:  # RDKit raises several unrelated classes (valence, kekulisation, ...)
        return None
    return Chem.MolToSmiles(copy)


def heavy_atom_smiles(smiles: str | None) -> str | None:
    """The usual hydrogen-implicit canonical SMILES ("CC=O") of a metric SMILES ("[H]C(=O)C([H])([H])[H]").

    The metrics keep every hydrogen explicit, as the benchmark protocol does; files and people
    read the implicit form. Parsing a SMILES removes explicit hydrogens by default.
    """
    if not smiles:
        return None
    parsed = Chem.MolFromSmiles(smiles)
    return Chem.MolToSmiles(parsed) if parsed is not None else None


_RDKIT_ORDER_BY_TYPE_NAME = {"SINGLE": 1, "DOUBLE": 2, "TRIPLE": 3, "AROMATIC": 4}


def bonds_from_rdkit(rd_mol) -> np.ndarray:
    """(M, 3) bond rows of an RDKit molecule; bond types we cannot express are dropped.

    Dative and other exotic bond types count as single bonds (they connect the atoms);
    zero-order bonds are left out.
    """
    rows = []
    for bond in rd_mol.GetBonds():
        name = str(bond.GetBondType()).rsplit(".", 1)[-1]
        order = _RDKIT_ORDER_BY_TYPE_NAME.get(name)
        if order is None:
            if bond.GetBondTypeAsDouble() == 0:
                continue
            order = 1
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        rows.append((min(i, j), max(i, j), order))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def molecule_from_rdkit(rd_mol) -> Molecule:
    numbers = np.array([atom.GetAtomicNum() for atom in rd_mol.GetAtoms()], dtype=np.int64)
    if rd_mol.GetNumConformers():
        positions = np.asarray(rd_mol.GetConformer().GetPositions(), dtype=np.float64)
    else:
        positions = np.zeros((len(numbers), 3))
    props = {name: rd_mol.GetProp(name) for name in rd_mol.GetPropNames()}
    title = rd_mol.GetProp("_Name").strip() if rd_mol.HasProp("_Name") else ""
    if title:
        props["name"] = title
    charges = np.array([atom.GetFormalCharge() for atom in rd_mol.GetAtoms()], dtype=np.int64)
    return Molecule(numbers, positions, bonds=bonds_from_rdkit(rd_mol), props=props,
                    formal_charges=charges if charges.any() else None, radicals=_radicals_of(rd_mol))
