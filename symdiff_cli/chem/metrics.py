"""The QM9 benchmark metrics: stability, validity, uniqueness, novelty (EDM protocol).

Definitions follow Hoogeboom et al. 2022 (EDM):
- an atom is stable when the sum of its perceived bond orders is its allowed valence (or one
  of them); atom stability is pooled over all atoms of all molecules;
- a molecule is stable when all its atoms are;
- a molecule is valid when the RDKit molecule built from the perceived bonds sanitises; its
  SMILES is that of the largest fragment. Strictly valid: sanitises and is one fragment;
- uniqueness = distinct valid SMILES / valid molecules; novelty = distinct valid SMILES not
  in the reference (training) set / distinct valid SMILES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from rdkit import Chem, rdBase

from symdiff_cli.chem.bonds import bond_order_matrix, load_bond_rules
from symdiff_cli.chem.composition import check_composition, failure_cause
from symdiff_cli.chem.rdkit_mol import to_rdkit_mol
from symdiff_cli.chem.molecule import Molecule, PackedMolecules

# Bond-order sums at or above this are never an allowed valence (the largest listed is 5).
_MAX_VALENCE_SUM = 16


@lru_cache(maxsize=1)
def _allowed_valence_table() -> np.ndarray:
    """Boolean (84, 16) table: allowed[z, s] is True when bond-order sum s is allowed for z."""
    rules = load_bond_rules()
    allowed = np.zeros((len(rules.valence), _MAX_VALENCE_SUM), dtype=bool)
    for z, valences in enumerate(rules.valence):
        for v in valences:
            allowed[z, v] = True
    return allowed


def stable_atoms(atomic_numbers: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Boolean (N,) mask of atoms whose bond-order sum is an allowed valence.

    Elements without an allowed valence in the rules (unknown to the benchmark) are unstable.
    """
    allowed = _allowed_valence_table()
    z = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
    valence_sum = np.asarray(orders).sum(axis=1)
    in_table = (z >= 0) & (z < allowed.shape[0]) & (valence_sum < _MAX_VALENCE_SUM)
    result = np.zeros(len(z), dtype=bool)
    result[in_table] = allowed[z[in_table], valence_sum[in_table]]
    return result


@dataclass
class MoleculeReport:
    """The metrics of one molecule. `smiles` is the largest fragment's, None when invalid."""

    num_atoms: int
    num_stable_atoms: int
    stable: bool
    valid: bool
    strict_valid: bool
    smiles: str | None
    fragments: int
    # Composition diagnostics (chem/composition.py): why an unstable molecule is unstable.
    odd_electrons: bool = False
    hydrogen_balance: int = 0
    isolated_atoms: int = 0
    failure: str = "stable"


def rdkit_validity(rdmol: Chem.Mol) -> tuple[bool, str | None, int]:
    """(valid, largest-fragment SMILES, number of fragments) of an unsanitised molecule.

    EDM's rule: sanitise; if that works take the largest fragment (by atom count) and its
    canonical SMILES.
    """
    fragments = len(Chem.GetMolFrags(rdmol))
    mol = Chem.Mol(rdmol)
    try:
        # Invalid molecules are expected here; RDKit would log every sanitisation failure.
        with rdBase.BlockLogs():
            Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several unrelated classes (valence, kekulisation, ...)
        return False, None, fragments
    largest = max(Chem.GetMolFrags(mol, asMols=True), key=lambda m: m.GetNumAtoms(), default=mol)
    return True, Chem.MolToSmiles(largest), fragments


def evaluate_molecule(mol: Molecule) -> MoleculeReport:
    """Perceive bonds and compute the per-molecule metrics.

    A molecule without atoms is reported unstable and invalid rather than vacuously stable.
    """
    if mol.num_atoms == 0:
        return MoleculeReport(0, 0, False, False, False, None, 0, failure="composition")
    orders = bond_order_matrix(mol.atomic_numbers, mol.positions)
    num_stable = int(stable_atoms(mol.atomic_numbers, orders).sum())
    # Neutral atoms, as EDM's check builds them: a file's formal charges belong to its own bonds,
    # not to the ones perceived here (the same coordinates from an XYZ would be judged otherwise).
    neutral = Molecule(mol.atomic_numbers, mol.positions)
    valid, smiles, fragments = rdkit_validity(to_rdkit_mol(neutral, orders))
    stable = num_stable == mol.num_atoms
    composition = check_composition(mol.atomic_numbers, orders)
    return MoleculeReport(
        num_atoms=mol.num_atoms,
        num_stable_atoms=num_stable,
        stable=stable,
        valid=valid,
        strict_valid=valid and fragments == 1,
        smiles=smiles,
        fragments=fragments,
        odd_electrons=composition.odd_electrons,
        hydrogen_balance=composition.hydrogen_balance,
        isolated_atoms=composition.isolated_atoms,
        failure=failure_cause(stable, composition),
    )


