"""Training data as tensors, and batches grouped by atom count (no padding inside a batch)."""

from __future__ import annotations

import numpy as np
import torch

from symdiff_cli.chem.elements import DatasetInfo
from symdiff_cli.io.molecule import PackedMolecules


class MoleculeTensors:
    """A dataset held as flat tensors, gathered into (B, n, .) blocks for molecules of equal size."""

    def __init__(self, packed: PackedMolecules, dataset: DatasetInfo, values: np.ndarray | None = None):
        lookup = np.full(max(dataset.atomic_numbers) + 1, -1, dtype=np.int64)
        for i, z in enumerate(dataset.atomic_numbers):
            lookup[z] = i
        z = packed.atomic_numbers
        if len(z) and (z.max() >= len(lookup) or (lookup[z] < 0).any()):
            bad = sorted(set(int(v) for v in z if v >= len(lookup) or lookup[v] < 0))
            dataset.type_index(bad[0])  # raises a SymdiffError naming the element
        self.positions = torch.from_numpy(np.asarray(packed.positions, dtype=np.float32))
        self.type_index = torch.from_numpy(lookup[z])
        self.charges = torch.from_numpy(z.astype(np.float32))
        self.num_atoms = packed.num_atoms.copy()
        self.offsets = torch.from_numpy(packed.offsets)
        self.num_types = len(dataset.atom_types)
        # A conditional run's raw property values, (M, K), in the order of the model's conditions.
        self.values = None if values is None else torch.from_numpy(np.asarray(values, dtype=np.float32))

    def condition(self, indices: np.ndarray) -> torch.Tensor | None:
        """The property values (B, K) of the molecules `indices`, or None for an unconditional run."""
        return None if self.values is None else self.values[torch.from_numpy(np.asarray(indices))]

    def __len__(self) -> int:
        return int(len(self.num_atoms))

    def gather(self, indices: np.ndarray, norm_one_hot: float, norm_charge: float):
        """x (B, n, 3) CoM-free and h (B, n, F) in model units, for molecules all of size n."""
        n = int(self.num_atoms[indices[0]])
        rows = self.offsets[torch.from_numpy(np.asarray(indices))].unsqueeze(1) + torch.arange(n)
        x = self.positions[rows]
        x = x - x.mean(dim=1, keepdim=True)
        one_hot = torch.nn.functional.one_hot(self.type_index[rows], self.num_types).float()
        h = torch.cat([one_hot / norm_one_hot, self.charges[rows].unsqueeze(-1) / norm_charge], dim=-1)
        return x, h


class SizeGroupedBatches:
    """Deterministic per-epoch batches of molecule indices, every batch of one atom count.

    The order depends only on (seed, epoch), so a resumed run sees the same batches. Under
    distributed training each rank takes every world_size-th batch of the same list.
    """

    def __init__(self, num_atoms: np.ndarray, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.num_atoms = np.asarray(num_atoms)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.by_size = {int(n): np.flatnonzero(self.num_atoms == n) for n in np.unique(self.num_atoms)}

    def epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for n in sorted(self.by_size):
            idx = rng.permutation(self.by_size[n])
            batches.extend(idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size))
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank:usable:self.world_size]

    def __len__(self) -> int:
        total = sum(-(-len(v) // self.batch_size) for v in self.by_size.values())
        return total // self.world_size
