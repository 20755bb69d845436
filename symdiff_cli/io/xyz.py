"""The XYZ format: a count line, a comment line (props["name"]), one `element x y z` line an atom."""

from __future__ import annotations

import numpy as np

from symdiff_cli.chem.elements import atomic_number, element_symbol
from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.formats import MAX_ATOMIC_NUMBER, STORED_COORDINATE_DECIMALS, RecordProblems, single_line


def _short(line: str, limit: int = 60) -> str:
    line = line.rstrip("\r\n")
    return repr(line if len(line) <= limit else line[:limit] + "...")


def _parse_xyz_element(token: str, source: str, line_number: int) -> int:
    """An element symbol or atomic number from an XYZ atom line."""
    if token.isdigit():
        z = int(token)
        if not 1 <= z <= MAX_ATOMIC_NUMBER:
            raise SymdiffError(f"{source}, line {line_number}: unknown atomic number {z}")
        return z
    try:
        return atomic_number(token)
    except SymdiffError:
        raise SymdiffError(f"{source}, line {line_number}: unknown element {token!r}") from None


def _record_atoms(lines: list[str], first_atom_index: int, atom_count: int,
                  source: str) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers and positions of one record's atom lines; a SymdiffError names a bad line."""
    numbers = np.empty(atom_count, dtype=np.int64)
    positions = np.empty((atom_count, 3), dtype=np.float64)
    for k in range(atom_count):
        line_number = first_atom_index + k + 1
        fields = lines[first_atom_index + k].split()
        if len(fields) < 4:
            raise SymdiffError(
                f"{source}, line {line_number}: expected 'element x y z', "
                f"got {_short(lines[first_atom_index + k])}"
            )
        try:
            coordinates = [float(value) for value in fields[1:4]]
        except ValueError:
            coordinates = None
        if coordinates is None or not all(np.isfinite(coordinates)):
            raise SymdiffError(
                f"{source}, line {line_number}: expected 'element x y z' with numeric "
                f"coordinates, got {_short(lines[first_atom_index + k])}"
            )
        numbers[k] = _parse_xyz_element(fields[0], source, line_number)
        positions[k] = coordinates
    return numbers, positions


def parse_xyz(text: str, source: str, problems: RecordProblems | None = None) -> list[Molecule]:
    """Molecules of a (multi-molecule) XYZ text; blank lines between molecules are allowed.

    Atom lines are `element x y z`; further columns (charges, forces of extended XYZ) are
    ignored. A record with a malformed atom line, or with no atoms, is reported to `problems`
    (skipped and counted, or an error in strict mode; always an error without `problems`): its
    count line still says where the next record starts. A malformed count line, or a file that
    ends inside a record, leaves no way to find the next record and is an error naming its line.
    """
    problems = problems if problems is not None else RecordProblems(source, strict=True)
    lines = text.splitlines()
    molecules: list[Molecule] = []
    index = 0
    position = -1
    while index < len(lines):
        if not lines[index].strip():
            index += 1
            continue
        position += 1
        count_line_number = index + 1
        count_text = lines[index].strip()
        try:
            atom_count = int(count_text)
        except ValueError:
            raise SymdiffError(
                f"{source}, line {count_line_number}: expected the atom count of a molecule, "
                f"got {_short(lines[index])}"
            ) from None
        if atom_count < 0:
            raise SymdiffError(f"{source}, line {count_line_number}: negative atom count {atom_count}")
        first_atom_index = index + 2
        if first_atom_index + atom_count > len(lines):
            raise SymdiffError(
                f"{source}, line {len(lines) + 1}: file ends inside the molecule starting at line "
                f"{count_line_number}, which announces {atom_count} atoms"
            )
        comment = lines[index + 1].strip()
        index = first_atom_index + atom_count
        what = f"the molecule at line {count_line_number}"
        if atom_count == 0:
            problems.report(what, "it has no atoms", position)
            continue
        try:
            numbers, positions = _record_atoms(lines, first_atom_index, atom_count, source)
        except SymdiffError as err:
            if problems.strict:
                raise
            problems.report(what, str(err).removeprefix(f"{source}, "), position)
            continue
        props = {"name": comment} if comment else {}
        molecules.append(Molecule(numbers, positions, props=props))
    return molecules


def xyz_block(mol: Molecule) -> str:
    """One XYZ record: count, comment (props["name"]) and atoms with 8 decimals."""
    d = STORED_COORDINATE_DECIMALS["xyz"]
    lines = [str(mol.num_atoms), single_line(mol.props.get("name", ""))]
    for z, (x, y, zc) in zip(mol.atomic_numbers.tolist(), mol.positions.tolist()):
        lines.append(f"{element_symbol(z):<2} {x:16.{d}f} {y:16.{d}f} {zc:16.{d}f}")
    return "\n".join(lines) + "\n"