def uniqueness(valid_smiles: Sequence[str]) -> float:
    """Distinct SMILES / number of SMILES (0 when there are none)."""
    return len(set(valid_smiles)) / len(valid_smiles) if valid_smiles else 0.0


def novelty(valid_smiles: Iterable[str], reference_smiles: set[str] | frozenset[str]) -> float:
    """Fraction of the distinct SMILES that are not in the reference set (0 when none)."""
    unique = set(valid_smiles)
    return len(unique - reference_smiles) / len(unique) if unique else 0.0


def _fraction(count: int, total: int) -> float:
    return count / total if total else 0.0


@dataclass
class EvaluationResult:
    """Counts and fractions over a set of molecules, plus the per-molecule reports."""

    num_molecules: int
    num_atoms: int
    num_stable_atoms: int
    num_stable_molecules: int
    num_valid: int
    num_strict_valid: int
    num_unique: int
    num_novel: int | None
    reports: list[MoleculeReport] = field(default_factory=list, repr=False)

    @property
    def atom_stability(self) -> float:
        return _fraction(self.num_stable_atoms, self.num_atoms)

    @property
    def molecule_stability(self) -> float:
        return _fraction(self.num_stable_molecules, self.num_molecules)

    @property
    def validity(self) -> float:
        return _fraction(self.num_valid, self.num_molecules)

    @property
    def strict_validity(self) -> float:
        return _fraction(self.num_strict_valid, self.num_molecules)

    @property
    def uniqueness(self) -> float:
        return _fraction(self.num_unique, self.num_valid)

    @property
    def valid_and_unique(self) -> float:
        return _fraction(self.num_unique, self.num_molecules)

    @property
    def novelty(self) -> float | None:
        return None if self.num_novel is None else _fraction(self.num_novel, self.num_unique)

    def as_dict(self, per_molecule: bool = False) -> dict:
        """JSON-ready counts and fractions (fractions in [0, 1]); reports only on request."""
        out = {
            "counts": {
                "molecules": self.num_molecules,
                "atoms": self.num_atoms,
                "stable_atoms": self.num_stable_atoms,
                "stable_molecules": self.num_stable_molecules,
                "valid": self.num_valid,
                "strict_valid": self.num_strict_valid,
                "unique": self.num_unique,
                "novel": self.num_novel,
            },
            "fractions": {
                "atom_stability": self.atom_stability,
                "molecule_stability": self.molecule_stability,
                "validity": self.validity,
                "strict_validity": self.strict_validity,
                "uniqueness": self.uniqueness,
                "valid_and_unique": self.valid_and_unique,
                "novelty": self.novelty,
            },
        }
        if per_molecule:
            out["molecules"] = [asdict(r) for r in self.reports]
        return out


def summarise(reports: list[MoleculeReport], reference_smiles: set[str] | frozenset[str] | None = None) -> EvaluationResult:
    """Aggregate per-molecule reports; novelty only when a reference set is given."""
    valid_smiles = [r.smiles for r in reports if r.valid and r.smiles is not None]
    unique = set(valid_smiles)
    return EvaluationResult(
        num_molecules=len(reports),
        num_atoms=sum(r.num_atoms for r in reports),
        num_stable_atoms=sum(r.num_stable_atoms for r in reports),
        num_stable_molecules=sum(r.stable for r in reports),
        num_valid=sum(r.valid for r in reports),
        num_strict_valid=sum(r.strict_valid for r in reports),
        num_unique=len(unique),
        num_novel=None if reference_smiles is None else len(unique - reference_smiles),
        reports=reports,
    )


def evaluate_molecules(
    mols: Sequence[Molecule] | PackedMolecules,
    reference_smiles: set[str] | frozenset[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Evaluate molecules one by one (bond perception is vectorised per molecule).

    `on_progress(done, total)` is called after each molecule; the command line draws its
    progress bar from it. One molecule is a fraction of a millisecond (benchmarks/eval_bench.py),
    so the QM9 test split takes seconds and a process pool would not repay its start-up cost.
    """
    if isinstance(mols, PackedMolecules):
        mols = mols.to_molecules()
    reports = []
    for mol in mols:
        reports.append(evaluate_molecule(mol))
        if on_progress is not None:
            on_progress(len(reports), len(mols))
    return summarise(reports, reference_smiles)
