"""Energy metrics of 3D molecules: GFN2-xTB strain energy and relaxation RMSD.

Recent re-evaluations of 3D generators (GEOM-Drugs) judge geometries by what a GFN2-xTB
relaxation does to them: the strain energy (the energy of the given geometry minus that of
the relaxed one, kcal/mol) and the heavy-atom RMSD between the two. A model whose molecules
sit near real minima has small values; the same numbers for the QM9 test split (DFT-optimised
geometries) are the floor to compare against. Both come from one xtb relaxation per molecule
(chem/relax.py); this module turns the outcomes into per-molecule rows and medians/quartiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from symdiff_cli.chem.relax import RelaxOutcome


@dataclass(frozen=True)
class MoleculeEnergy:
    """One molecule's energies (kcal/mol) and RMSD (Angstrom); None where the calculation failed."""

    status: str
    given: float | None
    relaxed: float | None
    strain: float | None
    rmsd: float | None

    @classmethod
    def from_outcome(cls, outcome: RelaxOutcome) -> "MoleculeEnergy":
        if not outcome.relaxed:
            return cls(outcome.status, None, None, None, None)
        return cls(outcome.status, outcome.energy + outcome.energy_drop, outcome.energy, outcome.energy_drop,
                   outcome.rmsd)


def quartiles(values: Sequence[float]) -> dict[str, float | None]:
    """{"q1", "median", "q3"} of `values` (None for no values)."""
    if not len(values):
        return {"q1": None, "median": None, "q3": None}
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {"q1": float(q1), "median": float(median), "q3": float(q3)}


def summarise_energies(energies: Sequence[MoleculeEnergy]) -> dict:
    """Counts and the quartiles of strain energy and RMSD over the molecules that relaxed.

    Molecules stopped at the step cap count: their strain is a lower bound, and leaving them
    out would flatter a model whose molecules are far from a minimum.
    """
    done = [e for e in energies if e.strain is not None]
    return {
        "molecules": len(energies),
        "relaxed": len(done),
        "converged": sum(e.status == "converged" for e in energies),
        "failed": len(energies) - len(done),
        "strain_kcal_mol": quartiles([e.strain for e in done]),
        "rmsd_angstrom": quartiles([e.rmsd for e in done]),
    }


__all__ = ["MoleculeEnergy", "quartiles", "summarise_energies"]
