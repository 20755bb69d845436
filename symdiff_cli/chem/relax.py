"""Geometry relaxation of one molecule: GFN2-xTB (tblite + ASE) or RDKit's MMFF94.

Generated coordinates are close to, but not at, a minimum of any energy: bond lengths are a
few hundredths of an Angstrom off and hydrogens sit at odd angles. Docking and quantum
chemistry users expect relaxed geometries, and recent re-evaluations of 3D generators judge
them by the energy a GFN2-xTB relaxation releases (the strain energy) and how far the atoms
move (the RMSD). This module relaxes one molecule and reports both; engine/relax_pool.py runs
it over many molecules in worker processes.

- xtb: GFN2-xTB through tblite's Python API, minimised by ASE's BFGS to a largest force of
  0.05 eV/Angstrom (the threshold common in the literature) or a step cap. The charge is the
  molecule's formal charge (0 for generated molecules, which carry none) and the spin
  multiplicity follows from the electron count: a singlet for an even count, a doublet for an
  odd one (a radical), so that odd-electron samples still get a defined calculation.
- mmff: RDKit's MMFF94 for molecules whose bonds can be assigned (the molecule's own bonds, or
  the benchmark's perceived ones, must sanitise with every hydrogen explicit and MMFF must
  type every atom). Others are left as they are, with status "unassigned".

tblite and ase are an optional extra (`pip install 'symdiff-cli[relax]'`); without them
`require_method("xtb")` is a one-line SymdiffError that says what to install.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.errors import SymdiffError

RELAX_METHODS = ("none", "xtb", "mmff")
# The optimiser's convergence threshold: the largest atomic force, in eV/Angstrom.
DEFAULT_FMAX = 0.05
# Optimiser steps before giving up on a molecule (it is then kept relaxed as far as it got and
# tagged as not converged). 300 BFGS steps are ample for QM9-sized molecules from a reasonable
# start; a sample with overlapping atoms may not converge at all and must not run for minutes.
DEFAULT_MAX_STEPS = 300
# The largest step the optimiser takes, in Angstrom (ASE's BFGS default): samples with atoms
# far too close have huge forces, and a larger step would throw atoms apart.
MAX_STEP_ANGSTROM = 0.2

EV_TO_KCAL_PER_MOL = 23.060547830619026

RELAX_EXTRA_HINT = "pip install 'symdiff-cli[relax]' (or: pip install tblite ase)"

# Statuses a relaxation ends with.
CONVERGED = "converged"
STEP_CAP = "step-cap"  # relaxed as far as the step cap allowed
FAILED = "failed"  # the calculation failed (e.g. the SCF did not converge); coordinates unchanged
UNASSIGNED = "unassigned"  # mmff: no bonds that MMFF can type; coordinates unchanged


@dataclass(frozen=True)
class RelaxSettings:
    """How to relax: method (xtb, mmff), optimiser step cap and force threshold (xtb)."""

    method: str
    max_steps: int = DEFAULT_MAX_STEPS
    fmax: float = DEFAULT_FMAX


@dataclass
class RelaxOutcome:
    """What relaxing one molecule gave.

    `positions` are the relaxed coordinates (the input's when not relaxed). Energies are in
    kcal/mol at the method's level of theory: `energy` at the final geometry, `energy_drop`
    the start's energy minus it (the strain energy the relaxation released). `rmsd` is the
    heavy-atom RMSD in Angstrom between start and end after optimal superposition.
    """

    method: str
    status: str
    positions: np.ndarray
    energy: float | None = None
    energy_drop: float | None = None
    rmsd: float | None = None
    steps: int = 0
    cpu_seconds: float = 0.0  # the relaxation's CPU time (for benchmarks; never written to a file)

    @property
    def converged(self) -> bool:
        return self.status == CONVERGED

    @property
    def relaxed(self) -> bool:
        """The coordinates were moved by the optimiser (converged or stopped at the cap)."""
        return self.status in (CONVERGED, STEP_CAP)


def xtb_available() -> bool:
    """True when tblite and ase can be imported."""
    try:
        import ase.optimize  # noqa: F401
        import tblite.interface  # noqa: F401
    except ImportError:
        return False
    return True


def require_method(method: str) -> None:
    """Check that `method` is known and its packages are installed; a one-line error if not."""
    if method not in RELAX_METHODS:
        raise SymdiffError(f"unknown relaxation {method!r} (choose from {', '.join(RELAX_METHODS)})")
    if method == "xtb" and not xtb_available():
        raise SymdiffError(f"--relax xtb needs the optional packages tblite and ase: {RELAX_EXTRA_HINT}")


def total_charge(mol: Molecule) -> int:
    """The molecule's net formal charge: the sum of its atoms' formal charges, 0 when it has none."""
    charges = getattr(mol, "formal_charges", None)
    return 0 if charges is None else int(np.asarray(charges).sum())


def unpaired_electrons(atomic_numbers: np.ndarray, charge: int) -> int:
    """0 for an even electron count (singlet), 1 for an odd one (doublet, a radical)."""
    return int((int(np.asarray(atomic_numbers).sum()) - charge) % 2)


def heavy_atom_rmsd(atomic_numbers: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    """RMSD in Angstrom between two conformations of the same atoms, over the heavy atoms,
    after the rotation and translation that minimise it (Kabsch); all atoms when there are
    no heavy atoms. Atom order is the same in both, so no matching is needed."""
    heavy = np.asarray(atomic_numbers) != 1
    if not heavy.any():
        heavy = np.ones(len(heavy), dtype=bool)
    a = np.asarray(start, dtype=np.float64)[heavy]
    b = np.asarray(end, dtype=np.float64)[heavy]
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    if len(a) > 1:
        u, _, vt = np.linalg.svd(a.T @ b)
        # Flip the last axis when the best orthogonal map is a reflection: only rotations are allowed.
        d = np.sign(np.linalg.det(u @ vt)) or 1.0
        rotation = u @ np.diag([1.0, 1.0, d]) @ vt
        a = a @ rotation
    return float(np.sqrt(((a - b) ** 2).sum(axis=1).mean()))


def _outcome(method: str, status: str, mol: Molecule, positions: np.ndarray, start_energy: float,
             end_energy: float, steps: int) -> RelaxOutcome:
    return RelaxOutcome(method=method, status=status, positions=positions, energy=end_energy,
                        energy_drop=start_energy - end_energy,
                        rmsd=heavy_atom_rmsd(mol.atomic_numbers, mol.positions, positions), steps=steps)


# --------------------------------------------------------------------------------------
# GFN2-xTB


def _relax_xtb(mol: Molecule, settings: RelaxSettings) -> RelaxOutcome:
    from ase import Atoms
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    charge = total_charge(mol)
    atoms = Atoms(numbers=mol.atomic_numbers, positions=mol.positions.copy())
    # verbosity 0: tblite would otherwise print every SCF to standard output, where the
    # molecules may be going (--out -).
    atoms.calc = TBLite(method="GFN2-xTB", charge=charge,
                        multiplicity=1 + unpaired_electrons(mol.atomic_numbers, charge), verbosity=0)
    try:
        start_energy = float(atoms.get_potential_energy()) * EV_TO_KCAL_PER_MOL
        # logfile None: ASE's optimisers log to standard output by default.
        optimiser = BFGS(atoms, logfile=None, maxstep=MAX_STEP_ANGSTROM)
        converged = bool(optimiser.run(fmax=settings.fmax, steps=settings.max_steps))
        end_energy = float(atoms.get_potential_energy()) * EV_TO_KCAL_PER_MOL
    except Exception:  # tblite raises its own errors (SCF not converged, bad geometry) through ASE
        return RelaxOutcome(method="xtb", status=FAILED, positions=mol.positions.copy())
    positions = np.asarray(atoms.get_positions(), dtype=np.float64)
    if not (np.isfinite(positions).all() and np.isfinite(end_energy)):
        return RelaxOutcome(method="xtb", status=FAILED, positions=mol.positions.copy())
    return _outcome("xtb", CONVERGED if converged else STEP_CAP, mol, positions, start_energy, end_energy,
                    int(optimiser.nsteps))


# --------------------------------------------------------------------------------------
# MMFF94


def _mmff_ready_mol(mol: Molecule):
    """A sanitised RDKit molecule with every hydrogen explicit, from the molecule's own bonds or
    the benchmark's perceived ones, or None when no such molecule exists (MMFF cannot type it)."""
    from rdkit import Chem, rdBase

    from symdiff_cli.chem.bonds import benchmark_bonds
    from symdiff_cli.chem.rdkit_mol import rdkit_mol_from_bonds

    bonds = mol.bonds if mol.bonds is not None else benchmark_bonds(mol.atomic_numbers, mol.positions)
    rd_mol = Chem.Mol(rdkit_mol_from_bonds(mol, bonds))
    for atom in rd_mol.GetAtoms():
        # The atoms are all there: RDKit must not invent hydrogens for under-bonded atoms.
        atom.SetNoImplicit(True)
    try:
        with rdBase.BlockLogs():
            Chem.SanitizeMol(rd_mol)
    except Exception:  # RDKit raises several unrelated classes (valence, kekulisation, ...)
        return None
    if any(atom.GetNumRadicalElectrons() for atom in rd_mol.GetAtoms()):
        # An under-bonded atom: the bonds as assigned leave an open valence, which MMFF94 has no type for.
        return None
    return rd_mol


def _relax_mmff(mol: Molecule, settings: RelaxSettings) -> RelaxOutcome:
    from rdkit import rdBase
    from rdkit.Chem import rdForceFieldHelpers

    unassigned = RelaxOutcome(method="mmff", status=UNASSIGNED, positions=mol.positions.copy())
    rd_mol = _mmff_ready_mol(mol)
    if rd_mol is None:
        return unassigned
    with rdBase.BlockLogs():
        properties = rdForceFieldHelpers.MMFFGetMoleculeProperties(rd_mol)
        if properties is None:
            return unassigned
        force_field = rdForceFieldHelpers.MMFFGetMoleculeForceField(rd_mol, properties)
    if force_field is None:
        return unassigned
    start_energy = float(force_field.CalcEnergy())
    # Minimize returns 0 when converged and 1 when it ran out of iterations.
    not_converged = force_field.Minimize(maxIts=settings.max_steps)
    end_energy = float(force_field.CalcEnergy())
    positions = np.asarray(force_field.Positions(), dtype=np.float64).reshape(-1, 3)
    if not (np.isfinite(positions).all() and np.isfinite(end_energy)):
        return RelaxOutcome(method="mmff", status=FAILED, positions=mol.positions.copy())
    return _outcome("mmff", STEP_CAP if not_converged else CONVERGED, mol, positions, start_energy, end_energy,
                    settings.max_steps if not_converged else 0)


def relax_molecule(mol: Molecule, settings: RelaxSettings) -> RelaxOutcome:
    """Relax one molecule with `settings.method` (xtb or mmff); never raises for a bad molecule:
    a failed calculation or an untypeable molecule comes back unchanged with its status."""
    import time

    # CPU time, not wall time: it measures the method on a machine that other work shares.
    started = time.process_time()
    if settings.method == "xtb":
        outcome = _relax_xtb(mol, settings)
    elif settings.method == "mmff":
        outcome = _relax_mmff(mol, settings)
    else:
        raise ValueError(f"relax_molecule: unknown method {settings.method!r}")
    outcome.cpu_seconds = time.process_time() - started
    return outcome


# --------------------------------------------------------------------------------------
# SDF tags

TAG_METHOD = "symdiff_relax_method"
TAG_STATUS = "symdiff_relax_status"
TAG_CONVERGED = "symdiff_relax_converged"
TAG_ENERGY = "symdiff_relax_energy_kcal_mol"
TAG_DROP = "symdiff_relax_energy_drop_kcal_mol"
TAG_RMSD = "symdiff_relax_heavy_rmsd_angstrom"


def relax_tags(outcome: RelaxOutcome) -> dict[str, str]:
    """The per-molecule tags of a relaxation, fixed-point text so that files compare byte for
    byte; energy, drop and RMSD only when the molecule was relaxed."""
    tags = {TAG_METHOD: outcome.method, TAG_STATUS: outcome.status, TAG_CONVERGED: "1" if outcome.converged else "0"}
    if outcome.relaxed:
        tags[TAG_ENERGY] = f"{outcome.energy:.4f}"
        tags[TAG_DROP] = f"{outcome.energy_drop:.4f}"
        tags[TAG_RMSD] = f"{outcome.rmsd:.4f}"
    return tags


__all__ = ["CONVERGED", "DEFAULT_FMAX", "DEFAULT_MAX_STEPS", "FAILED", "RELAX_EXTRA_HINT", "RELAX_METHODS",
           "RelaxOutcome", "RelaxSettings", "STEP_CAP", "UNASSIGNED", "heavy_atom_rmsd", "relax_molecule",
           "relax_tags", "require_method", "total_charge", "unpaired_electrons", "xtb_available"]
