"""Training data from the user's own files, and from GEOM-Drugs in its usual processed form.

Both loaders return PackedMolecules with float32 positions (what training consumes) and
check the molecules against the dataset configuration they will be trained with, so that a
wrong element or an oversized molecule stops before training rather than inside it.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from symdiff_cli.chem.elements import GEOM, DatasetInfo, element_symbol
from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.formats import format_from_path
from symdiff_cli.io.reader import read_molecules
from symdiff_cli.io.molecule import Molecule, PackedMolecules

# The formats a training directory is scanned for (SMILES has no measured 3D geometry).
TRAINING_FILE_EXTENSIONS = (".xyz", ".sdf", ".mol", ".npz")


def _files_of(path: str) -> list[str]:
    """The molecule files named by one user path: the path itself, or a directory's files."""
    if not path.strip():  # an unset shell variable, most often
        raise SymdiffError("--data is empty: give molecule files or directories")
    if not os.path.exists(path):
        raise SymdiffError(f"no such file or directory: {path}")
    if not os.path.isdir(path):
        if not path.lower().endswith(TRAINING_FILE_EXTENSIONS):
            try:
                format_from_path(path)
            except SymdiffError:  # its message offers a format option that train does not have
                raise SymdiffError(f"{path}: unsupported file extension for training data "
                                   f"(use {', '.join(TRAINING_FILE_EXTENSIONS)})") from None
            raise SymdiffError(
                f"{path}: SMILES files carry no 3D coordinates to train on "
                f"(use {', '.join(TRAINING_FILE_EXTENSIONS)})"
            )
        return [path]
    files = sorted(
        os.path.join(path, name)
        for name in os.listdir(path)
        if name.lower().endswith(TRAINING_FILE_EXTENSIONS) and os.path.isfile(os.path.join(path, name))
    )
    if not files:
        raise SymdiffError(f"no molecule files ({', '.join(TRAINING_FILE_EXTENSIONS)}) in directory {path}")
    return files


def _check_against_dataset(mol: Molecule, dataset: DatasetInfo, where: str) -> None:
    allowed = set(dataset.atomic_numbers)
    for z in np.unique(mol.atomic_numbers).tolist():
        if z not in allowed:
            raise SymdiffError(
                f"{where} contains element {element_symbol(z)}, which is not among the "
                f"{dataset.name} atom types ({' '.join(dataset.atom_types)})"
            )
    if mol.num_atoms > dataset.max_atoms:
        raise SymdiffError(
            f"{where} has {mol.num_atoms} atoms; the {dataset.name} configuration allows at most "
            f"{dataset.max_atoms}"
        )
    if mol.num_atoms == 0:
        raise SymdiffError(f"{where} has no atoms")


def load_user_molecules(
    paths: list[str],
    dataset: DatasetInfo,
    *,
    strict: bool = False,
    report: Callable[[str], None] | None = None,
) -> PackedMolecules:
    """All molecules of the given files and directories, checked against `dataset`.

    A directory contributes its .xyz, .sdf, .mol and .npz files in sorted name order
    (not recursively). Every element must be one of `dataset.atom_types` and no molecule
    may exceed `dataset.max_atoms`; otherwise SymdiffError names the file and molecule.
    Unreadable records are skipped (strict: an error); `report` receives one line per file that
    had any, so the caller can show it. A file named twice (directly and through its directory,
    say) is read once, and reported.
    """
    if not paths:
        raise SymdiffError("no training data files given")
    molecules: list[Molecule] = []
    seen: set[str] = set()
    for path in paths:
        for file_path in _files_of(path):
            real_path = os.path.realpath(file_path)
            if real_path in seen:  # `--data dir --data dir/a.sdf`: its molecules would count twice
                if report is not None:
                    report(f"{file_path}: given more than once, read once")
                continue
            seen.add(real_path)
            file_molecules, skipped = read_molecules(file_path, strict=strict)
            if skipped and report is not None:
                report(f"{file_path}: skipped {skipped} unreadable record{'s' if skipped != 1 else ''}")
            for index, mol in enumerate(file_molecules, start=1):
                _check_against_dataset(mol, dataset, f"{file_path}, molecule {index}")
            molecules.extend(file_molecules)
    packed = PackedMolecules.from_molecules(molecules)
    packed.positions = packed.positions.astype(np.float32)
    return packed


