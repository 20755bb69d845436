"""Training data from user files and the processed GEOM-Drugs layout."""

from __future__ import annotations

import numpy as np
import pytest

from symdiff_cli.chem.elements import GEOM, QM9
from symdiff_cli.data.user_data import load_geom_processed, load_user_molecules
from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.writer import write_molecules
from symdiff_cli.io.molecule import Molecule

WATER = Molecule([8, 1, 1], [[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]], props={"name": "water"})
AMMONIA = Molecule([7, 1, 1, 1], [[0, 0, 0.11], [0, 0.94, -0.26], [0.81, -0.47, -0.26], [-0.81, -0.47, -0.26]])
HYDROGEN_CHLORIDE = Molecule([17, 1], [[0, 0, 0], [1.27, 0, 0]])


def test_directory_of_mixed_files_in_sorted_order(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_molecules(str(data_dir / "b.sdf"), [AMMONIA])
    write_molecules(str(data_dir / "a.xyz"), [WATER, WATER])
    write_molecules(str(data_dir / "c.npz"), [AMMONIA, WATER])
    (data_dir / "notes.txt").write_text("ignored")
    write_molecules(str(data_dir / "ignored.smi"), [WATER])

    packed = load_user_molecules([str(data_dir)], QM9)
    assert packed.num_atoms.tolist() == [3, 3, 4, 4, 3]
    assert packed.positions.dtype == np.float32
    np.testing.assert_allclose(packed.molecule(2).positions, AMMONIA.positions, atol=1e-4)
    assert packed.molecule(4).atomic_numbers.tolist() == [8, 1, 1]


def test_files_and_directories_combine(tmp_path):
    write_molecules(str(tmp_path / "w.xyz"), [WATER])
    write_molecules(str(tmp_path / "n.sdf"), [AMMONIA])
    packed = load_user_molecules([str(tmp_path / "n.sdf"), str(tmp_path / "w.xyz")], QM9)
    assert packed.num_atoms.tolist() == [4, 3]


def test_element_outside_the_dataset_is_named(tmp_path):
    path = tmp_path / "hcl.xyz"
    write_molecules(str(path), [WATER, HYDROGEN_CHLORIDE])
    with pytest.raises(SymdiffError) as caught:
        load_user_molecules([str(path)], QM9)
    message = str(caught.value)
    assert "Cl" in message and "hcl.xyz" in message and "molecule 2" in message
    assert "H C N O F" in message
    # GEOM-Drugs has chlorine.
    assert load_user_molecules([str(path)], GEOM).num_atoms.tolist() == [3, 2]


def test_molecule_larger_than_the_dataset_allows(tmp_path):
    path = tmp_path / "big.xyz"
    chain = Molecule([1] * 30, np.arange(90, dtype=float).reshape(30, 3))
    write_molecules(str(path), [chain])
    with pytest.raises(SymdiffError, match="30 atoms.*at most 29"):
        load_user_molecules([str(path)], QM9)


def test_missing_paths_and_empty_directories(tmp_path):
    with pytest.raises(SymdiffError, match="no such file"):
        load_user_molecules([str(tmp_path / "absent")], QM9)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SymdiffError, match="no molecule files"):
        load_user_molecules([str(tmp_path / "empty")], QM9)
    smiles = tmp_path / "x.smi"
    smiles.write_text("CCO\n")
    with pytest.raises(SymdiffError, match="3D"):
        load_user_molecules([str(smiles)], QM9)


def test_unreadable_records_are_reported(tmp_path):
    from symdiff_cli.io.sdf import sdf_block

    path = tmp_path / "mixed.sdf"
    path.write_text(sdf_block(WATER) + "broken\n\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n")
    messages: list[str] = []
    packed = load_user_molecules([str(path)], QM9, report=messages.append)
    assert len(packed) == 1
    assert messages == [f"{path}: skipped 1 unreadable record"]
    with pytest.raises(SymdiffError, match="record 2"):
        load_user_molecules([str(path)], QM9, strict=True)


# --- GEOM-Drugs processed layout ----------------------------------------------------------


def _synthetic_geom(tmp_path):
    """Three conformers in the EDM layout: rows (conformer id, atomic number, x, y, z)."""
    conformers = [
        (0, [6, 8, 1, 1]),
        (1, [35, 6, 1, 1, 1]),  # bromomethane
        (2, [8, 1, 1]),
    ]
    rng = np.random.default_rng(0)
    rows = []
    for conformer_id, numbers in conformers:
        for z in numbers:
            rows.append([conformer_id, z, *rng.normal(size=3)])
    table = np.array(rows, dtype=np.float64)
    conformers_path = tmp_path / "geom_drugs_30.npy"
    counts_path = tmp_path / "geom_drugs_n_30.npy"
    np.save(conformers_path, table)
    np.save(counts_path, np.array([4, 5, 3]))
    return table, str(conformers_path), str(counts_path)


def test_geom_processed_with_and_without_counts(tmp_path):
    table, conformers_path, counts_path = _synthetic_geom(tmp_path)
    with_counts = load_geom_processed(conformers_path, counts_path)
    derived = load_geom_processed(conformers_path)
    for packed in (with_counts, derived):
        assert packed.num_atoms.tolist() == [4, 5, 3]
        assert packed.atomic_numbers.tolist() == table[:, 1].astype(int).tolist()
        np.testing.assert_allclose(packed.positions, table[:, 2:], rtol=1e-6)
        assert packed.molecule(1).atomic_numbers.tolist() == [35, 6, 1, 1, 1]


def test_geom_processed_errors(tmp_path):
    table, conformers_path, _ = _synthetic_geom(tmp_path)
    wrong_counts = tmp_path / "n.npy"
    np.save(wrong_counts, np.array([4, 4]))
    with pytest.raises(SymdiffError, match="sum to 8"):
        load_geom_processed(conformers_path, str(wrong_counts))

    wrong_shape = tmp_path / "shape.npy"
    np.save(wrong_shape, table[:, :4])
    with pytest.raises(SymdiffError, match="5\\) array"):
        load_geom_processed(str(wrong_shape))

    sodium = table.copy()
    sodium[0, 1] = 11
    sodium_path = tmp_path / "sodium.npy"
    np.save(sodium_path, sodium)
    with pytest.raises(SymdiffError, match="Na"):
        load_geom_processed(str(sodium_path))

    with pytest.raises(SymdiffError, match="at most 4"):
        load_geom_processed(conformers_path, dataset=type(GEOM)("tiny", GEOM.atom_types, 4))

    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(SymdiffError, match="pickle"):
        load_geom_processed(str(pickled))

    with pytest.raises(SymdiffError, match="no such file"):
        load_geom_processed(str(tmp_path / "absent.npy"))
