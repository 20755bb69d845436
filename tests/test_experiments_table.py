"""scripts/experiments_table.py prints docs/experiments.csv, the measurements behind the defaults."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "experiments_table.py"
TABLE = REPO / "docs" / "experiments.csv"
AREAS = {"training", "sampler", "guidance", "architecture", "conditioning"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_table_parses_and_every_row_has_a_date_settings_and_an_area():
    with open(TABLE, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames
    for column in ("date", "area", "settings", "cpu_hours", "steps", "n_molecules", "atom_stability",
                   "molecule_stability", "validity", "other", "outcome"):
        assert column in columns, column
    assert len(rows) > 100
    for number, row in enumerate(rows, start=2):
        assert None not in row, f"line {number} has more cells than the header"
        assert len(row["date"]) == 10 and row["date"].startswith("2026-"), number
        assert row["settings"].strip(), number
        assert row["area"] in AREAS, number


def test_markdown_output_has_every_row_and_the_shipped_numbers():
    result = run()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    with open(TABLE, newline="", encoding="utf-8") as f:
        assert len(lines) == 2 + sum(1 for _ in csv.DictReader(f))
    assert lines[0].startswith("| date | area |") and lines[1].startswith("|---|")
    # the default guide of weights/qm9 at every step: 5,265 of 10,000 molecules stable over seeds 0-9
    shipped = [line for line in lines if "| 5,265 (52.65 %) |" in line]
    assert len(shipped) == 1 and "| guidance |" in shipped[0] and "--guide qm9-guide-small" in shipped[0]
    # and guided at t <= 600, the default since: 5,405
    interval = [line for line in lines if "| 5,405 (54.05 %) |" in line]
    assert len(interval) == 1 and "| sampler |" in interval[0] and "--guidance-max-t 600" in interval[0]


def test_area_filter_and_columns():
    result = run("--area", "sampler", "--columns", "date,run,molecule_stability")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "| date | run | molecule_stability |"
    assert len(lines) > 20
    assert any("cubic" in line and "2,616 (26.16 %)" in line for line in lines)
    assert not any("52.65 %" in line for line in lines)  # a guidance row
    bad = run("--columns", "date,nonsense")
    assert bad.returncode != 0 and "nonsense" in bad.stderr
