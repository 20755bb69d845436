"""Composition against geometry: why an unstable molecule is unstable (chem/composition.py)."""

from __future__ import annotations

import numpy as np

from symdiff_cli.chem.bonds import bond_order_matrix
from symdiff_cli.chem.composition import check_composition, composition_feasible
from symdiff_cli.chem.metrics import evaluate_molecule, evaluate_molecules
from symdiff_cli.io.molecule import Molecule

H, C, N, O, F = 1, 6, 7, 8, 9
TETRAHEDRON = np.array([[1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]]) / np.sqrt(3)


def methane(ch: float = 1.09) -> Molecule:
    return Molecule([C, H, H, H, H], np.vstack([[0.0, 0.0, 0.0], ch * TETRAHEDRON]))


def methyl_radical() -> Molecule:
    # CH3: 9 electrons. Whatever its geometry, carbon cannot reach valence 4.
    return Molecule([C, H, H, H], np.vstack([[0.0, 0.0, 0.0], 1.09 * TETRAHEDRON[:3]]))


def test_stable_molecule_has_even_electrons_and_balanced_hydrogens():
    report = evaluate_molecule(methane())
    assert report.stable and report.failure == "stable"
    assert not report.odd_electrons and report.hydrogen_balance == 0 and report.isolated_atoms == 0


def test_radical_is_a_composition_failure_with_a_hydrogen_deficit():
    report = evaluate_molecule(methyl_radical())
    assert not report.stable
    assert report.failure == "composition" and report.odd_electrons
    assert report.hydrogen_balance == -1


def test_extra_hydrogen_is_a_composition_failure_with_an_excess():
    # CH4 plus a fifth hydrogen 3 Angstrom away: 11 electrons, one hydrogen more than carbon needs.
    mol = methane()
    mol = Molecule(np.append(mol.atomic_numbers, H), np.vstack([mol.positions, [[3.0, 0.0, 0.0]]]))
    report = evaluate_molecule(mol)
    assert report.failure == "composition" and report.odd_electrons
    assert report.hydrogen_balance == 1 and report.isolated_atoms == 1


def test_stretched_bond_is_a_geometry_failure():
    # Methane with one C-H bond stretched beyond the single-bond threshold (109 + 10 pm).
    mol = methane()
    mol.positions[1] *= 1.25 / 1.09
    report = evaluate_molecule(mol)
    assert not report.stable and report.failure == "geometry"
    assert not report.odd_electrons and report.isolated_atoms == 1
    # Carbon's perceived skeleton (no heavy neighbours) still needs 4 hydrogens: balanced.
    assert report.hydrogen_balance == 0


def test_feasibility_of_element_lists():
    assert composition_feasible(np.array([C, H, H, H, H]))
    assert composition_feasible(np.array([H, H]))
    assert not composition_feasible(np.array([H]))  # one atom cannot bond
    assert not composition_feasible(np.array([C, O]))  # carbon needs 4, oxygen gives 2
    assert not composition_feasible(np.array([C, H, H, H]))  # odd valence sum
    assert composition_feasible(np.array([N, N]))  # N#N
    assert composition_feasible(np.array([C, N, H]))  # HCN


def test_check_composition_counts_isolated_atoms_and_electrons():
    mol = methane()
    orders = bond_order_matrix(mol.atomic_numbers, mol.positions)
    check = check_composition(mol.atomic_numbers, orders)
    assert check.electrons == 10 and check.hydrogens == 4 and check.feasible


def test_per_molecule_json_carries_the_diagnosis():
    result = evaluate_molecules([methane(), methyl_radical()])
    rows = result.as_dict(per_molecule=True)["molecules"]
    assert [r["failure"] for r in rows] == ["stable", "composition"]
    assert [r["odd_electrons"] for r in rows] == [False, True]


def test_evaluate_per_molecule_csv_names_the_failure(tmp_path):
    import csv
    import subprocess
    import sys

    xyz = tmp_path / "two.xyz"
    xyz.write_text(
        "5\nmethane\nC 0 0 0\nH 0.629 0.629 0.629\nH -0.629 -0.629 0.629\nH -0.629 0.629 -0.629\nH 0.629 -0.629 -0.629\n"
        "4\nmethyl\nC 0 0 0\nH 0.629 0.629 0.629\nH -0.629 -0.629 0.629\nH -0.629 0.629 -0.629\n"
    )
    rows_path = tmp_path / "rows.csv"
    result = subprocess.run([sys.executable, "-m", "symdiff_cli", "evaluate", str(xyz), "--no-novelty",
                             "--per-molecule", str(rows_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(rows_path.open()))
    assert [r["failure"] for r in rows] == ["stable", "composition"]
    assert [r["odd_electrons"] for r in rows] == ["0", "1"]
    assert [r["hydrogen_balance"] for r in rows] == ["0", "-1"]
