"""The in-memory molecule shared by I/O, metrics, data and sampling."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Molecule:
    """A 3D molecule: atomic numbers (N,) int and positions (N, 3) float64 in Angstrom.

    `bonds` is optional (M, 3) int rows (i, j, order) when the source carried bonds (SDF) or
    they were perceived; `props` holds string tags (SDF properties, XYZ comment as "name").
    `formal_charges` is optional (N,) int when the source carried charges (an SDF's charged
    atoms): relaxation needs the net charge, and SDF output keeps them. `radicals` is optional
    (N,) int unpaired electrons, when an SDF marked them (M  RAD, or a valence field that allows
    no implicit hydrogens): SDF output writes them again, so a reader adds no hydrogens there.
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray
    bonds: np.ndarray | None = None
    props: dict[str, str] = field(default_factory=dict)
    formal_charges: np.ndarray | None = None
    radicals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        if len(self.atomic_numbers) != len(self.positions):
            raise ValueError("atomic_numbers and positions differ in length")

    @property
    def num_atoms(self) -> int:
        return int(len(self.atomic_numbers))


@dataclass
class PackedMolecules:
    """Many molecules in three flat arrays: the npz batch format and the training-data layout.

    positions (total_atoms, 3) float, atomic_numbers (total_atoms,) int, num_atoms (M,) int;
    molecule k owns rows offsets[k] : offsets[k] + num_atoms[k].
    """

    positions: np.ndarray
    atomic_numbers: np.ndarray
    num_atoms: np.ndarray

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions).reshape(-1, 3)
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        self.num_atoms = np.asarray(self.num_atoms, dtype=np.int64).reshape(-1)
        if len(self.positions) != len(self.atomic_numbers) or self.num_atoms.sum() != len(self.positions):
            raise ValueError("inconsistent packed molecule arrays")

    def __len__(self) -> int:
        return int(len(self.num_atoms))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.num_atoms)[:-1]]).astype(np.int64)

    def molecule(self, k: int) -> Molecule:
        start = int(self.offsets[k]) if k else 0
        stop = start + int(self.num_atoms[k])
        return Molecule(self.atomic_numbers[start:stop], self.positions[start:stop])

    def to_molecules(self) -> list[Molecule]:
        bounds = np.cumsum(self.num_atoms)[:-1]
        return [
            Molecule(z, x)
            for z, x in zip(np.split(self.atomic_numbers, bounds), np.split(self.positions, bounds))
        ]

    @classmethod
    def from_molecules(cls, mols: "list[Molecule]") -> "PackedMolecules":
        if not mols:
            return cls(np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return cls(
            np.concatenate([m.positions for m in mols]),
            np.concatenate([m.atomic_numbers for m in mols]),
            np.array([m.num_atoms for m in mols]),
        )

    def subset(self, indices: np.ndarray) -> "PackedMolecules":
        indices = np.asarray(indices, dtype=np.int64)
        counts = self.num_atoms[indices]
        new_starts = np.cumsum(counts) - counts
        # Row r of the subset, inside its molecule j, comes from offsets[j] + (r - new_starts[j]).
        rows = np.arange(int(counts.sum())) + np.repeat(self.offsets[indices] - new_starts, counts)
        return PackedMolecules(self.positions[rows], self.atomic_numbers[rows], self.num_atoms[indices])
