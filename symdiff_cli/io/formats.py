"""Reading and writing molecule files: XYZ, SDF, SMILES and the npz batch format.

Formats are named "sdf", "xyz", "smi" and "npz" and are taken from the file extension
unless given explicitly. The path "-" means standard input / standard output.

Conventions shared by the readers and writers:
- An XYZ comment line and an SDF title line are both `props["name"]`.
- SDF data tags become `props` entries and are written back as tags.
- Bond rows are (i, j, order) with order 1, 2, 3, or 4 for an aromatic bond (the SDF code).
- Bonds missing from the source (XYZ, npz) are perceived only when writing a format that
  needs them (SDF, SMILES): by the benchmark distance rules (`bonds="benchmark"`, the rules
  of the stability metric) or by RDKit's rdDetermineBonds (`bonds="rdkit"`).
- Every file is written atomically: into a temporary file next to the target, renamed into
  place only when complete, so an error or Ctrl-C never leaves a half-written file.
"""

from __future__ import annotations

import io
import os
import re
import sys
from contextlib import contextmanager
from typing import IO, Iterable, Iterator

import numpy as np

from symdiff_cli.chem.elements import atomic_number, element_symbol
from symdiff_cli.errors import SymdiffError, write_error
from symdiff_cli.io.atomic import commit_temp_file, discard_temp_file, open_temp_file
from symdiff_cli.io.molecule import Molecule, PackedMolecules

STDIO_PATH = "-"

# Canonical format name -> file extensions that select it.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "sdf": (".sdf", ".mol"),
    "xyz": (".xyz",),
    "smi": (".smi", ".smiles"),
    "npz": (".npz",),
}
_FORMAT_ALIASES = {"sdf": "sdf", "mol": "sdf", "sd": "sdf", "xyz": "xyz", "smi": "smi", "smiles": "smi", "npz": "npz"}
BOND_METHODS = ("benchmark", "rdkit")

# The npz batch layout (PackedMolecules).
_NPZ_KEYS = ("positions", "atomic_numbers", "num_atoms")

# Fixed so that converting the same SMILES file twice gives the same coordinates.
_SMILES_EMBED_SEED = 20250401

# Highest atomic number we have a symbol for (bismuth); also the limit of the bond tables.
_MAX_ATOMIC_NUMBER = 83

# Bound on RDKit's bond-order search (xyz2mol), which is exponential in bad cases.
_RDKIT_BOND_ORDER_MAX_ITERATIONS = 10000


# --------------------------------------------------------------------------------------
# Format names


def _supported_extensions_text() -> str:
    return ", ".join(ext for exts in FORMAT_EXTENSIONS.values() for ext in exts)


def normalize_format(fmt: str) -> str:
    """Canonical format name ("sdf", "xyz", "smi", "npz") for a user-given name such as "mol"."""
    canonical = _FORMAT_ALIASES.get(fmt.strip().lower().lstrip("."))
    if canonical is None:
        raise SymdiffError(
            f"unsupported format {fmt!r} (supported: {', '.join(FORMAT_EXTENSIONS)})"
        )
    return canonical


def format_from_path(path: str) -> str:
    """The format a file extension selects; SymdiffError listing the supported ones otherwise."""
    lowered = path.lower()
    for name, extensions in FORMAT_EXTENSIONS.items():
        if lowered.endswith(extensions):
            return name
    extension = os.path.splitext(path)[1] or "(none)"
    raise SymdiffError(
        f"unsupported file extension {extension!r} for {path} "
        f"(supported: {_supported_extensions_text()}; or give the format explicitly)"
    )


def resolve_format(path: str, fmt: str | None) -> str:
    """The explicit format if given, else the one of the extension; stdio needs an explicit one."""
    if fmt:
        return normalize_format(fmt)
    if path == STDIO_PATH:
        raise SymdiffError(
            f"cannot tell the format of '-' (standard input/output): give it explicitly "
            f"(one of {', '.join(FORMAT_EXTENSIONS)})"
        )
    return format_from_path(path)


