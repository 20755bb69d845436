"""The SDF (MOL) format: read through RDKit unsanitised; written as RDKit's mol block, or a V3000
block of our own for molecules too dense for RDKit."""

from __future__ import annotations

import io
import re

import numpy as np

from symdiff_cli.chem.elements import element_symbol
from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.perception import perceive_bonds_and_charges
from symdiff_cli.chem.quiet import captured_rdkit_errors
from symdiff_cli.io.formats import (
    MAX_ATOMIC_NUMBER, STORED_COORDINATE_DECIMALS, RecordProblems, single_line, stored_positions,
)


def unsupported_atom_reason(rd_mol) -> str | None:
    """Why an RDKit molecule cannot be one of ours (a query or dummy atom), or None."""
    for atom in rd_mol.GetAtoms():
        z = atom.GetAtomicNum()
        if not 1 <= z <= MAX_ATOMIC_NUMBER:
            label = atom.GetSymbol() if z else "a query atom (*, R, A, ...)"
            return f"atom {atom.GetIdx() + 1} is {label}, which is not a supported element"
    return None


def parse_sdf(text: str, source: str, problems: RecordProblems) -> list[Molecule]:
    """SDF records through RDKit, unsanitised and with hydrogens kept, so that generated
    molecules with odd valences load as they are.

    Records are read by index (RDKit's SDMolSupplier finds every `$$$$` first): read in sequence,
    a record cut short before its `M  END` makes RDKit skip to the end of the record after it,
    losing a good molecule. Old Mac line ends (CR alone) are read as line ends.
    """
    from rdkit import Chem

    from symdiff_cli.chem.rdkit_mol import molecule_from_rdkit

    # A trailing blank tail after the last $$$$ would read as one more (broken) record.
    text = text.replace("\r\n", "\n").replace("\r", "\n").rstrip() + "\n"
    supplier = Chem.SDMolSupplier()
    supplier.SetData(text, sanitize=False, removeHs=False)
    molecules: list[Molecule] = []
    for index in range(len(supplier)):
        with captured_rdkit_errors() as messages:
            rd_mol = supplier[index]
        record_number = index + 1
        if rd_mol is None:
            # RDKit's own line numbers count from where it started reading, not from the file's top.
            reason = re.sub(r"\s*on line\s*\d+$", "", messages[0]) if messages else "RDKit could not parse it"
            problems.report(f"SDF record {record_number}", reason, index)
            continue
        reason = unsupported_atom_reason(rd_mol)
        molecule = molecule_from_rdkit(rd_mol) if reason is None else None
        if molecule is not None and molecule.num_atoms == 0:
            reason = "it has no atoms"
        elif molecule is not None and not np.isfinite(molecule.positions).all():
            reason = "its coordinates are not all finite numbers"
        if reason is not None:
            problems.report(f"SDF record {record_number}", reason, index)
            continue
        molecules.append(molecule)
    return molecules


def record_line(text: object) -> str:
    """`text` as one line that cannot end the record: every reader takes a line starting with
    `$$$$` (a name copied from an XYZ comment, say) for the end of the record."""
    line = single_line(text)
    return " " + line if line.startswith("$$$$") else line


def tag_value(text: object) -> str:
    """A data tag's value as lines a reader keeps within the tag: no blank line (it ends the
    tag) and no line that would end the record."""
    lines = [line.rstrip() for line in str(text).splitlines() if line.strip()]
    return "\n".join(" " + line if line.lstrip().startswith("$$$$") else line for line in lines)


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
    lines = [record_line(mol.props.get("name", "")), "     symdiff        3D", "",
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
            lines += [f">  <{single_line(key).replace('<', '(').replace('>', ')')}>  (1) ", tag_value(value), ""]
    return "\n".join(lines) + "\n$$$$\n"


def sdf_block(mol: Molecule, bonds: str = "benchmark") -> str:
    """One SDF record (RDKit's mol block, not kekulised, never sanitised) with data tags.

    The molecule's own bonds are written if it has them, else perceived with `bonds` from the
    coordinates as the record stores them (4 decimals), so a reader perceives the same bonds;
    perceived molecules have every atom explicit, so an atom short of its valence is written as
    a radical rather than left for a reader to fill with hydrogens;
    props["name"] is the title line and every other prop a tag. A molecule with more than
    three bonds per atom (atoms packed closer than bond lengths) is written as a V3000 block
    of our own, since RDKit's writer needs memory that grows far faster than its bonds.
    """
    from rdkit import Chem

    from symdiff_cli.chem.rdkit_mol import (
        mark_radicals, rdkit_mol_from_bonds, stereo_from_coordinates, without_implicit_hydrogens,
    )

    stored = Molecule(mol.atomic_numbers, stored_positions(mol.positions, "sdf"), mol.bonds, mol.props,
                      mol.formal_charges)
    bond_rows, stored.formal_charges = perceive_bonds_and_charges(stored, bonds)
    if too_dense_for_rdkit(stored, bond_rows):
        return _v3000_block(stored, bond_rows)
    rd_mol = rdkit_mol_from_bonds(stored, bond_rows)
    if mol.bonds is None:  # every atom is in the molecule: a reader must not add hydrogens
        without_implicit_hydrogens(rd_mol)
    elif mol.radicals is not None:
        mark_radicals(rd_mol, mol.radicals)
    stereo_from_coordinates(rd_mol)
    rd_mol.SetProp("_Name", record_line(mol.props.get("name", "")))
    for key, value in mol.props.items():
        if key != "name":
            rd_mol.SetProp(single_line(key).replace("<", "(").replace(">", ")"), tag_value(value))
    buffer = io.StringIO()
    writer = Chem.SDWriter(buffer)
    writer.SetKekulize(False)
    writer.write(rd_mol)
    writer.close()
    return buffer.getvalue()


