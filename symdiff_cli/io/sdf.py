"""The SDF (MOL) format: read through RDKit unsanitised; written as RDKit's mol block, or a V3000
block of our own for molecules too dense for RDKit."""

from __future__ import annotations

import io

import numpy as np

from symdiff_cli.chem.elements import element_symbol
from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.perception import perceive_bonds
from symdiff_cli.chem.quiet import captured_rdkit_errors
from symdiff_cli.io.formats import (
    MAX_ATOMIC_NUMBER, STORED_COORDINATE_DECIMALS, RecordProblems, single_line, stored_positions,
)


def _unsupported_atom_reason(rd_mol) -> str | None:
    for atom in rd_mol.GetAtoms():
        z = atom.GetAtomicNum()
        if not 1 <= z <= MAX_ATOMIC_NUMBER:
            label = atom.GetSymbol() if z else "a query atom (*, R, A, ...)"
            return f"atom {atom.GetIdx() + 1} is {label}, which is not a supported element"
    return None


def parse_sdf(data: bytes, source: str, problems: RecordProblems) -> list[Molecule]:
    """SDF records through RDKit, unsanitised and with hydrogens kept, so that generated
    molecules with odd valences load as they are."""
    from rdkit import Chem

    from symdiff_cli.chem.rdkit_mol import molecule_from_rdkit

    # A trailing blank tail after the last $$$$ would read as one more (broken) record.
    data = data.rstrip() + b"\n"
    supplier = Chem.ForwardSDMolSupplier(io.BytesIO(data), removeHs=False, sanitize=False)
    molecules: list[Molecule] = []
    record_number = 0
    while True:
        with captured_rdkit_errors() as messages:
            try:
                rd_mol = next(supplier)
            except StopIteration:
                break
        record_number += 1
        if rd_mol is None:
            reason = messages[0] if messages else "RDKit could not parse it"
            problems.report(f"SDF record {record_number}", reason)
            continue
        reason = _unsupported_atom_reason(rd_mol)
        if reason is not None:
            problems.report(f"SDF record {record_number}", reason)
            continue
        molecules.append(molecule_from_rdkit(rd_mol))
    return molecules


# No real molecule has more bond rows than this per atom (sum of valences / 2 with valence
# at most 6). Atoms packed closer than bond lengths (10,000 atoms in a 10 Angstrom cube) have
# hundreds, and RDKit's ring perception on such a graph ran out of 24 GB of memory.
_MAX_BONDS_PER_ATOM = 3


def too_dense_for_rdkit(mol: Molecule, bond_rows: np.ndarray) -> bool:
    return len(bond_rows) > _MAX_BONDS_PER_ATOM * max(mol.num_atoms, 1)


def _v3000_block(mol: Molecule, bond_rows: np.ndarray) -> str:
    """A V3000 mol block written directly, for molecules RDKit cannot handle in bounded memory.

    No charges, stereo or query features. RDKit's reader rejects such a record once atoms carry
    far more bonds than any valence (it assigns chirality from 3D, which needs valences), so
    reading it back is a one-line "cannot read SDF record" error; XYZ output keeps everything.
    """
    d = STORED_COORDINATE_DECIMALS["sdf"]
    lines = [single_line(mol.props.get("name", "")), "     symdiff        3D", "",
             "  0  0  0  0  0  0  0  0  0  0999 V3000", "M  V30 BEGIN CTAB",
             f"M  V30 COUNTS {mol.num_atoms} {len(bond_rows)} 0 0 0", "M  V30 BEGIN ATOM"]
    for k, (z, (x, y, zc)) in enumerate(zip(mol.atomic_numbers.tolist(), mol.positions.tolist()), start=1):
        lines.append(f"M  V30 {k} {element_symbol(z)} {x:.{d}f} {y:.{d}f} {zc:.{d}f} 0")
    lines.append("M  V30 END ATOM")
    if len(bond_rows):
        lines.append("M  V30 BEGIN BOND")
        for k, (i, j, order) in enumerate(np.asarray(bond_rows).tolist(), start=1):
            lines.append(f"M  V30 {k} {order} {i + 1} {j + 1}")
        lines.append("M  V30 END BOND")
    lines += ["M  V30 END CTAB", "M  END"]
    for key, value in mol.props.items():
        if key != "name":
            lines += [f">  <{key}>  (1) ", single_line(value), ""]
    return "\n".join(lines) + "\n$$$$\n"


def sdf_block(mol: Molecule, bonds: str = "benchmark") -> str:
    """One SDF record (RDKit's mol block, not kekulised, never sanitised) with data tags.

    The molecule's own bonds are written if it has them, else perceived with `bonds` from the
    coordinates as the record stores them (4 decimals), so a reader perceives the same bonds;
    props["name"] is the title line and every other prop a tag. A molecule with more than
    three bonds per atom (atoms packed closer than bond lengths) is written as a V3000 block
    of our own, since RDKit's writer needs memory that grows far faster than its bonds.
    """
    from rdkit import Chem

    from symdiff_cli.chem.rdkit_mol import rdkit_mol_from_bonds

    stored = Molecule(mol.atomic_numbers, stored_positions(mol.positions, "sdf"), mol.bonds, mol.props,
                      mol.formal_charges)
    bond_rows = perceive_bonds(stored, bonds)
    if too_dense_for_rdkit(stored, bond_rows):
        return _v3000_block(stored, bond_rows)
    rd_mol = rdkit_mol_from_bonds(stored, bond_rows)
    rd_mol.SetProp("_Name", single_line(mol.props.get("name", "")))
    for key, value in mol.props.items():
        if key != "name":
            rd_mol.SetProp(str(key), str(value))
    buffer = io.StringIO()
    writer = Chem.SDWriter(buffer)
    writer.SetKekulize(False)
    writer.write(rd_mol)
    writer.close()
    return buffer.getvalue()


