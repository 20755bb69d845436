"""Which records a file had, as reports name them: unreadable records are skipped and counted in
every format, and the rows that remain still name their record."""

from __future__ import annotations

import csv
import io
import json

from cli_helpers import run_cli as cli  # tests/, beside this file
from symdiff_cli.chem.quiet import _clean_rdkit_messages
from symdiff_cli.io.reader import read_molecule_records, read_molecules

WATER = "3\n{name}\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"
BAD_ELEMENT = "3\nbad\nXx 0.0 0.0 0.0\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"
MIXED_XYZ = "0\nempty\n" + WATER.format(name="w1") + BAD_ELEMENT + WATER.format(name="w2")


def test_xyz_records_with_bad_atoms_or_none_are_skipped_and_counted(tmp_path, capfd):
    path = tmp_path / "mixed.xyz"
    path.write_text(MIXED_XYZ)
    mols, positions, skipped = read_molecule_records(str(path))
    assert [m.props["name"] for m in mols] == ["w1", "w2"] and positions == [1, 3] and skipped == 2

    code, _, err = cli(capfd, "convert", str(path), str(tmp_path / "out.xyz"))
    assert code == 0 and "Converted 2 molecules" in err and "skipped 2 unreadable records" in err, err
    code, _, err = cli(capfd, "convert", str(path), str(tmp_path / "strict.xyz"), "--strict")
    assert code == 1 and "line 1: it has no atoms" in err and not (tmp_path / "strict.xyz").exists()
    path.write_text(WATER.format(name="w1") + BAD_ELEMENT)
    code, _, err = cli(capfd, "convert", str(path), str(tmp_path / "strict.xyz"), "--strict")
    assert code == 1 and "line 8: unknown element 'Xx'" in err, err


def test_per_molecule_rows_and_json_name_the_records_of_the_file(tmp_path, capfd):
    path = tmp_path / "mixed.xyz"
    path.write_text(MIXED_XYZ)
    code, out, err = cli(capfd, "evaluate", str(path), "--no-novelty", "--per-molecule", "-",
                         "--json", str(tmp_path / "m.json"))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["index"] for row in rows] == ["1", "3"]  # the records' places, not 0 and 1
    assert json.loads((tmp_path / "m.json").read_text())["unreadable_records"] == 2


def test_a_smiles_with_a_wildcard_atom_is_not_a_molecule(tmp_path):
    path = tmp_path / "in.smi"
    path.write_text("C*\nCCO ethanol\n")
    mols, positions, skipped = read_molecule_records(str(path))
    assert len(mols) == 1 and mols[0].props["name"] == "ethanol" and positions == [1] and skipped == 1
    assert all(z >= 1 for z in mols[0].atomic_numbers.tolist())


def test_rdkit_separator_lines_are_not_given_as_the_reason():
    raw = ("[12:00:00] \n\n****\n[12:00:00] Pre-condition Violation\nbad atom\n****\n"
           "[12:00:00] ERROR: moving to the beginning of the next molecule\n")
    assert _clean_rdkit_messages(raw) == ["Pre-condition Violation", "bad atom"]


def test_training_reports_skipped_records_and_reads_a_file_named_twice_once(tmp_path, capfd, small_npz):
    data = tmp_path / "data"
    data.mkdir()
    (data / "waters.xyz").write_text(WATER.format(name="a") + BAD_ELEMENT + WATER.format(name="b") * 8)
    code, _, err = cli(capfd, "train", "--data", str(data), "--data", str(data / "waters.xyz"), "--out",
                       str(tmp_path / "run"), "--preset", "tiny", "--max-steps", "1", "--batch-size", "4",
                       "--threads", "1")
    text = " ".join(err.split())
    assert code == 0, err
    assert "waters.xyz: skipped 1 unreadable record" in text
    assert "waters.xyz: given more than once, read once" in text
    assert "on 9 molecules" in text
    assert read_molecules(str(data / "waters.xyz"))[1] == 1


def test_a_file_given_twice_to_evaluate_counts_once(tmp_path, capfd):
    path = tmp_path / "w.xyz"
    path.write_text(WATER.format(name="w"))
    code, out, err = cli(capfd, "evaluate", str(path), str(tmp_path / "." / "w.xyz"), "--no-novelty", "--json", "-")
    assert code == 0, err
    assert "is given more than once: its molecules count once" in err
    assert json.loads(out)["counts"]["molecules"] == 1