def _load_plain_npy(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise SymdiffError(f"no such file: {path}")
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":  # numpy calls anything else pickled data
            raise SymdiffError(f"{path} is not a .npy array ({what} of --data-format geom is EDM's processed .npy)")
    try:
        # Memory-mapped: the GEOM-Drugs conformer array is several gigabytes.
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err):
            raise SymdiffError(f"{path} holds pickled data; refusing to load it ({what} must be a plain .npy array)") from None
        raise SymdiffError(f"{path} is not a readable .npy array ({err})") from None
    except Exception as err:  # numpy raises several unrelated classes for bad headers
        raise SymdiffError(f"{path} is not a readable .npy array ({err})") from None


def load_geom_processed(
    conformers_npy: str,
    n_atoms_npy: str | None = None,
    *,
    dataset: DatasetInfo = GEOM,
) -> PackedMolecules:
    """GEOM-Drugs in the processed layout of the EDM code (e.g. geom_drugs_30.npy).

    `conformers_npy` holds a (total_atoms, 5) float array with rows
    (conformer id, atomic number, x, y, z), the atoms of one conformer contiguous.
    `n_atoms_npy` (e.g. geom_drugs_n_30.npy) holds the atom count of each conformer; when
    absent, conformers are the runs of equal consecutive ids. Elements are checked against
    `dataset` (GEOM by default), as are conformer sizes.
    """
    table = _load_plain_npy(conformers_npy, "the conformer table")
    if table.ndim != 2 or table.shape[1] != 5:
        raise SymdiffError(
            f"{conformers_npy}: expected a (total_atoms, 5) array of (conformer id, atomic number, "
            f"x, y, z) rows, got shape {table.shape}"
        )
    if table.dtype.kind not in "iuf":
        raise SymdiffError(f"{conformers_npy}: expected numbers, got dtype {table.dtype}")
    if len(table) == 0:
        raise SymdiffError(f"no molecules in {conformers_npy}")
    conformer_ids = np.asarray(table[:, 0])
    atomic_numbers_float = np.asarray(table[:, 1], dtype=np.float64)
    positions = np.asarray(table[:, 2:5], dtype=np.float32)

    if np.any(atomic_numbers_float != np.round(atomic_numbers_float)):
        raise SymdiffError(f"{conformers_npy}: column 2 (atomic number) holds non-integer values")
    atomic_numbers = atomic_numbers_float.astype(np.int64)
    present = np.unique(atomic_numbers)
    unknown = [int(z) for z in present if int(z) not in dataset.atomic_numbers]
    if unknown:
        names = []
        for z in unknown:
            try:
                names.append(element_symbol(z))
            except SymdiffError:
                names.append(f"Z={z}")
        raise SymdiffError(
            f"{conformers_npy} contains element(s) {' '.join(names)}, not among the {dataset.name} "
            f"atom types ({' '.join(dataset.atom_types)})"
        )
    if not np.isfinite(positions).all():
        raise SymdiffError(f"{conformers_npy}: coordinates contain NaN or infinity")

    if n_atoms_npy is not None:
        counts = np.asarray(_load_plain_npy(n_atoms_npy, "the atom counts")).reshape(-1)
        if counts.dtype.kind not in "iuf" or np.any(counts != np.round(counts)) or np.any(counts < 1):
            raise SymdiffError(f"{n_atoms_npy}: atom counts must be positive whole numbers")
        counts = counts.astype(np.int64)
        if counts.sum() != len(table):
            raise SymdiffError(
                f"{n_atoms_npy}: atom counts sum to {int(counts.sum())}, but {conformers_npy} has "
                f"{len(table)} atom rows"
            )
    else:
        # A new conformer starts wherever the id changes, as the EDM loader splits them.
        starts = np.concatenate([[0], np.nonzero(conformer_ids[1:] != conformer_ids[:-1])[0] + 1])
        counts = np.diff(np.concatenate([starts, [len(table)]])).astype(np.int64)

    largest = int(counts.max())
    if largest > dataset.max_atoms:
        conformer = int(np.argmax(counts))
        raise SymdiffError(
            f"{conformers_npy}: conformer {conformer} has {largest} atoms; the {dataset.name} "
            f"configuration allows at most {dataset.max_atoms}"
        )
    return PackedMolecules(positions, atomic_numbers, counts)
