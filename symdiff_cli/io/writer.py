"""Writing molecules batch by batch into one file, atomically, in any format."""

from __future__ import annotations

import io
import os
import sys
from typing import IO, Iterable

import numpy as np

from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.perception import BOND_METHODS
from symdiff_cli.errors import SymdiffError, write_error
from symdiff_cli.io.atomic import commit_temp_file, discard_temp_file, open_temp_file
from symdiff_cli.io.formats import STDIO_PATH, display_name, require_stdout, resolve_format, write_stdout
from symdiff_cli.io.npz import NpzSpill
from symdiff_cli.io.sdf import sdf_block
from symdiff_cli.io.smiles import smiles_line
from symdiff_cli.io.xyz import xyz_block


class MoleculeWriter:
    """Writes molecules batch by batch, atomically; for streaming results as they finish.

    Records go to a temporary file next to `path` that is renamed into place by `close()`.
    `abort(keep=True)` finalises the molecules of all completed `write` calls (a partially
    written batch is cut off), so an interrupted run leaves a complete, shorter file; when `path`
    already held a file, that file is left as it was and the shorter one is written beside it
    (`path_for_interrupted`), so an interrupt never costs the user a file they had: `final_path`
    says where the molecules went. `abort()` removes the temporary file. Used as a context manager it closes on success,
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
        self._npz: NpzSpill | None = None
        self._temp_path: str | None = None
        self._stream: IO[bytes] | None = None
        self._committed_bytes = 0
        self._finished = False
        self.final_path = path
        self._had_file = path != STDIO_PATH and os.path.isfile(path)
        if path == STDIO_PATH:
            require_stdout("molecules")
            if self.format == "npz" and sys.stdout.isatty():
                raise SymdiffError("refusing to write binary npz data to a terminal; redirect standard output")
            return
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise SymdiffError(f"{path} is a directory; give a file name")
        if not os.path.isdir(directory):
            problem = "is not a directory" if os.path.exists(directory) else "does not exist"
            raise SymdiffError(f"cannot write {path}: {directory} {problem}")
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
                raise SymdiffError(f"cannot write molecule {number} to {display_name(self.path)}: {err}") from None
            if piece is None:
                self.skipped += 1
                continue
            pieces.append(piece)
            self.written += 1
        return "".join(pieces).encode("utf-8")

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
                        f"cannot write molecule {number} to {display_name(self.path)}: "
                        "coordinates contain NaN or infinity"
                    )
            try:
                if self._npz is None:
                    directory = None if self._stream is None else os.path.dirname(os.path.abspath(self.path))
                    self._npz = NpzSpill(directory)
                self._npz.add(batch)
            except OSError as err:
                self._discard()
                raise write_error(err, display_name(self.path)) from None
            self.written += len(batch)
            return
        data = self._render(mols)
        if self._stream is None:
            write_stdout(data)
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
                    self._npz = NpzSpill(None)
                if self._stream is None:
                    buffer = io.BytesIO()
                    self._npz.write_npz(buffer)
                    write_stdout(buffer.getvalue())
                else:
                    self._npz.write_npz(self._stream)
                self._npz.close()
            if self._stream is not None:
                commit_temp_file(self._stream, self._temp_path, self.final_path)
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
        if self._stream is not None and self._had_file:
            self.final_path = path_for_interrupted(self.path)
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


def path_for_interrupted(path: str) -> str:
    """Where an interrupted run puts its molecules when `path` holds a file already: beside it,
    mols.sdf -> mols.interrupted.sdf (then mols.interrupted-2.sdf, ...), never over a file."""
    root, ext = os.path.splitext(path)
    candidate, number = f"{root}.interrupted{ext}", 2
    while os.path.lexists(candidate):
        candidate, number = f"{root}.interrupted-{number}{ext}", number + 1
    return candidate


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
