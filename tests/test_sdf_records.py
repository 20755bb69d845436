"""SDF records as other tools write and damage them: a record cut short costs only itself, and
names or tags that look like a record's end are written so that they do not end it."""

from __future__ import annotations

import numpy as np
from rdkit import Chem

from cli_helpers import run_cli as cli  # tests/, beside this file
from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.io.reader import read_molecules
from symdiff_cli.io.sdf import sdf_block

WATER = Molecule([8, 1, 1], np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]))


def water_record(name: str) -> str:
    return sdf_block(Molecule(WATER.atomic_numbers, WATER.positions, props={"name": name}))


def cut_short(record: str) -> str:
    """The record's header and first two atom lines, then the record's end: a file truncated
    mid-record and another appended to it."""
    return "\n".join(record.splitlines()[:6]) + "\n$$$$\n"


def test_a_record_cut_short_does_not_take_the_next_one_with_it(tmp_path, capfd):
    path = tmp_path / "damaged.sdf"
    path.write_text(water_record("first") + cut_short(water_record("cut")) + water_record("third"))
    mols, skipped = read_molecules(str(path))
    assert [m.props["name"] for m in mols] == ["first", "third"] and skipped == 1

    code, _, err = cli(capfd, "convert", str(path), str(tmp_path / "out.xyz"))
    assert code == 0, err
    assert "Converted 2 molecules" in err and "skipped 1 unreadable record" in err
    code, _, err = cli(capfd, "evaluate", str(path), "--no-novelty")
    assert code == 0 and "1 of 3 records" in err, err


def test_old_mac_line_ends_are_read(tmp_path):
    path = tmp_path / "cr.sdf"
    path.write_bytes((water_record("a") + water_record("b")).replace("\n", "\r").encode())
    mols, skipped = read_molecules(str(path))
    assert [m.props["name"] for m in mols] == ["a", "b"] and skipped == 0


def test_a_name_or_tag_that_looks_like_a_records_end_does_not_end_it(tmp_path, capfd):
    xyz = tmp_path / "odd.xyz"
    xyz.write_text("3\n$$$$\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"
                   "3\nnext\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n")
    code, _, err = cli(capfd, "convert", str(xyz), str(tmp_path / "odd.sdf"))
    assert code == 0, err
    read = [m for m in Chem.SDMolSupplier(str(tmp_path / "odd.sdf"))]
    assert [m.GetProp("_Name").strip() for m in read] == ["$$$$", "next"]

    tagged = Molecule(WATER.atomic_numbers, WATER.positions,
                      props={"name": "w", "note": "line one\n\n$$$$\nline four", "<odd>": "x"})
    supplier = Chem.SDMolSupplier()
    supplier.SetData(sdf_block(tagged) + water_record("after"))
    assert len(supplier) == 2
    assert supplier[0].GetProp("note") == "line one\n $$$$\nline four"
    assert supplier[1].GetProp("_Name") == "after"
