"""Format names and what each molecule file format stores.

Formats are named "sdf", "xyz", "smi" and "npz" and are taken from the file extension
unless given explicitly. The path "-" means standard input / standard output. One module a
format holds its reader and renderer (io/xyz.py, io/sdf.py, io/smiles.py, io/npz.py);
io/reader.py reads a whole file and io/writer.py streams molecules into one.

Conventions shared by the readers and writers:
- An XYZ comment line and an SDF title line are both `props["name"]`.
- SDF data tags become `props` entries and are written back as tags.
- Bond rows are (i, j, order) with order 1, 2, 3, or 4 for an aromatic bond (the SDF code).
- Bonds missing from the source (XYZ, npz) are perceived only when writing a format that
  needs them (SDF, SMILES), by chem/perception.py.
- Every file is written atomically: into a temporary file next to the target, renamed into
  place only when complete, so an error or Ctrl-C never leaves a half-written file.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.errors import SymdiffError, write_error

STDIO_PATH = "-"

# Canonical format name -> file extensions that select it.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "sdf": (".sdf", ".mol"),
    "xyz": (".xyz",),
    "smi": (".smi", ".smiles"),
    "npz": (".npz",),
}
_FORMAT_ALIASES = {"sdf": "sdf", "mol": "sdf", "sd": "sdf", "xyz": "xyz", "smi": "smi", "smiles": "smi", "npz": "npz"}

# Highest atomic number we have a symbol for (bismuth); also the limit of the bond tables.
MAX_ATOMIC_NUMBER = 83


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
    if extension.lower() in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        raise SymdiffError(f"{path} is compressed ({extension}): decompress it first (e.g. gunzip -k {path})"
                           if extension.lower() == ".gz" else f"{path} is compressed ({extension}): decompress it first")
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


def require_stdout(what: str) -> None:
    """Writing `what` to '-' needs an open standard output. A shell's `>&-` closes it, and Python
    then sets sys.stdout to None: writes would vanish, or fail deep inside with a traceback."""
    import sys

    if sys.stdout is None:
        raise SymdiffError(f"standard output is closed: cannot write {what} to '-'; give a file instead")


def write_stdout(data: bytes | str) -> None:
    """Write all of `data` to standard output, or raise BrokenPipeError once its reader is gone.

    A pipe's reader that leaves mid-write (`| head`) makes a large write come back short;
    Python's buffered writer then reports the bytes it did write and no error, so a command
    would finish as if its output had arrived whole. Writing the rest finds the closed pipe.
    """
    import sys

    payload = data.encode("utf-8") if isinstance(data, str) else data
    sys.stdout.flush()
    binary = getattr(sys.stdout, "buffer", None)
    if binary is None:  # a text-only stand-in (tests, embedding programs)
        sys.stdout.write(payload.decode("utf-8"))
        sys.stdout.flush()
        return
    view = memoryview(payload)
    try:
        while view:
            written = binary.write(view)
            view = view[written if written is not None else len(view):]
        binary.flush()
    except BrokenPipeError:
        raise
    except OSError as err:  # `> /dev/full`, a full disk behind a redirection
        problem = write_error(err, "standard output")
        if problem is None:
            raise
        raise problem from None


def display_name(path: str) -> str:
    return "<stdin>" if path == STDIO_PATH else path


def single_line(text: str) -> str:
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


class RecordProblems:
    """Counts unreadable records (and where they were), or raises on the first one in strict mode."""

    def __init__(self, source: str, strict: bool) -> None:
        self.source = source
        self.strict = strict
        self.skipped = 0
        self.skipped_positions: list[int] = []  # 0-based, among all the file's records
        self.first_problem = ""

    def report(self, what: str, reason: str, position: int) -> None:
        if self.strict:
            raise SymdiffError(f"{self.source}: cannot read {what}: {reason}")
        self.skipped += 1
        self.skipped_positions.append(position)
        self.first_problem = self.first_problem or f"{what}: {reason}"
