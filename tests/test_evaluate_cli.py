"""`symdiff evaluate` end to end: run as the installed console script, as a user would."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from symdiff_cli.cli import app

SYMDIFF = Path(sys.executable).with_name("symdiff")

# Methane, formaldehyde and water: all stable and valid under the benchmark rules.
XYZ_TEXT = """5
methane
C 0.0 0.0 0.0
H 0.629 0.629 0.629
H -0.629 -0.629 0.629
H -0.629 0.629 -0.629
H 0.629 -0.629 -0.629
4
formaldehyde
C 0.0 0.0 0.0
O 1.21 0.0 0.0
H -0.55 0.9526 0.0
H -0.55 -0.9526 0.0
3
water
O 0.0 0.0 0.0
H 0.96 0.0 0.0
H -0.24 0.93 0.0
"""


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    command = [str(SYMDIFF)] if SYMDIFF.exists() else [sys.executable, "-m", "symdiff_cli"]
    return subprocess.run(
        command + ["evaluate", *args], input=stdin, capture_output=True, text=True, timeout=600, env=os.environ.copy()
    )


def assert_one_line_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr


@pytest.fixture
def xyz_file(tmp_path) -> Path:
    path = tmp_path / "three.xyz"
    path.write_text(XYZ_TEXT)
    return path


def sdf_with_corrupt_record(tmp_path: Path) -> Path:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    blocks = []
    for seed, smiles in enumerate(["C", "CO", "C=O"]):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=seed + 1)
        blocks.append(Chem.MolToMolBlock(mol) + "$$$$\n")
    # Break the second record's counts line: RDKit cannot parse it.
    lines = blocks[1].splitlines(keepends=True)
    lines[3] = "garbage counts line\n"
    blocks[1] = "".join(lines)
    path = tmp_path / "mixed.sdf"
    path.write_text("".join(blocks))
    return path


def test_every_option_has_help():
    command = typer.main.get_command(app)
    evaluate = command.commands["evaluate"]
    for param in evaluate.params:
        if isinstance(param, click.Option):
            assert param.help, param.name
    assert evaluate.help


def test_missing_file_is_one_line_error(tmp_path):
    result = run(str(tmp_path / "nope.sdf"), "--no-novelty")
    assert_one_line_error(result)
    assert "nope.sdf" in result.stderr


def test_a_missing_file_without_an_extension_is_called_missing(tmp_path):
    result = run(str(tmp_path / "runs" / "none"), "--no-novelty")
    assert_one_line_error(result)
    assert "no such file" in result.stderr and "extension" not in result.stderr


@pytest.mark.parametrize("option, name, expected", [
    ("--json", "nodir/m.json", "folder"), ("--json", "adir", "is a directory"),
    ("--per-molecule", "adir", "is a directory"), ("--per-molecule", "nodir/m.csv", "does not exist"),
])
def test_an_output_that_cannot_be_written_is_refused_before_the_evaluation(tmp_path, monkeypatch, capsys, xyz_file,
                                                                           option, name, expected):
    # With --energy an evaluation can take hours; a typo in the output path must not cost them.
    import symdiff_cli.chem.metrics as metrics

    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(metrics, "evaluate_molecules", lambda *a, **k: calls.append(1))
    from cli_helpers import run_cli

    code, _, err = run_cli(capsys, "evaluate", str(xyz_file), "--no-novelty", option, name)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1 and not calls, err


def test_nothing_to_evaluate_is_usage_error():
    result = run()
    assert_one_line_error(result)
    assert result.returncode == 2


def test_files_and_split_together_is_usage_error(xyz_file):
    assert_one_line_error(run(str(xyz_file), "--split", "test"))


def test_geom_split_is_usage_error():
    assert_one_line_error(run("--dataset", "geom", "--split", "test"))


def test_bad_split_choice_is_rejected():
    result = run("--split", "training")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_xyz_file_table_json_and_per_molecule(xyz_file, tmp_path):
    json_path, csv_path = tmp_path / "metrics.json", tmp_path / "rows.csv"
    result = run(str(xyz_file), "--no-novelty", "--json", str(json_path), "--per-molecule", str(csv_path))
    assert result.returncode == 0, result.stderr
    assert "Atom stability" in result.stdout and "100.00 %" in result.stdout
    data = json.loads(json_path.read_text())
    assert data["counts"]["molecules"] == 3 and data["counts"]["stable_molecules"] == 3
    assert data["fractions"]["validity"] == 1.0 and data["fractions"]["novelty"] is None
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["smiles"] for r in rows] == ["[H]C([H])([H])[H]", "[H]C([H])=O", "[H]O[H]"]
    assert rows[1]["source"] == str(xyz_file) and rows[1]["index"] == "1" and rows[1]["num_atoms"] == "4"
    assert {r["stable"] for r in rows} == {"1"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_json_to_stdout_is_pure_json(xyz_file):
    result = run(str(xyz_file), "--no-novelty", "--json", "-")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["files"] == [str(xyz_file)]
    assert "Atom stability" in result.stderr  # the table moved to stderr


def test_stdin_input():
    result = run("-", "--no-novelty", "--json", "-", stdin=XYZ_TEXT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["molecules"] == 3


def test_corrupt_sdf_record_is_skipped_with_warning_or_strict_error(tmp_path):
    path = sdf_with_corrupt_record(tmp_path)
    lenient = run(str(path), "--no-novelty", "--json", "-")
    assert lenient.returncode == 0, lenient.stderr
    assert json.loads(lenient.stdout)["counts"]["molecules"] == 2
    assert "1 of 3 records" in lenient.stderr and "unreadable" in lenient.stderr
    strict = run(str(path), "--no-novelty", "--strict")
    assert_one_line_error(strict)


def test_foreign_elements_warn_but_evaluate(tmp_path):
    path = tmp_path / "sih4.xyz"
    path.write_text("5\nsilane\nSi 0 0 0\nH 0.855 0.855 0.855\nH -0.855 -0.855 0.855\nH -0.855 0.855 -0.855\nH 0.855 -0.855 -0.855\n")
    result = run(str(path), "--no-novelty", "--json", "-")
    assert result.returncode == 0, result.stderr
    assert "outside the qm9 atom types (Si)" in result.stderr
    assert json.loads(result.stdout)["counts"]["stable_molecules"] == 1
    geom = run(str(path), "--dataset", "geom", "--json", "-")
    assert geom.returncode == 0 and "outside" not in geom.stderr
    assert json.loads(geom.stdout)["fractions"]["novelty"] is None  # novelty is QM9-only


@pytest.mark.slow
def test_qm9_test_split_reproduces_published_numbers():
    result = run("--dataset", "qm9", "--split", "test", "--json", "-")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    counts, fractions = data["counts"], data["fractions"]
    assert counts["molecules"] == 13_083
    assert round(100 * fractions["atom_stability"], 2) == 99.34
    assert round(100 * fractions["molecule_stability"], 2) == 95.22
    assert round(100 * fractions["validity"], 2) == 97.74
    assert round(100 * fractions["uniqueness"], 2) == 100.00
    # The exact counts behind those percentages, so a drift of one molecule is caught.
    assert (counts["stable_atoms"], counts["atoms"]) == (234_336, 235_883)
    assert (counts["stable_molecules"], counts["valid"], counts["unique"]) == (12_457, 12_787, 12_787)
    assert fractions["novelty"] is not None