# --------------------------------------------------------------------------------------
# RDKit helpers


@contextmanager
def _captured_rdkit_errors() -> Iterator[list[str]]:
    """Collect RDKit's error log lines instead of letting them spill onto stderr.

    Yields a list that holds the cleaned messages once the block has run. Older RDKit builds
    lack CaptureErrorLog; there we only silence the log.
    """
    from rdkit import rdBase

    messages: list[str] = []
    capture_class = getattr(rdBase, "CaptureErrorLog", None)
    if capture_class is None:
        with rdBase.BlockLogs():
            yield messages
        return
    with capture_class() as capture:
        try:
            yield messages
        finally:
            try:
                raw = capture.messages
            except UnicodeDecodeError:  # RDKit echoes input bytes that are not UTF-8
                raw = "RDKit could not parse it (the record is not UTF-8 text)"
            messages.extend(_clean_rdkit_messages(raw))


def _clean_rdkit_messages(raw: str) -> list[str]:
    """RDKit log text without timestamps, levels and the boilerplate 'moving to...' lines."""
    cleaned = []
    for line in raw.splitlines():
        line = re.sub(r"^\[\d\d:\d\d:\d\d\]\s*", "", line).strip()
        line = re.sub(r"^(ERROR|WARNING):\s*", "", line)
        if line and not line.startswith("moving to the beginning of the next molecule"):
            cleaned.append(line)
    return cleaned


_RDKIT_ORDER_BY_TYPE_NAME = {"SINGLE": 1, "DOUBLE": 2, "TRIPLE": 3, "AROMATIC": 4}


def _bonds_from_rdkit(rd_mol) -> np.ndarray:
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


# --------------------------------------------------------------------------------------
# Bond perception


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

    from symdiff_cli.chem.rdkit_mol import rdkit_mol_from_bonds

    try:
        from rdkit.Chem import rdDetermineBonds
    except ImportError:
        return None
    connected = Chem.RWMol(rdkit_mol_from_bonds(mol, np.zeros((0, 3), dtype=np.int64)))
    try:
        with _captured_rdkit_errors():
            rdDetermineBonds.DetermineConnectivity(connected)
    except Exception:  # RDKit raises assorted classes (missing radii, bad input)
        return None
    with_orders = Chem.RWMol(connected)
    try:
        with _captured_rdkit_errors():
            # The iteration cap keeps large or odd molecules from searching for minutes.
            rdDetermineBonds.DetermineBondOrders(
                with_orders, charge=0, allowChargedFragments=False, embedChiral=False,
                maxIterations=_RDKIT_BOND_ORDER_MAX_ITERATIONS,
            )
    except Exception:
        return _bonds_from_rdkit(connected)
    return _bonds_from_rdkit(with_orders)


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


# --------------------------------------------------------------------------------------
# Reading


def _display_name(path: str) -> str:
    return "<stdin>" if path == STDIO_PATH else path


def _read_source_bytes(path: str) -> bytes:
    if path == STDIO_PATH:
        if sys.stdin is None or sys.stdin.isatty():
            # Reading would wait for typed input, which is never what the user meant.
            raise SymdiffError("standard input is a terminal; pipe molecules in or name a file")
        stream = getattr(sys.stdin, "buffer", None)
        return stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
    if not os.path.exists(path):
        raise SymdiffError(f"no such file: {path}")
    if os.path.isdir(path):
        raise SymdiffError(f"{path} is a directory, not a molecule file")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise SymdiffError(f"cannot read {path}: {err.strerror or err}") from None


# Leading bytes of the compressed and archive formats a molecule file most often arrives in.
_BINARY_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed"),
    (b"BZh", "bzip2-compressed"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"PK\x03\x04", "a zip archive"),
)


