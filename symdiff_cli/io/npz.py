"""The npz batch format: the PackedMolecules arrays positions, atomic_numbers and num_atoms."""

from __future__ import annotations

import io
from typing import IO

import numpy as np

from symdiff_cli.chem.molecule import Molecule, PackedMolecules
from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.formats import MAX_ATOMIC_NUMBER

NPZ_KEYS = ("positions", "atomic_numbers", "num_atoms")


def parse_npz(data: bytes, source: str) -> list[Molecule]:
    """The PackedMolecules arrays of an npz archive; archives that need pickle are refused."""
    if not data.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        # numpy takes any other start for a pickle; most often it is just not an npz file.
        what = "pickled Python data" if data.startswith(b"\x80") else "not an npz archive (no zip header)"
        raise SymdiffError(f"{source} is {what}; refusing to load it")
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err):
            raise SymdiffError(f"{source} holds pickled data; refusing to load it (not an npz archive)") from None
        raise SymdiffError(f"{source} is not a readable npz archive ({err})") from None
    except Exception as err:  # zipfile and numpy raise several unrelated classes
        raise SymdiffError(f"{source} is not a readable npz archive ({err})") from None
    if not hasattr(archive, "files"):
        raise SymdiffError(f"{source} holds a single .npy array, not an npz archive with {', '.join(NPZ_KEYS)}")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise SymdiffError(
                f"{source} lacks the npz array(s) {', '.join(missing)} "
                f"(expected {', '.join(NPZ_KEYS)}; found {', '.join(archive.files) or 'none'})"
            )
        arrays = {}
        for key in NPZ_KEYS:
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
        or atomic_numbers.max() > MAX_ATOMIC_NUMBER
    ):
        raise SymdiffError(f"{source}: atomic_numbers must be whole numbers between 1 and {MAX_ATOMIC_NUMBER}")
    num_atoms = arrays["num_atoms"]
    if num_atoms.ndim != 1 or np.any(num_atoms != np.round(num_atoms)) or np.any(num_atoms < 1):
        raise SymdiffError(f"{source}: num_atoms must be a list of whole numbers of at least 1 (one per molecule)")
    if arrays["positions"].ndim != 2 or arrays["positions"].shape[1] != 3:
        raise SymdiffError(f"{source}: positions must have shape (atoms, 3), not {arrays['positions'].shape}")
    try:
        packed = PackedMolecules(arrays["positions"].astype(np.float64), atomic_numbers, arrays["num_atoms"])
    except ValueError:
        raise SymdiffError(
            f"{source}: inconsistent arrays (positions {arrays['positions'].shape}, atomic_numbers "
            f"{atomic_numbers.shape}, num_atoms summing to {int(arrays['num_atoms'].sum())})"
        ) from None
    return packed.to_molecules() if len(packed) else []


class NpzSpill:
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
            for key in NPZ_KEYS:
                self._files[key] = tempfile.TemporaryFile(dir=directory)
        except BaseException:
            self.close()
            raise
        self._rows = dict.fromkeys(NPZ_KEYS, 0)

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
            for key in NPZ_KEYS:
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


