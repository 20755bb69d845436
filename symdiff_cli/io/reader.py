"""Reading a molecule file (or standard input) of any format into a list of molecules."""

from __future__ import annotations

import sys
import os

from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.formats import FORMAT_EXTENSIONS, STDIO_PATH, RecordProblems, display_name, resolve_format
from symdiff_cli.io.npz import parse_npz
from symdiff_cli.io.sdf import parse_sdf
from symdiff_cli.io.smiles import parse_smiles
from symdiff_cli.io.xyz import parse_xyz


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
    (b"PK\x03\x04", "zip archive"),
)


# Bytes below 0x20 other than tab and the line ends: text has almost none.
_CONTROL_BYTES = bytes(b for b in range(0x20) if b not in (0x09, 0x0A, 0x0D))


def _is_npz(data: bytes) -> bool:
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def _decode_text(data: bytes, source: str) -> str:
    """The text of a text-format molecule file; one clear error for binary or compressed data,
    which would otherwise surface as a decoding error deep inside a parser or RDKit."""
    if data.startswith(b"PK\x03\x04") and _is_npz(data):
        raise SymdiffError(f"{source} is an npz archive, not a text molecule file: name it .npz (or give --from npz)")
    for magic, kind in _BINARY_MAGIC:
        if data.startswith(magic):
            raise SymdiffError(f"{source} is not a text molecule file ({kind} data); decompress it first")
    if b"\x00" in data:
        raise SymdiffError(f"{source} is not a text molecule file (binary or compressed data)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Older tools write Latin-1 names and tags ("25 \xb0C"): text all the same, with few control
    # characters, where binary data has one byte in eight below 0x20.
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    if controls <= len(data) // 1000:
        return data.decode("latin-1")
    raise SymdiffError(f"{source} is not a text molecule file (binary or compressed data, not UTF-8 text)")


def _sniff_format(data: bytes) -> str | None:
    """Guess the format of unlabelled input (standard input); None when unsure."""
    if data.startswith(b"PK\x03\x04"):
        return "npz"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    lines = text.splitlines()
    # An SDF record's fourth line is its counts line; an XYZ starts with its atom count. Words
    # anywhere else (a comment "converted from a V2000 molfile") decide nothing.
    if len(lines) >= 4 and ("V2000" in lines[3] or "V3000" in lines[3]):
        return "sdf"
    first_line = next((line for line in lines if line.strip()), "")
    if first_line.strip().isdigit():
        return "xyz"
    if "\nM  END" in text or "\n$$$$" in text:
        return "sdf"
    return None


def read_molecules(path: str, fmt: str | None = None, strict: bool = False) -> tuple[list[Molecule], int]:
    """Read every molecule of a file; returns (molecules, number of unreadable records skipped).
    See `read_molecule_records`."""
    molecules, _, skipped = read_molecule_records(path, fmt, strict)
    return molecules, skipped


def read_molecule_records(path: str, fmt: str | None = None,
                          strict: bool = False) -> tuple[list[Molecule], list[int], int]:
    """Read every molecule of a file; returns (molecules, each molecule's 0-based position among
    the file's records, unreadable ones included, so that a report can name the record; the
    number of unreadable records skipped).

    `fmt` ("sdf", "xyz", "smi", "npz"; aliases "mol", "smiles") overrides the extension.
    `path == "-"` reads standard input; without `fmt` the format is guessed from the content
    (npz, SDF and XYZ are recognisable; SMILES must be named).

    - XYZ: multi-molecule; atoms as element symbols or atomic numbers; the comment line is
      `props["name"]`. A record with a malformed atom line or no atoms is skipped and counted
      (strict: an error naming the line); a malformed count line is an error naming its line.
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
    source = display_name(path)
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
        if path != STDIO_PATH and not os.path.exists(path):  # before the extension: "no such file" says more
            raise SymdiffError(f"no such file: {path}")
        file_format = resolve_format(path, fmt)
        data = _read_source_bytes(path)
        if not data.strip():
            raise SymdiffError(f"no molecules in {source} (it is empty)")

    problems = RecordProblems(source, strict)
    if file_format == "npz":
        molecules = parse_npz(data, source)
    elif file_format == "xyz":
        molecules = parse_xyz(_decode_text(data, source), source, problems)
    elif file_format == "sdf":
        molecules = parse_sdf(_decode_text(data, source), source, problems)
    else:
        molecules = parse_smiles(_decode_text(data, source), source, problems)
    if not molecules:
        if problems.skipped:
            count = f"{problems.skipped} unreadable record{'s' if problems.skipped != 1 else ''}"
            raise SymdiffError(f"no readable molecules in {source} ({count}; the first, {problems.first_problem})")
        raise SymdiffError(f"no molecules in {source}")
    skipped = set(problems.skipped_positions)
    positions = [k for k in range(len(molecules) + len(skipped)) if k not in skipped]
    return molecules, positions, problems.skipped


