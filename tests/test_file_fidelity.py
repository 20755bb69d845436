"""What files keep and where output goes: stereo and radicals survive a conversion, readable
text in an old encoding is read, broken records cost only themselves, and a stream given as an
output path is never replaced by a file."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from cli_helpers import run_cli as cli  # tests/, beside this file
from symdiff_cli.chem.metrics import evaluate_molecule
from symdiff_cli.engine.generate import GenerateResult
from symdiff_cli.io.reader import read_molecule_records, read_molecules
from test_reliability_files import WATER_XYZ, assert_one_line_error


def embedded_sdf(path: Path, smiles: list[str]) -> Path:
    writer = Chem.SDWriter(str(path))
    for text in smiles:
        mol = Chem.AddHs(Chem.MolFromSmiles(text))
        AllChem.EmbedMolecule(mol, randomSeed=1)
        writer.write(mol)
    writer.close()
    return path


STEREO = ["C/C=C/C", "C/C=C\\C", "C[C@H](N)C(=O)O"]


def test_sdf_and_smiles_output_keep_the_stereo_of_the_coordinates(tmp_path, capfd):
    source = embedded_sdf(tmp_path / "in.sdf", STEREO)
    for target in ("out.sdf", "out.xyz"):  # own bonds, and bonds perceived again from an XYZ
        code, _, err = cli(capfd, "convert", str(source), str(tmp_path / target))
        assert code == 0, err
    code, _, err = cli(capfd, "convert", str(tmp_path / "out.xyz"), str(tmp_path / "again.sdf"), "--bonds", "rdkit")
    assert code == 0, err
    for written in ("out.sdf", "again.sdf"):
        assert [Chem.MolToSmiles(m) for m in Chem.SDMolSupplier(str(tmp_path / written))] == STEREO, written
    code, _, err = cli(capfd, "convert", str(source), str(tmp_path / "out.smi"))
    assert code == 0, err
    assert (tmp_path / "out.smi").read_text().split() == STEREO


def test_smiles_radicals_stay_radicals(tmp_path, capfd):
    (tmp_path / "r.smi").write_text("[CH3] methyl\nC[O] methoxy\n")
    code, _, err = cli(capfd, "convert", str(tmp_path / "r.smi"), str(tmp_path / "out.smi"))
    assert code == 0, err
    assert (tmp_path / "out.smi").read_text() == "[CH3] methyl\nC[O] methoxy\n"


def test_a_latin1_tag_or_name_is_read_as_text(tmp_path):
    water_sdf = tmp_path / "w.sdf"
    water_xyz = tmp_path / "w.xyz"
    water_xyz.write_text(WATER_XYZ)
    subprocess.run([sys.executable, "-m", "symdiff_cli", "convert", str(water_xyz), str(water_sdf)], check=True,
                   capture_output=True)
    record = water_sdf.read_bytes().replace(b"$$$$", b">  <temperature>  (1) \n25 \xb0C\n\n$$$$")
    (tmp_path / "latin1.sdf").write_bytes(record)
    mols, _ = read_molecules(str(tmp_path / "latin1.sdf"))
    assert mols[0].props["temperature"] == "25 \u00b0C"
    (tmp_path / "n.smi").write_bytes(b"CCO \xe9thanol\n")
    assert read_molecules(str(tmp_path / "n.smi"))[0][0].props["name"] == "\u00e9thanol"


def test_sdf_records_without_atoms_or_with_non_finite_coordinates_are_skipped(tmp_path):
    good = Chem.MolToMolBlock(Chem.AddHs(Chem.MolFromSmiles("O")), includeStereo=False)
    empty = "empty\n     RDKit          3D\n\n  0  0  0  0  0  0  0  0  0  0999 V2000\nM  END\n"
    lines = good.splitlines()
    lines[4] = "       inf" + lines[4][10:]
    infinite = "\n".join(lines) + "\n"
    (tmp_path / "odd.sdf").write_text("$$$$\n".join([good, empty, infinite, good]) + "$$$$\n")
    mols, positions, skipped = read_molecule_records(str(tmp_path / "odd.sdf"))
    assert len(mols) == 2 and positions == [0, 3] and skipped == 2


def test_validity_does_not_depend_on_the_files_charges(tmp_path):
    source = embedded_sdf(tmp_path / "gly.sdf", ["[NH3+]CC(=O)[O-]"])
    charged = read_molecules(str(source))[0][0]
    assert charged.formal_charges is not None
    bare = type(charged)(charged.atomic_numbers, charged.positions)
    assert evaluate_molecule(charged) == evaluate_molecule(bare)


@pytest.mark.parametrize("arrays, expected", [
    (dict(positions=np.zeros((9, 2)), atomic_numbers=np.ones(6, int), num_atoms=np.array([6])),
     "positions must have shape (atoms, 3)"),
    (dict(positions=np.zeros((6, 3)), atomic_numbers=np.ones(6, int), num_atoms=np.array([2.5, 3.5])),
     "num_atoms must be a list of whole numbers"),
    (dict(positions=np.zeros((6, 3)), atomic_numbers=np.ones(6, int), num_atoms=np.array([3, 0, 3])),
     "num_atoms must be a list of whole numbers of at least 1"),
])
def test_malformed_npz_arrays_are_named(tmp_path, capfd, arrays, expected):
    np.savez(tmp_path / "bad.npz", **arrays)
    code, out, err = cli(capfd, "convert", str(tmp_path / "bad.npz"), str(tmp_path / "o.xyz"))
    assert_one_line_error(code, out, err, expected)


def test_standard_input_with_sdf_words_in_an_xyz_comment_is_xyz(capfd):
    text = "3\nconverted from a V2000 molfile, M  END\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n"
    code, out, err = cli(capfd, "convert", "-", "-", "--to", "xyz", stdin=text.encode())
    assert code == 0, err
    assert out.startswith("3\nconverted from a V2000 molfile")


def test_a_compressed_file_is_named_as_compressed(tmp_path, capfd):
    path = tmp_path / "mols.sdf.gz"
    path.write_bytes(gzip.compress(b"x"))
    code, out, err = cli(capfd, "convert", str(path), str(tmp_path / "o.xyz"))
    assert_one_line_error(code, out, err, "is compressed (.gz): decompress it first")


@pytest.mark.parametrize("target", ["/dev/stdout", "/dev/stderr"])
def test_a_stream_path_never_replaces_the_file_behind_it(tmp_path, target):
    log = tmp_path / "log.txt"
    log.write_text("EARLIER LINE\n")
    (tmp_path / "w.xyz").write_text(WATER_XYZ)
    with open(log, "a") as handle:
        done = subprocess.run([sys.executable, "-m", "symdiff_cli", "convert", str(tmp_path / "w.xyz"), target,
                               "--to", "smi"], stdout=handle, stderr=handle, timeout=120)
    assert done.returncode == 1
    assert log.read_text().startswith("EARLIER LINE\n")
    assert "write to '-' and redirect standard output instead" in log.read_text()


def test_evaluate_refuses_a_stream_path_before_evaluating(tmp_path, capfd):
    (tmp_path / "w.xyz").write_text(WATER_XYZ)
    code, out, err = cli(capfd, "evaluate", str(tmp_path / "w.xyz"), "--json", "/dev/stdout", "--no-novelty")
    assert_one_line_error(code, out, err, "--json /dev/stdout is a device or stream", 2)
    assert "Atom stability" not in out


def test_the_sampling_rate_counts_molecules_a_smiles_file_left_out():
    result = GenerateResult(requested=10, written=7, skipped=3, seconds=2.0, shard=(0, 1), out="x.smi")
    assert result.molecules_per_second == 5.0
