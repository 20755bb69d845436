"""`symdiff evaluate --energy`: xtb energies of molecules, and the QM9 test split's as reference.

The reference relaxes a fixed random subsample of the QM9 test split (seed 0): the whole split
(about 13,000 molecules at roughly half a second each) would take hours on a laptop, while
the quartiles of a few hundred molecules are steady to a few percent. The result is cached in
the data cache folder ($SYMDIFF_CACHE or ~/.cache/symdiff), keyed by the subsample size and
the relaxation settings, so it is computed once.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np

from symdiff_cli.chem.energy import MoleculeEnergy, summarise_energies
from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.relax import DEFAULT_FMAX, DEFAULT_MAX_STEPS, RelaxSettings

DEFAULT_REFERENCE_MOLECULES = 200
_REFERENCE_SEED = 0
_CACHE_VERSION = 1


def molecule_energies(molecules: Sequence[Molecule], workers: int | None = None,
                      on_done: Callable[[int], None] | None = None) -> list[MoleculeEnergy]:
    """GFN2-xTB energy of each molecule as given and relaxed, its strain and its RMSD."""
    from symdiff_cli.engine.relax_pool import RelaxPool

    with RelaxPool(RelaxSettings("xtb", DEFAULT_MAX_STEPS, DEFAULT_FMAX), workers) as pool:
        outcomes = pool.relax(list(molecules), on_done)
    return [MoleculeEnergy.from_outcome(outcome) for outcome in outcomes]


def _reference_cache_path(count: int):
    from symdiff_cli.data.qm9 import CACHE_VERSION, cache_dir

    return cache_dir() / (f"qm9_v{CACHE_VERSION}_test_xtb_energy_v{_CACHE_VERSION}_n{count}_seed{_REFERENCE_SEED}"
                          f"_steps{DEFAULT_MAX_STEPS}_fmax{DEFAULT_FMAX:g}.json")


def qm9_energy_reference(count: int = DEFAULT_REFERENCE_MOLECULES, workers: int | None = None,
                         on_done: Callable[[int], None] | None = None) -> dict:
    """summarise_energies of `count` QM9 test molecules drawn with seed 0 (all when fewer),
    plus "sample": how they were drawn; read from the cache when it holds them."""
    import sys

    from symdiff_cli.data.qm9 import qm9_split
    from symdiff_cli.io.atomic import atomic_output

    path = _reference_cache_path(count)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass  # not computed yet, or damaged: computed again below
    packed = qm9_split("test")
    take = min(count, len(packed))
    indices = np.sort(np.random.default_rng(_REFERENCE_SEED).choice(len(packed), size=take, replace=False))
    energies = molecule_energies(packed.subset(indices).to_molecules(), workers, on_done)
    summary = summarise_energies(energies)
    summary["sample"] = f"{take} of the {len(packed)} QM9 test molecules, drawn with seed {_REFERENCE_SEED}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, "w") as handle:
            handle.write(json.dumps(summary, indent=2) + "\n")
    except OSError as err:
        # A read-only cache folder should not stop evaluation; it only costs computing again.
        sys.stderr.write(f"Warning: could not write the energy reference cache {path}: {err}\n")
    return summary


__all__ = ["DEFAULT_REFERENCE_MOLECULES", "molecule_energies", "qm9_energy_reference"]