def _decode_text(data: bytes, source: str) -> str:
    """The text of a text-format molecule file; one clear error for binary or compressed data,
    which would otherwise surface as a decoding error deep inside a parser or RDKit."""
    for magic, kind in _BINARY_MAGIC:
        if data.startswith(magic):
            raise SymdiffError(f"{source} is not a text molecule file ({kind} data); decompress it first")
    if b"\x00" in data:
        raise SymdiffError(f"{source} is not a text molecule file (binary or compressed data)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SymdiffError(f"{source} is not a text molecule file (binary or compressed data, not UTF-8 text)") from None


def _sniff_format(data: bytes) -> str | None:
    """Guess the format of unlabelled input (standard input); None when unsure."""
    if data.startswith(b"PK\x03\x04"):
        return "npz"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    if "M  END" in text or "\n$$$$" in text or "V2000" in text or "V3000" in text:
        return "sdf"
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    if first_line.strip().isdigit():
        return "xyz"
    return None


def _short(line: str, limit: int = 60) -> str:
    line = line.rstrip("\r\n")
    return repr(line if len(line) <= limit else line[:limit] + "...")


def _parse_xyz_element(token: str, source: str, line_number: int) -> int:
    """An element symbol or atomic number from an XYZ atom line."""
    if token.isdigit():
        z = int(token)
        if not 1 <= z <= _MAX_ATOMIC_NUMBER:
            raise SymdiffError(f"{source}, line {line_number}: unknown atomic number {z}")
        return z
    try:
        return atomic_number(token)
    except SymdiffError:
        raise SymdiffError(f"{source}, line {line_number}: unknown element {token!r}") from None


def _parse_xyz(text: str, source: str) -> list[Molecule]:
    """Molecules of a (multi-molecule) XYZ text; blank lines between molecules are allowed.

    Atom lines are `element x y z`; further columns (charges, forces of extended XYZ) are
    ignored. Any malformed line is an error naming its line number.
    """
    lines = text.splitlines()
    molecules: list[Molecule] = []
    index = 0
    while index < len(lines):
        if not lines[index].strip():
            index += 1
            continue
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
        props = {"name": comment} if comment else {}
        molecules.append(Molecule(numbers, positions, props=props))
        index = first_atom_index + atom_count
    return molecules


class _RecordProblems:
    """Counts unreadable records, or raises on the first one in strict mode."""

    def __init__(self, source: str, strict: bool) -> None:
        self.source = source
        self.strict = strict
        self.skipped = 0

    def report(self, what: str, reason: str) -> None:
        if self.strict:
            raise SymdiffError(f"{self.source}: cannot read {what}: {reason}")
        self.skipped += 1


def _molecule_from_rdkit(rd_mol) -> Molecule:
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
    return Molecule(numbers, positions, bonds=_bonds_from_rdkit(rd_mol), props=props,
                    formal_charges=charges if charges.any() else None)


def _unsupported_atom_reason(rd_mol) -> str | None:
    for atom in rd_mol.GetAtoms():
        z = atom.GetAtomicNum()
        if not 1 <= z <= _MAX_ATOMIC_NUMBER:
            label = atom.GetSymbol() if z else "a query atom (*, R, A, ...)"
            return f"atom {atom.GetIdx() + 1} is {label}, which is not a supported element"
    return None


def _parse_sdf(data: bytes, source: str, problems: _RecordProblems) -> list[Molecule]:
    """SDF records through RDKit, unsanitised and with hydrogens kept, so that generated
    molecules with odd valences load as they are."""
    from rdkit import Chem

    # A trailing blank tail after the last $$$$ would read as one more (broken) record.
    data = data.rstrip() + b"\n"
    supplier = Chem.ForwardSDMolSupplier(io.BytesIO(data), removeHs=False, sanitize=False)
    molecules: list[Molecule] = []
    record_number = 0
    while True:
        with _captured_rdkit_errors() as messages:
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
        molecules.append(_molecule_from_rdkit(rd_mol))
    return molecules


def _embed_smiles(smiles: str):
    """An RDKit molecule with explicit hydrogens and one 3D conformer, or a failure reason."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    with _captured_rdkit_errors() as messages:
        parsed = Chem.MolFromSmiles(smiles)
    if parsed is None:
        return None, (messages[0] if messages else "RDKit could not parse the SMILES")
    with_hydrogens = Chem.AddHs(parsed)
    params = AllChem.ETKDGv3()
    params.randomSeed = _SMILES_EMBED_SEED
    with _captured_rdkit_errors():
        status = AllChem.EmbedMolecule(with_hydrogens, params)
        if status != 0:
            # Random starting coordinates succeed for many molecules the default start fails on.
            params.useRandomCoords = True
            status = AllChem.EmbedMolecule(with_hydrogens, params)
    if status != 0:
        return None, "RDKit could not embed it in 3D"
    # Kekulé bonds (orders 1-3) are what the rest of the project (and the metrics) use.
    Chem.Kekulize(with_hydrogens, clearAromaticFlags=True)
    return with_hydrogens, None


def _parse_smiles(text: str, source: str, problems: _RecordProblems) -> list[Molecule]:
    """One molecule per line: `SMILES [name]`; blank lines, '#' comments and a 'smiles'
    header line are ignored. Each SMILES is embedded in 3D with explicit hydrogens."""
    molecules: list[Molecule] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 1)
        smiles = fields[0]
        if line_number == 1 and smiles.lower() == "smiles":
            continue
        rd_mol, reason = _embed_smiles(smiles)
        if rd_mol is None:
            problems.report(f"line {line_number} ({smiles})", reason)
            continue
        molecule = _molecule_from_rdkit(rd_mol)
        molecule.props = {"smiles": smiles}
        if len(fields) > 1 and fields[1].strip():
            molecule.props["name"] = fields[1].strip()
        molecules.append(molecule)
    return molecules


def _parse_npz(data: bytes, source: str) -> list[Molecule]:
    """The PackedMolecules arrays of an npz archive; archives that need pickle are refused."""
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err):
            raise SymdiffError(f"{source} holds pickled data; refusing to load it (not an npz archive)") from None
        raise SymdiffError(f"{source} is not a readable npz archive ({err})") from None
    except Exception as err:  # zipfile and numpy raise several unrelated classes
        raise SymdiffError(f"{source} is not a readable npz archive ({err})") from None
    if not hasattr(archive, "files"):
        raise SymdiffError(f"{source} holds a single .npy array, not an npz archive with {', '.join(_NPZ_KEYS)}")
    with archive:
        missing = [key for key in _NPZ_KEYS if key not in archive.files]
        if missing:
            raise SymdiffError(
                f"{source} lacks the npz array(s) {', '.join(missing)} "
                f"(expected {', '.join(_NPZ_KEYS)}; found {', '.join(archive.files) or 'none'})"
            )
        arrays = {}
        for key in _NPZ_KEYS:
            try:
                arrays[key] = archive[key]
            except ValueError:
                raise SymdiffError(
                    f"{source}: array {key!r} needs pickle to load; refusing it "
                    "(npz files must hold plain numeric arrays)"
                ) from None
    for key, array in arrays.items():
        if array.dtype.kind not in "iuf" or (key == "positions" and not np.isfinite(array).all()):
            raise SymdiffError(f"{source}: array {key!r} must hold finite numbers (dtype {array.dtype})")
    atomic_numbers = arrays["atomic_numbers"]
    if atomic_numbers.size and (
        np.any(atomic_numbers != np.round(atomic_numbers))
        or atomic_numbers.min() < 1
        or atomic_numbers.max() > _MAX_ATOMIC_NUMBER
    ):
        raise SymdiffError(f"{source}: atomic_numbers must be whole numbers between 1 and {_MAX_ATOMIC_NUMBER}")
    if np.any(arrays["num_atoms"] < 0):
        raise SymdiffError(f"{source}: num_atoms must not be negative")
    try:
        packed = PackedMolecules(arrays["positions"].astype(np.float64), atomic_numbers, arrays["num_atoms"])
    except ValueError:
        raise SymdiffError(
            f"{source}: inconsistent arrays (positions {arrays['positions'].shape}, atomic_numbers "
            f"{atomic_numbers.shape}, num_atoms summing to {int(arrays['num_atoms'].sum())})"
        ) from None
    return packed.to_molecules() if len(packed) else []


def read_molecules(path: str, fmt: str | None = None, strict: bool = False) -> tuple[list[Molecule], int]:
    """Read every molecule of a file; returns (molecules, number of unreadable records skipped).

    `fmt` ("sdf", "xyz", "smi", "npz"; aliases "mol", "smiles") overrides the extension.
    `path == "-"` reads standard input; without `fmt` the format is guessed from the content
    (npz, SDF and XYZ are recognisable; SMILES must be named).

    - XYZ: multi-molecule; atoms as element symbols or atomic numbers; the comment line is
      `props["name"]`. A malformed line is an error naming its line number.
    - SDF/MOL: read by RDKit without sanitising and keeping hydrogens; bonds and data tags
      are kept. A record RDKit cannot parse is skipped and counted (strict: an error naming
      the record number).
    - SMILES: `SMILES [name]` per line. Each molecule is given explicit hydrogens and embedded
      in 3D by RDKit (ETKDG with a fixed seed, so the result is reproducible); these are
      generated coordinates, not measured ones. Unparseable or unembeddable lines are
      skipped and counted (strict: an error naming the line).
    - npz: arrays positions, atomic_numbers, num_atoms (PackedMolecules); loaded without
      pickle.

    A file without any molecule is an error ("no molecules in ...").
    """
    source = _display_name(path)
    if path == STDIO_PATH and not fmt:
        data = _read_source_bytes(path)
        if not data.strip():
            raise SymdiffError(f"no molecules in {source} (it is empty)")
        sniffed = _sniff_format(data)
        if sniffed is None:
            _decode_text(data, source)  # binary data gets its own message
            raise SymdiffError(
                "cannot tell the format of standard input; give it explicitly "
                f"(one of {', '.join(FORMAT_EXTENSIONS)})"
            )
        file_format = sniffed
    else:
        file_format = resolve_format(path, fmt)
        data = _read_source_bytes(path)
        if not data.strip():
            raise SymdiffError(f"no molecules in {source} (it is empty)")

    problems = _RecordProblems(source, strict)
    if file_format == "npz":
        molecules = _parse_npz(data, source)
    elif file_format == "xyz":
        molecules = _parse_xyz(_decode_text(data, source), source)
    elif file_format == "sdf":
        # RDKit would hand undecodable bytes back to Python as a UnicodeDecodeError.
        molecules = _parse_sdf(_decode_text(data, source).encode("utf-8"), source, problems)
    else:
        molecules = _parse_smiles(_decode_text(data, source), source, problems)
    if not molecules:
        if problems.skipped:
            raise SymdiffError(f"no readable molecules in {source} ({problems.skipped} unreadable records)")
        raise SymdiffError(f"no molecules in {source}")
    return molecules, problems.skipped


# --------------------------------------------------------------------------------------
# Writing: one record per molecule, as text


def _single_line(text: str) -> str:
    return " ".join(str(text).split())


# Decimal places of the coordinates that each text format stores (RDKit's mol block has 4).
STORED_COORDINATE_DECIMALS = {"sdf": 4, "xyz": 8}


def stored_positions(positions: np.ndarray, fmt: str) -> np.ndarray:
    """`positions` rounded to the decimals that `fmt` stores (as they are for other formats)."""
    decimals = STORED_COORDINATE_DECIMALS.get(fmt)
    return positions if decimals is None else np.round(positions, decimals)


def round_to_stored_precision(mols: Iterable[Molecule], fmt: str) -> None:
    """Round positions in place to the decimals that `fmt` stores.

    Bonds and metric tags computed before writing then match what any reader of the file
    computes: a bond length within 1e-4 Å of a bond-order threshold could otherwise read as
    one order in memory and another from the SDF.
    """
    for mol in mols:
        mol.positions = stored_positions(mol.positions, fmt)


def xyz_block(mol: Molecule) -> str:
    """One XYZ record: count, comment (props["name"]) and atoms with 8 decimals."""
    d = STORED_COORDINATE_DECIMALS["xyz"]
    lines = [str(mol.num_atoms), _single_line(mol.props.get("name", ""))]
    for z, (x, y, zc) in zip(mol.atomic_numbers.tolist(), mol.positions.tolist()):
        lines.append(f"{element_symbol(z):<2} {x:16.{d}f} {y:16.{d}f} {zc:16.{d}f}")
    return "\n".join(lines) + "\n"


# No real molecule has more bond rows than this per atom (sum of valences / 2 with valence
# at most 6). Atoms packed closer than bond lengths (10,000 atoms in a 10 Angstrom cube) have
# hundreds, and RDKit's ring perception on such a graph ran out of 24 GB of memory.
_MAX_BONDS_PER_ATOM = 3


def _too_dense_for_rdkit(mol: Molecule, bond_rows: np.ndarray) -> bool:
    return len(bond_rows) > _MAX_BONDS_PER_ATOM * max(mol.num_atoms, 1)


def _v3000_block(mol: Molecule, bond_rows: np.ndarray) -> str:
    """A V3000 mol block written directly, for molecules RDKit cannot handle in bounded memory.

    No charges, stereo or query features. RDKit's reader rejects such a record once atoms carry
    far more bonds than any valence (it assigns chirality from 3D, which needs valences), so
    reading it back is a one-line "cannot read SDF record" error; XYZ output keeps everything.
    """
    d = STORED_COORDINATE_DECIMALS["sdf"]
    lines = [_single_line(mol.props.get("name", "")), "     symdiff        3D", "",
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
            lines += [f">  <{key}>  (1) ", _single_line(value), ""]
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
    if _too_dense_for_rdkit(stored, bond_rows):
        return _v3000_block(stored, bond_rows)
    rd_mol = rdkit_mol_from_bonds(stored, bond_rows)
    rd_mol.SetProp("_Name", _single_line(mol.props.get("name", "")))
    for key, value in mol.props.items():
        if key != "name":
            rd_mol.SetProp(str(key), str(value))
    buffer = io.StringIO()
    writer = Chem.SDWriter(buffer)
    writer.SetKekulize(False)
    writer.write(rd_mol)
    writer.close()
    return buffer.getvalue()


def smiles_line(mol: Molecule, bonds: str = "benchmark") -> str | None:
    """`SMILES [name]` for a molecule, or None when RDKit cannot sanitise it.

    The SMILES is canonical, of the largest fragment, without explicit hydrogens, from the
    molecule's own or perceived bonds; that is the molecule the validity metric judges.
    """
    from rdkit import Chem

    from symdiff_cli.chem.rdkit_mol import rdkit_mol_from_bonds

    bond_rows = perceive_bonds(mol, bonds)
    if _too_dense_for_rdkit(mol, bond_rows):
        return None  # more bonds than any valence allows: no valid SMILES, and RDKit would not finish
    rd_mol = rdkit_mol_from_bonds(mol, bond_rows)
    try:
        with _captured_rdkit_errors():
            Chem.SanitizeMol(rd_mol)
            fragments = Chem.GetMolFrags(rd_mol, asMols=True)
            largest = max(fragments, key=lambda fragment: fragment.GetNumAtoms())
            smiles = Chem.MolToSmiles(Chem.RemoveHs(largest))
    except Exception:  # RDKit raises several unrelated classes (valence, kekulisation, ...)
        return None
    if not smiles:
        return None
    name = _single_line(mol.props.get("name", ""))
    return f"{smiles} {name}\n" if name else f"{smiles}\n"


class _NpzSpill:
    """The arrays of an npz file being written, spilled batch by batch into anonymous temporary
    files and zipped at the end: memory holds one batch however many molecules are written.

    The archive is what np.savez_compressed writes (deflated .npy members positions float64
    (rows, 3), atomic_numbers int64, num_atoms int64). The temporary files have no name, so a
    crash leaves nothing behind.
    """

    _DTYPES = {"positions": np.float64, "atomic_numbers": np.int64, "num_atoms": np.int64}

    def __init__(self, directory: str | None) -> None:
        import tempfile

        self._files: dict[str, IO[bytes]] = {}
        try:
            for key in _NPZ_KEYS:
                self._files[key] = tempfile.TemporaryFile(dir=directory)
        except BaseException:
            self.close()
            raise
        self._rows = dict.fromkeys(_NPZ_KEYS, 0)

    def add(self, mols: list[Molecule]) -> None:
        packed = PackedMolecules.from_molecules(mols)
        for key, array in (("positions", packed.positions), ("atomic_numbers", packed.atomic_numbers),
                           ("num_atoms", packed.num_atoms)):
            self._files[key].write(np.ascontiguousarray(array, dtype=self._DTYPES[key]).tobytes())
            self._rows[key] += len(array)

    def write_npz(self, stream: IO[bytes]) -> None:
        import shutil
        import zipfile

        with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for key in _NPZ_KEYS:
                shape = (self._rows[key], 3) if key == "positions" else (self._rows[key],)
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(self._DTYPES[key])),
                          "fortran_order": False, "shape": shape}
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(member, header)
                    spill = self._files[key]
                    spill.flush()
                    spill.seek(0)
                    shutil.copyfileobj(spill, member, 1 << 20)

    def close(self) -> None:
        for spill in self._files.values():
            spill.close()


# --------------------------------------------------------------------------------------
# Writing: files


class MoleculeWriter:
    """Writes molecules batch by batch, atomically; for streaming results as they finish.

    Records go to a temporary file next to `path` that is renamed into place by `close()`.
    `abort(keep=True)` finalises the molecules of all completed `write` calls (a partially
    written batch is cut off), so an interrupted run leaves a complete, shorter file;
    `abort()` removes the temporary file. Used as a context manager it closes on success,
    keeps the finished molecules on KeyboardInterrupt and discards everything on any other
    exception. `path == "-"` writes each batch straight to standard output.

    npz output is spilled batch by batch into anonymous temporary files (memory holds one
    batch) and zipped into the file when the writer is closed.
    `written` counts the molecules written, `skipped` those left out (SMILES output only:
    molecules RDKit cannot sanitise have no SMILES).
    """

    def __init__(self, path: str, fmt: str | None = None, bonds: str = "benchmark") -> None:
        if bonds not in BOND_METHODS:
            raise SymdiffError(f"unknown bond perception {bonds!r} (choose from {', '.join(BOND_METHODS)})")
        self.path = path
        self.format = resolve_format(path, fmt)
        self.bonds = bonds
        self.written = 0
        self.skipped = 0
        self._npz: _NpzSpill | None = None
        self._temp_path: str | None = None
        self._stream: IO[bytes] | None = None
        self._committed_bytes = 0
        self._finished = False
        if path == STDIO_PATH:
            if self.format == "npz" and sys.stdout.isatty():
                raise SymdiffError("refusing to write binary npz data to a terminal; redirect standard output")
            return
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise SymdiffError(f"{path} is a directory; give a file name")
        if not os.path.isdir(directory):
            raise SymdiffError(f"cannot write {path}: directory {directory} does not exist")
        try:
            self._stream, self._temp_path = open_temp_file(path, "wb", suffix=".partial")
        except OSError as err:
            raise SymdiffError(f"cannot write {path}: {err.strerror or err}") from None

    # Rendering ------------------------------------------------------------------------

    def _render_one(self, mol: Molecule) -> str | None:
        if not np.isfinite(mol.positions).all():
            raise SymdiffError("coordinates contain NaN or infinity")
        if self.format == "xyz":
            return xyz_block(mol)
        if self.format == "sdf":
            return sdf_block(mol, self.bonds)
        return smiles_line(mol, self.bonds)

    def _render(self, mols: Iterable[Molecule]) -> bytes:
        pieces: list[str] = []
        for mol in mols:
            try:
                piece = self._render_one(mol)
            except SymdiffError as err:
                number = self.written + self.skipped + 1
                raise SymdiffError(f"cannot write molecule {number} to {_display_name(self.path)}: {err}") from None
            if piece is None:
                self.skipped += 1
                continue
            pieces.append(piece)
            self.written += 1
        return "".join(pieces).encode("utf-8")

    def _write_stdout(self, data: bytes) -> None:
        sys.stdout.flush()
        binary = getattr(sys.stdout, "buffer", None)
        if binary is not None:
            binary.write(data)
            binary.flush()
        else:
            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()

    # Public API -----------------------------------------------------------------------

    def write(self, mols: Iterable[Molecule]) -> None:
        """Append a batch of molecules (rendered completely before anything is written)."""
        if self._finished:
            raise ValueError("MoleculeWriter is already closed")
        if self.format == "npz":
            batch = list(mols)
            for number, mol in enumerate(batch, start=self.written + 1):
                if not np.isfinite(mol.positions).all():
                    raise SymdiffError(
                        f"cannot write molecule {number} to {_display_name(self.path)}: "
                        "coordinates contain NaN or infinity"
                    )
            try:
                if self._npz is None:
                    directory = None if self._stream is None else os.path.dirname(os.path.abspath(self.path))
                    self._npz = _NpzSpill(directory)
                self._npz.add(batch)
            except OSError as err:
                self._discard()
                raise write_error(err, _display_name(self.path)) from None
            self.written += len(batch)
            return
        data = self._render(mols)
        if self._stream is None:
            self._write_stdout(data)
            return
        try:
            self._stream.write(data)
            self._stream.flush()
        except OSError as err:
            self._discard()
            raise write_error(err, self.path) from None
        self._committed_bytes += len(data)

    def close(self) -> None:
        """Finish the file: write buffered npz data and move the temporary file into place."""
        if self._finished:
            return
        try:
            if self.format == "npz":
                if self._npz is None:
                    self._npz = _NpzSpill(None)
                if self._stream is None:
                    buffer = io.BytesIO()
                    self._npz.write_npz(buffer)
                    self._write_stdout(buffer.getvalue())
                else:
                    self._npz.write_npz(self._stream)
                self._npz.close()
            if self._stream is not None:
                commit_temp_file(self._stream, self._temp_path, self.path)
                self._temp_path = None
        except OSError as err:
            self._discard()
            problem = write_error(err, self.path) if self._stream is not None else None
            if problem is None:  # standard output: BrokenPipeError and the like are the caller's
                raise
            raise problem from None
        except BaseException:
            self._discard()
            raise
        self._finished = True

    def abort(self, keep: bool = False) -> None:
        """Stop writing. keep=True: finalise the molecules of the completed `write` calls;
        keep=False: remove everything written so far (standard output cannot be undone)."""
        if self._finished:
            return
        if not keep:
            self._discard()
            return
        if self._stream is not None and self.format != "npz":
            # A batch interrupted mid-write must not leave a truncated record behind.
            try:
                self._stream.flush()
                self._stream.truncate(self._committed_bytes)
            except OSError as err:
                self._discard()
                raise write_error(err, self.path) from None
        self.close()

    def _discard(self) -> None:
        self._finished = True
        if self._npz is not None:
            self._npz.close()
        discard_temp_file(self._stream, self._temp_path)
        self._temp_path = None

    def __enter__(self) -> "MoleculeWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.abort(keep=True)
        else:
            self.abort(keep=False)


def write_molecules(path: str, mols: list[Molecule], fmt: str | None = None, bonds: str = "benchmark") -> int:
    """Write molecules to a file (atomically) or to standard output (`path == "-"`).

    The format comes from `fmt` or the extension. Bonds a molecule lacks are perceived with
    `bonds` ("benchmark" or "rdkit") for SDF and SMILES output. On any error, Ctrl-C
    included, no output file is created or changed.

    Returns the number of molecules left out: only SMILES output leaves any out, namely the
    molecules RDKit cannot sanitise (they have no valid SMILES).
    """
    writer = MoleculeWriter(path, fmt, bonds)
    try:
        writer.write(mols)
    except BaseException:
        writer.abort(keep=False)
        raise
    writer.close()
    return writer.skipped
