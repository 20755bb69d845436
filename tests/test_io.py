"""Molecule file reading and writing (symdiff_cli.io)."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest

from symdiff_cli.chem.bonds import bond_order_matrix
from symdiff_cli.errors import SymdiffError
from symdiff_cli.chem.perception import perceive_bonds
from symdiff_cli.io.formats import round_to_stored_precision
from symdiff_cli.io.reader import read_molecules
from symdiff_cli.io.sdf import sdf_block
from symdiff_cli.io.smiles import smiles_line
from symdiff_cli.io.writer import MoleculeWriter, write_molecules
from symdiff_cli.io.molecule import Molecule

# Formaldehyde at a realistic geometry (C=O 1.21 A): the benchmark rules see a double bond.
FORMALDEHYDE = Molecule(
    [6, 8, 1, 1],
    [[0.0, 0.0, 0.0], [1.2050, 0.0, 0.0], [-0.5871, 0.9377, 0.0], [-0.5871, -0.9377, 0.0]],
    props={"name": "formaldehyde"},
)
# Methanol, with coordinates that have more decimals than SDF keeps.
METHANOL = Molecule(
    [6, 8, 1, 1, 1, 1],
    [
        [-0.04654321, 0.66312345, 0.00012345],
        [-0.04611111, -0.75698765, 0.00054321],
        [-1.08623456, 0.97534567, 0.00098765],
        [0.43887654, 1.07712345, 0.88743210],
        [0.43854321, 1.07756789, -0.88612345],
        [0.86412345, -1.05287654, -0.00023456],
    ],
    props={"name": "methanol"},
)
# Carbon with five hydrogens: no sanitisable molecule, as generators sometimes produce.
PENTAVALENT_CARBON = Molecule(
    [6, 1, 1, 1, 1, 1],
    [[0, 0, 0], [1.09, 0, 0], [-1.09, 0, 0], [0, 1.09, 0], [0, -1.09, 0], [0, 0, 1.09]],
    props={"name": "CH5"},
)


def _no_partial_files(directory) -> bool:
    return not any(name.endswith(".partial") for name in os.listdir(directory))


def _order_between(mol: Molecule, atom_a: int, atom_b: int) -> int:
    for i, j, order in mol.bonds.tolist():
        if {i, j} == {atom_a, atom_b}:
            return order
    return 0


# --- round trips ------------------------------------------------------------------------


def test_xyz_sdf_xyz_round_trip_keeps_elements_and_coordinates(tmp_path):
    write_molecules(str(tmp_path / "a.xyz"), [METHANOL, FORMALDEHYDE])
    from_xyz, _ = read_molecules(str(tmp_path / "a.xyz"))
    write_molecules(str(tmp_path / "b.sdf"), from_xyz)
    from_sdf, skipped = read_molecules(str(tmp_path / "b.sdf"))
    write_molecules(str(tmp_path / "c.xyz"), from_sdf)
    final, _ = read_molecules(str(tmp_path / "c.xyz"))

    assert skipped == 0
    assert len(final) == 2
    for original, result in zip([METHANOL, FORMALDEHYDE], final):
        np.testing.assert_array_equal(result.atomic_numbers, original.atomic_numbers)
        # SDF keeps 4 decimals: rounding costs at most 5e-5 A per coordinate.
        np.testing.assert_allclose(result.positions, original.positions, rtol=0, atol=1e-4)
        assert result.props["name"] == original.props["name"]


def test_xyz_keeps_coordinates_to_six_decimals(tmp_path):
    path = str(tmp_path / "m.xyz")
    write_molecules(path, [METHANOL])
    (result,), _ = read_molecules(path)
    np.testing.assert_allclose(result.positions, METHANOL.positions, rtol=0, atol=1e-7)


def test_npz_round_trip_is_exact(tmp_path):
    path = str(tmp_path / "m.npz")
    write_molecules(path, [METHANOL, FORMALDEHYDE, METHANOL])
    result, skipped = read_molecules(path)
    assert skipped == 0
    assert [m.num_atoms for m in result] == [6, 4, 6]
    np.testing.assert_array_equal(result[1].atomic_numbers, FORMALDEHYDE.atomic_numbers)
    np.testing.assert_array_equal(result[2].positions, METHANOL.positions)
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["atomic_numbers", "num_atoms", "positions"]


def test_multi_molecule_xyz_with_atomic_numbers_names_and_blank_lines(tmp_path):
    path = tmp_path / "multi.xyz"
    path.write_text(
        "2\nhydrogen\nH 0 0 0\n1 0.74 0 0\n\n"
        "3\n  water molecule  \nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692 extra columns ignored\n"
        "h 0.0 -0.7572 -0.4692\n"
    )
    result, skipped = read_molecules(str(path))
    assert skipped == 0
    assert [m.atomic_numbers.tolist() for m in result] == [[1, 1], [8, 1, 1]]
    assert [m.props["name"] for m in result] == ["hydrogen", "water molecule"]
    assert result[1].positions[1].tolist() == [0.0, 0.7572, -0.4692]
    assert result[0].bonds is None


def test_multi_molecule_sdf_and_format_override(tmp_path):
    path = str(tmp_path / "mols.txt")
    write_molecules(path, [METHANOL, FORMALDEHYDE], fmt="sdf")
    result, _ = read_molecules(path, fmt="mol")
    assert [m.props["name"] for m in result] == ["methanol", "formaldehyde"]


# --- SDF bonds and tags -----------------------------------------------------------------


def test_sdf_carries_perceived_double_bond(tmp_path):
    block = sdf_block(FORMALDEHYDE)
    bond_lines = [line.split() for line in block.splitlines() if len(line.split()) == 4 and line.startswith("  ")]
    assert ["1", "2", "2", "0"] in bond_lines  # atom 1 (C) to atom 2 (O), order 2

    path = str(tmp_path / "f.sdf")
    write_molecules(path, [FORMALDEHYDE])
    (result,), _ = read_molecules(path)
    assert _order_between(result, 0, 1) == 2
    assert _order_between(result, 0, 2) == 1


def test_rdkit_bond_perception_finds_the_double_bond_too():
    bonds = perceive_bonds(FORMALDEHYDE, "rdkit")
    as_molecule = Molecule(FORMALDEHYDE.atomic_numbers, FORMALDEHYDE.positions, bonds=bonds)
    assert _order_between(as_molecule, 0, 1) == 2
    assert len(bonds) == 3


def test_own_bonds_win_over_perception():
    stated = Molecule(FORMALDEHYDE.atomic_numbers, FORMALDEHYDE.positions, bonds=[[0, 1, 1], [0, 2, 1], [0, 3, 1]])
    assert perceive_bonds(stated, "benchmark").tolist() == [[0, 1, 1], [0, 2, 1], [0, 3, 1]]


def test_sdf_tags_are_written_and_read_back(tmp_path):
    tagged = Molecule(
        FORMALDEHYDE.atomic_numbers,
        FORMALDEHYDE.positions,
        props={"name": "gen 7", "symdiff_stable": "True", "symdiff_valid": "True", "smiles": "C=O"},
    )
    path = str(tmp_path / "t.sdf")
    write_molecules(path, [tagged])
    text = open(path).read()
    assert text.startswith("gen 7\n")
    assert ">  <symdiff_stable>" in text and ">  <smiles>" in text
    (result,), _ = read_molecules(path)
    assert result.props == tagged.props


def test_unsanitisable_molecule_is_still_written_to_sdf(tmp_path):
    path = str(tmp_path / "odd.sdf")
    write_molecules(path, [PENTAVALENT_CARBON])
    (result,), skipped = read_molecules(path)
    assert skipped == 0
    assert result.atomic_numbers.tolist() == [6, 1, 1, 1, 1, 1]
    assert len(result.bonds) == 5


def test_aromatic_sdf_bonds_survive(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    benzene = Chem.AddHs(Chem.MolFromSmiles("c1ccccc1"))
    AllChem.EmbedMolecule(benzene, randomSeed=7)
    path = tmp_path / "benzene.sdf"
    path.write_text(Chem.MolToMolBlock(benzene, kekulize=False) + "$$$$\n")
    (molecule,), _ = read_molecules(str(path))
    assert sorted(set(molecule.bonds[:, 2].tolist())) == [1, 4]
    write_molecules(str(tmp_path / "again.sdf"), [molecule])
    assert smiles_line(molecule) == "c1ccccc1\n"


# --- unreadable records -------------------------------------------------------------------

_BROKEN_RECORD = "broken\n  nonsense\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n"


def _sdf_with_broken_second_record(tmp_path) -> str:
    path = tmp_path / "mixed.sdf"
    path.write_text(sdf_block(METHANOL) + _BROKEN_RECORD + sdf_block(FORMALDEHYDE) + "\n\n")
    return str(path)


def test_corrupt_sdf_record_is_skipped_and_counted(tmp_path):
    molecules, skipped = read_molecules(_sdf_with_broken_second_record(tmp_path))
    assert skipped == 1
    assert [m.props["name"] for m in molecules] == ["methanol", "formaldehyde"]


def test_corrupt_sdf_record_is_an_error_when_strict(tmp_path):
    with pytest.raises(SymdiffError, match="record 2"):
        read_molecules(_sdf_with_broken_second_record(tmp_path), strict=True)


def test_sdf_with_only_broken_records_is_an_error(tmp_path):
    path = tmp_path / "bad.sdf"
    path.write_text(_BROKEN_RECORD)
    with pytest.raises(SymdiffError, match="no readable molecules"):
        read_molecules(str(path))


# --- SMILES -----------------------------------------------------------------------------


def test_smiles_are_embedded_in_3d_reproducibly(tmp_path):
    path = tmp_path / "in.smi"
    path.write_text("SMILES name\nCCO ethanol\n\n# a comment\nC=O\nnot_a_smiles\n")
    first, skipped = read_molecules(str(path))
    second, _ = read_molecules(str(path))
    assert skipped == 1
    assert [m.num_atoms for m in first] == [9, 4]  # explicit hydrogens added
    assert first[0].props == {"smiles": "CCO", "name": "ethanol"}
    np.testing.assert_array_equal(first[0].positions, second[0].positions)
    assert np.ptp(first[0].positions, axis=0).max() > 1.0  # real 3D coordinates
    with pytest.raises(SymdiffError, match="line 6"):
        read_molecules(str(path), strict=True)


def test_smiles_writer_writes_canonical_smiles_and_skips_unsanitisable(tmp_path):
    path = str(tmp_path / "out.smi")
    skipped = write_molecules(path, [METHANOL, PENTAVALENT_CARBON, FORMALDEHYDE])
    assert skipped == 1
    assert open(path).read() == "CO methanol\nC=O formaldehyde\n"


# --- standard input / output ------------------------------------------------------------


def _fake_stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_read_from_stdin_with_and_without_format(monkeypatch):
    sdf_text = sdf_block(METHANOL) + sdf_block(FORMALDEHYDE)
    _fake_stdin(monkeypatch, sdf_text.encode())
    molecules, _ = read_molecules("-", fmt="sdf")
    assert len(molecules) == 2
    _fake_stdin(monkeypatch, sdf_text.encode())
    molecules, _ = read_molecules("-")  # sniffed
    assert len(molecules) == 2
    _fake_stdin(monkeypatch, b"1\n\nC 0 0 0\n")
    molecules, _ = read_molecules("-")
    assert molecules[0].atomic_numbers.tolist() == [6]


def test_stdin_without_recognisable_format_is_an_error(monkeypatch):
    _fake_stdin(monkeypatch, b"CCO\n")
    with pytest.raises(SymdiffError, match="cannot tell the format"):
        read_molecules("-")


def test_write_to_stdout(capfdbinary):
    write_molecules("-", [FORMALDEHYDE], fmt="xyz")
    output = capfdbinary.readouterr().out.decode()
    assert output.startswith("4\nformaldehyde\nC ")
    with pytest.raises(SymdiffError, match="format"):
        write_molecules("-", [FORMALDEHYDE])


# --- errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(SymdiffError, match="no such file"):
        read_molecules(str(tmp_path / "absent.xyz"))


@pytest.mark.parametrize("name", ["empty.xyz", "empty.sdf", "empty.smi", "empty.npz"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n  \n")
    with pytest.raises(SymdiffError, match="no molecules in"):
        read_molecules(str(path))


def test_unknown_element_is_named_with_its_line(tmp_path):
    path = tmp_path / "x.xyz"
    path.write_text("2\n\nC 0 0 0\nXx 1 0 0\n")
    with pytest.raises(SymdiffError, match=r"line 4: unknown element 'Xx'"):
        read_molecules(str(path))


@pytest.mark.parametrize(
    "text, line",
    [
        ("2\n\nC 0 0 0\nC 1.0 abc 0\n", 4),
        ("2\n\nC 0 0 0\nC 1.0\n", 4),
        ("two\n\nC 0 0 0\n", 1),
        ("3\n\nC 0 0 0\nC 1 0 0\n", 5),
    ],
)
def test_malformed_xyz_names_the_line(tmp_path, text, line):
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(SymdiffError, match=rf"line {line}\b"):
        read_molecules(str(path))


def test_unsupported_extension_lists_supported_ones(tmp_path):
    path = tmp_path / "m.foo"
    path.write_text("1\n\nC 0 0 0\n")
    with pytest.raises(SymdiffError, match=r"'\.foo'.*\.sdf.*\.xyz.*\.smi.*\.npz"):
        read_molecules(str(path))
    with pytest.raises(SymdiffError, match=r"'\.foo'"):
        write_molecules(str(path), [FORMALDEHYDE])


def test_npz_needing_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(
        path,
        positions=np.array([object()], dtype=object),
        atomic_numbers=np.array([6]),
        num_atoms=np.array([1]),
    )
    with pytest.raises(SymdiffError, match="pickle"):
        read_molecules(str(path))


def test_npz_missing_arrays_is_an_error(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, coords=np.zeros((2, 3)))
    with pytest.raises(SymdiffError, match="num_atoms"):
        read_molecules(str(path))


# --- atomic writing -----------------------------------------------------------------------


def test_failed_write_leaves_existing_file_untouched(tmp_path):
    path = tmp_path / "out.xyz"
    path.write_text("previous content\n")
    not_an_element = Molecule([6, 200], [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(SymdiffError):
        write_molecules(str(path), [FORMALDEHYDE, not_an_element])
    assert path.read_text() == "previous content\n"
    assert _no_partial_files(tmp_path)


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "out.sdf"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("symdiff_cli.io.writer.sdf_block", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_molecules(str(path), [FORMALDEHYDE])
    assert os.listdir(tmp_path) == []


def test_written_file_has_normal_permissions(tmp_path):
    path = tmp_path / "out.xyz"
    write_molecules(str(path), [FORMALDEHYDE])
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_molecule_writer_streams_batches_and_renames_on_close(tmp_path):
    path = tmp_path / "stream.xyz"
    with MoleculeWriter(str(path)) as writer:
        writer.write([METHANOL])
        assert not path.exists()  # only the temporary file exists while writing
        writer.write([FORMALDEHYDE, METHANOL])
    assert writer.written == 3
    molecules, _ = read_molecules(str(path))
    assert [m.props["name"] for m in molecules] == ["methanol", "formaldehyde", "methanol"]
    assert _no_partial_files(tmp_path)


@pytest.mark.parametrize("fmt", ["sdf", "xyz", "npz"])
def test_ctrl_c_keeps_the_finished_batches(tmp_path, fmt):
    path = tmp_path / f"gen.{fmt}"
    with pytest.raises(KeyboardInterrupt):
        with MoleculeWriter(str(path)) as writer:
            writer.write([METHANOL, FORMALDEHYDE])
            if fmt != "npz":
                writer._stream.write(b"half a record")  # as if interrupted mid-write
            raise KeyboardInterrupt
    molecules, skipped = read_molecules(str(path))
    assert skipped == 0
    assert [m.num_atoms for m in molecules] == [6, 4]
    assert b"half a record" not in path.read_bytes()
    assert _no_partial_files(tmp_path)


def test_other_exceptions_discard_the_stream(tmp_path):
    path = tmp_path / "gen.sdf"
    with pytest.raises(RuntimeError):
        with MoleculeWriter(str(path)) as writer:
            writer.write([METHANOL])
            raise RuntimeError("model crashed")
    assert os.listdir(tmp_path) == []


def test_explicit_abort(tmp_path):
    kept = MoleculeWriter(str(tmp_path / "kept.smi"))
    kept.write([METHANOL])
    kept.abort(keep=True)
    assert (tmp_path / "kept.smi").read_text() == "CO methanol\n"

    dropped = MoleculeWriter(str(tmp_path / "dropped.smi"))
    dropped.write([METHANOL])
    dropped.abort()
    assert sorted(os.listdir(tmp_path)) == ["kept.smi"]


def test_output_directory_must_exist(tmp_path):
    with pytest.raises(SymdiffError, match="does not exist"):
        write_molecules(str(tmp_path / "missing" / "out.sdf"), [FORMALDEHYDE])


@pytest.mark.parametrize("fmt", ["xyz", "sdf", "smi", "npz"])
def test_non_finite_coordinates_are_refused_with_the_molecule_number(tmp_path, fmt):
    diverged = Molecule([6, 1], [[0, 0, 0], [np.nan, 0, 0]])
    path = tmp_path / f"out.{fmt}"
    with pytest.raises(SymdiffError, match="molecule 2 .*NaN"):
        write_molecules(str(path), [FORMALDEHYDE, diverged])
    assert os.listdir(tmp_path) == []


def test_rounding_to_the_stored_precision_makes_bonds_read_back_the_same(tmp_path):
    # By the benchmark rules C=N needs a distance below 1.34 Å; 1.33996 Å is stored as 1.3400.
    mol = Molecule([6, 7], [[0.0, 0.0, 0.0], [1.33996, 0.0, 0.0]])
    assert bond_order_matrix(mol.atomic_numbers, mol.positions)[0, 1] == 2
    round_to_stored_precision([mol], "sdf")
    path = str(tmp_path / "m.sdf")
    write_molecules(path, [mol])
    (back,), _ = read_molecules(path)
    np.testing.assert_array_equal(back.positions, mol.positions)
    assert bond_order_matrix(mol.atomic_numbers, mol.positions)[0, 1] == 1
    assert bond_order_matrix(back.atomic_numbers, back.positions)[0, 1] == 1


def test_rounding_follows_the_format():
    positions = [[0.0, 0.0, 0.0], [1.123456789, 0.0, 0.0]]
    sdf, xyz, npz = (Molecule([6, 6], positions) for _ in range(3))
    round_to_stored_precision([sdf], "sdf")
    round_to_stored_precision([xyz], "xyz")
    round_to_stored_precision([npz], "npz")
    assert sdf.positions[1, 0] == 1.1235
    assert xyz.positions[1, 0] == 1.12345679
    assert npz.positions[1, 0] == 1.123456789
