"""`symdiff convert` through the real entry point (python -m symdiff_cli), as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from symdiff_cli.chem.perception import perceive_bonds
from symdiff_cli.io.reader import read_molecules
from symdiff_cli.io.sdf import sdf_block
from symdiff_cli.io.writer import write_molecules
from symdiff_cli.io.molecule import Molecule

FORMALDEHYDE_XYZ = (
    "4\nformaldehyde\n"
    "C 0.00000000 0.00000000 0.00000000\n"
    "O 1.20501234 0.00000000 0.00000000\n"
    "H -0.58712345 0.93771234 0.00000000\n"
    "H -0.58712345 -0.93771234 0.00000000\n"
)
WATER_XYZ = "3\nwater\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"


def run_symdiff(*args: str, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "symdiff_cli", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def xyz_file(tmp_path):
    path = tmp_path / "in.xyz"
    path.write_text(FORMALDEHYDE_XYZ + WATER_XYZ)
    return path


def test_xyz_to_sdf_with_perceived_bonds_and_summary(tmp_path, xyz_file):
    out = tmp_path / "out.sdf"
    result = run_symdiff("convert", str(xyz_file), str(out))
    assert result.returncode == 0, result.stderr
    assert "Converted 2 molecules" in result.stderr.decode()
    molecules, _ = read_molecules(str(out))
    assert [m.props["name"] for m in molecules] == ["formaldehyde", "water"]
    assert [0, 1, 2] in molecules[0].bonds.tolist()  # the C=O double bond
    np.testing.assert_allclose(molecules[0].positions[1], [1.20501234, 0, 0], atol=1e-4)


def test_bonds_are_perceived_from_the_coordinates_the_sdf_keeps(tmp_path):
    # Methanimine with C=N at 1.33996 Å: a double bond by the benchmark rules (< 1.34 Å) at 8
    # decimals, a single one at the SDF's 4; the bond block must say what a reader perceives.
    xyz = tmp_path / "imine.xyz"
    xyz.write_text("5\nimine\nC 0 0 0\nN 1.33996 0 0\nH -0.545 0.944 0\nH -0.545 -0.944 0\n"
                   "H 1.84996 0.883 0\n")
    out = tmp_path / "imine.sdf"
    result = run_symdiff("convert", str(xyz), str(out))
    assert result.returncode == 0, result.stderr
    (mol,), _ = read_molecules(str(out))
    assert [0, 1, 1] in mol.bonds.tolist()
    np.testing.assert_array_equal(perceive_bonds(Molecule(mol.atomic_numbers, mol.positions)), mol.bonds)


def test_pipeline_from_stdout_to_stdin(tmp_path, xyz_file):
    """The shape of `symdiff generate --out - | symdiff convert - out.xyz --from sdf`."""
    to_sdf = run_symdiff("convert", str(xyz_file), "-", "--to", "sdf")
    assert to_sdf.returncode == 0, to_sdf.stderr
    assert b"$$$$" in to_sdf.stdout
    assert b"Converted" not in to_sdf.stdout  # the summary stays on stderr

    out = tmp_path / "back.xyz"
    back = run_symdiff("convert", "-", str(out), "--from", "sdf", stdin=to_sdf.stdout)
    assert back.returncode == 0, back.stderr
    molecules, _ = read_molecules(str(out))
    original, _ = read_molecules(str(xyz_file))
    for before, after in zip(original, molecules):
        np.testing.assert_array_equal(after.atomic_numbers, before.atomic_numbers)
        np.testing.assert_allclose(after.positions, before.positions, atol=1e-4)

    sniffed = run_symdiff("convert", "-", "-", "--to", "smi", stdin=to_sdf.stdout)
    assert sniffed.returncode == 0, sniffed.stderr
    assert sniffed.stdout.decode() == "C=O formaldehyde\nO water\n"


def test_format_overrides_and_rdkit_bonds(tmp_path, xyz_file):
    out = tmp_path / "mols.txt"
    result = run_symdiff("convert", str(xyz_file), str(out), "--to", "sdf", "--bonds", "rdkit")
    assert result.returncode == 0, result.stderr
    molecules, _ = read_molecules(str(out), fmt="sdf")
    assert [0, 1, 2] in molecules[0].bonds.tolist()


def test_npz_conversion(tmp_path, xyz_file):
    out = tmp_path / "mols.npz"
    assert run_symdiff("convert", str(xyz_file), str(out)).returncode == 0
    molecules, _ = read_molecules(str(out))
    assert [m.num_atoms for m in molecules] == [4, 3]


def test_corrupt_record_counted_or_strict(tmp_path):
    good = Molecule([8, 1, 1], [[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]])
    source = tmp_path / "mixed.sdf"
    broken = "broken\n\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n"
    source.write_text(sdf_block(good) + broken + sdf_block(good))

    out = tmp_path / "out.xyz"
    lenient = run_symdiff("convert", str(source), str(out))
    assert lenient.returncode == 0, lenient.stderr
    assert "skipped 1 unreadable record" in lenient.stderr.decode()
    assert len(read_molecules(str(out))[0]) == 2

    strict_out = tmp_path / "strict.xyz"
    strict = run_symdiff("convert", str(source), str(strict_out), "--strict")
    stderr = strict.stderr.decode()
    assert strict.returncode != 0
    assert "record 2" in stderr and "Traceback" not in stderr
    assert not strict_out.exists()


def test_smiles_output_reports_left_out_molecules(tmp_path):
    pentavalent = Molecule([6] + [1] * 5, [[0, 0, 0], [1.09, 0, 0], [-1.09, 0, 0], [0, 1.09, 0], [0, -1.09, 0], [0, 0, 1.09]])
    source = tmp_path / "gen.xyz"
    write_molecules(str(source), [pentavalent])
    source.write_text(source.read_text() + WATER_XYZ)
    out = tmp_path / "gen.smi"
    result = run_symdiff("convert", str(source), str(out))
    assert result.returncode == 0, result.stderr
    assert "left out 1 molecule" in result.stderr.decode()
    assert out.read_text() == "O water\n"


def _assert_clean_failure(result: subprocess.CompletedProcess, directory, expected: str) -> None:
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in stderr and "Traceback" not in result.stdout.decode()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert expected in lines[0]
    leftovers = [name for name in os.listdir(directory) if name.startswith(("out", ".out"))]
    assert leftovers == []


@pytest.mark.parametrize(
    "input_name, input_text, output_name, expected",
    [
        ("missing.xyz", None, "out.sdf", "no such file"),
        ("empty.xyz", "", "out.sdf", "no molecules in"),
        ("unknown.xyz", "2\n\nC 0 0 0\nXx 1 0 0\n", "out.sdf", "line 4: unknown element 'Xx'"),
        ("malformed.xyz", "2\n\nC 0 0 0\nC 1.0 oops 0\n", "out.sdf", "line 4"),
        ("good.xyz", FORMALDEHYDE_XYZ, "out.foo", "'.foo'"),
        ("in.foo", FORMALDEHYDE_XYZ, "out.sdf", "'.foo'"),
    ],
)
def test_user_errors_are_one_line_without_output(tmp_path, input_name, input_text, output_name, expected):
    source = tmp_path / input_name
    if input_text is not None:
        source.write_text(input_text)
    result = run_symdiff("convert", str(source), str(tmp_path / output_name))
    _assert_clean_failure(result, tmp_path, expected)


def test_stdout_needs_a_format(tmp_path, xyz_file):
    result = run_symdiff("convert", str(xyz_file), "-")
    _assert_clean_failure(result, tmp_path, "format")


def test_weights_choice_needs_a_training_checkpoint(tmp_path, xyz_file):
    result = run_symdiff("convert", str(xyz_file), str(tmp_path / "out.sdf"), "--weights", "raw")
    _assert_clean_failure(result, tmp_path, "--weights applies only to a training checkpoint")


def test_help_describes_every_option():
    result = run_symdiff("convert", "--help")
    text = result.stdout.decode()
    assert result.returncode == 0
    for option in ("--from", "--to", "--bonds", "--strict", "--weights", "--guide", "--guidance", "--card-only"):
        assert option in text
    assert "benchmark" in text and "rdkit" in text


def _tiny_release(path, seed: int):
    import torch

    from symdiff_cli.engine.release import save_release
    from symdiff_cli.model.config import model_config_from_preset
    from symdiff_cli.model.dit import SymmetrisedDenoiser

    torch.manual_seed(seed)
    cfg = model_config_from_preset("tiny")
    return save_release(path, cfg, SymmetrisedDenoiser(cfg).state_dict(), {5: 1}, "qm9", {"step": seed})


@pytest.mark.slow
def test_a_release_gets_a_guide_and_a_new_weight(tmp_path):
    import json

    main, old = _tiny_release(tmp_path / "main", 0), _tiny_release(tmp_path / "old", 1)
    result = run_symdiff("convert", str(main), str(tmp_path / "guided"), "--guide", str(old))
    assert result.returncode == 0, result.stderr.decode()
    assert "guidance weight 5" in result.stderr.decode()
    config = json.loads((tmp_path / "guided" / "config.json").read_text())
    assert config["guidance"]["weight"] == 5.0 and config["guidance"]["provenance"]["step"] == 1
    assert config["provenance"] == {"step": 0}
    assert (tmp_path / "guided" / "guide.safetensors").read_bytes() != (main / "model.safetensors").read_bytes()

    result = run_symdiff("convert", str(tmp_path / "guided"), str(tmp_path / "guided"), "--guidance", "1.5")
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads((tmp_path / "guided" / "config.json").read_text())["guidance"]["weight"] == 1.5


@pytest.mark.slow
def test_a_guide_of_several_releases(tmp_path):
    import json

    main, a, b = (_tiny_release(tmp_path / name, seed) for name, seed in (("main", 0), ("a", 1), ("b", 2)))
    out = tmp_path / "guided"
    result = run_symdiff("convert", str(main), str(out), "--guide", str(a), "--guide", str(b), "--guidance", "3")
    assert result.returncode == 0, result.stderr.decode()
    assert f"the guide {a} and {b}" in result.stderr.decode()
    config = json.loads((out / "config.json").read_text())
    assert config["format_version"] == 3 and config["guidance"]["weight"] == 3.0
    assert [g["provenance"]["step"] for g in config["guidance"]["guides"]] == [1, 2]
    assert (out / "guide-2.safetensors").read_bytes() != (out / "guide.safetensors").read_bytes()
    # a new weight keeps both networks
    result = run_symdiff("convert", str(out), str(out), "--guidance", "2")
    assert result.returncode == 0, result.stderr.decode()
    config = json.loads((out / "config.json").read_text())
    assert config["guidance"]["weight"] == 2.0 and len(config["guidance"]["guides"]) == 2


@pytest.mark.parametrize("args, expected", [
    (["--card-only"], "give OUT the same directory as IN"),
    (["--card-only", "--guidance", "2"], "--card-only writes the card alone"),
    (["--guidance", "2"], "ships no guide: pass --guide MODEL"),
    (["--guide", "no/such/dir"], "no model at"),
    (["--guide", "@old", "--guidance", "-2"], "guidance weight must be a finite number >= 0"),
])
def test_bad_guide_requests_are_one_line_errors(tmp_path, args, expected):
    main, old = _tiny_release(tmp_path / "main", 0), _tiny_release(tmp_path / "old", 1)
    args = [str(old) if a == "@old" else a for a in args]
    result = run_symdiff("convert", str(main), str(tmp_path / "out"), *args)
    _assert_clean_failure(result, tmp_path, expected)


@pytest.mark.parametrize("args, expected", [(["", "x.xyz"], "IN is empty"), (["@xyz", ""], "OUT is empty")])
def test_an_empty_path_is_refused_not_read_as_the_current_directory(tmp_path, xyz_file, args, expected):
    # `symdiff convert "$IN" out.xyz` with IN unset: Path("") is ".", which once resolved to the
    # default release and wrote a copy of it as a directory named out.xyz.
    args = [str(xyz_file) if a == "@xyz" else a for a in args]
    result = run_symdiff("convert", *args, cwd=tmp_path)
    _assert_clean_failure(result, tmp_path, expected)
    assert not (tmp_path / "x.xyz").exists()


def test_guide_options_need_a_release_or_checkpoint(tmp_path, xyz_file):
    result = run_symdiff("convert", str(xyz_file), str(tmp_path / "out.sdf"), "--guidance", "2")
    _assert_clean_failure(result, tmp_path, "--guide and --guidance apply only to")
