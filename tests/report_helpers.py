"""What the report tests share: a small stand-in for the QM9 caches, fake training runs, and
reading the numbers back out of a report page.

The stand-in cache holds the report's reference statistics of the 32 RDKit-embedded molecules
of conftest.py under the QM9 reference's file name, and a short novelty reference, in a
$SYMDIFF_CACHE folder of the test's own: `symdiff evaluate --report` then runs in seconds
without processing QM9 (the real reference is tested, on a subsample, in a slow test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

from symdiff_cli.io.molecule import PackedMolecules
from test_evaluate_cli import XYZ_TEXT, assert_one_line_error  # noqa: F401 (assert_one_line_error: re-exported)

SYMDIFF = Path(sys.executable).with_name("symdiff")

# Methane, formaldehyde and water (stable, from the evaluate tests), and below a carbon with a
# hydrogen 3 Angstrom away (not stable) beside another water.
XYZ_GOOD = XYZ_TEXT
XYZ_BROKEN = """2
far apart
C 0.0 0.0 0.0
H 3.0 0.0 0.0
3
water
O 0.0 0.0 0.0
H 0.96 0.0 0.0
H -0.24 0.93 0.0
"""
TRAIN_SMILES = ("[H]O[H]", "[H]C([H])([H])C([H])([H])[H]")


def make_cache(folder: Path, packed: PackedMolecules) -> Path:
    """A $SYMDIFF_CACHE with the report's reference built from `packed` and a novelty reference."""
    from symdiff_cli.data.qm9 import reference_smiles_path
    from symdiff_cli.report.reference import build_reference, reference_cache_path

    folder.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("SYMDIFF_CACHE")
    os.environ["SYMDIFF_CACHE"] = str(folder)
    try:
        reference = build_reference("QM9 test", packed.to_molecules())
        reference_cache_path().write_text(json.dumps(reference.to_json()), encoding="utf-8")
        reference_smiles_path().write_text("".join(s + "\n" for s in TRAIN_SMILES), encoding="utf-8")
    finally:
        if previous is None:
            del os.environ["SYMDIFF_CACHE"]
        else:
            os.environ["SYMDIFF_CACHE"] = previous
    return folder


def run_symdiff(cache: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(SYMDIFF)] if SYMDIFF.exists() else [sys.executable, "-m", "symdiff_cli"]
    env = {**os.environ, "SYMDIFF_CACHE": str(cache)}
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=600, env=env)


def write_run(folder: Path, steps: int = 40, evals: tuple[int, ...] = (20, 40), loss0: float = 2.0) -> Path:
    """A training run directory whose metrics.jsonl has the records `symdiff train` writes,
    including a resume that logs step 10 again (the later record is the one kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"event": "start", "step": 0, "epoch": 0, "parameters": 1234, "molecules": 32}]
    for step in range(5, steps + 1, 5):
        records.append({"step": step, "epoch": step // 20, "loss": round(loss0 / step, 6), "lr": 1e-4 * min(1, step / 10),
                        "grad_norm": 1.0, "mol_per_s": 100.0 + step, "time": 1.5 * step, "cpu_time": 1.4 * step})
        if step in evals:
            records.append({"event": "eval", "step": step, "epoch": step // 20, "time": 1.5 * step,
                            "atom_stability": 0.5 + step / 200, "molecule_stability": step / 100, "validity": 0.4,
                            "uniqueness": 1.0, "num_molecules": 8, "sampling_steps": 50})
        if step == 15:
            records.append({"event": "resume", "step": 10, "epoch": 0, "parameters": 1234})
            records.append({"step": 10, "epoch": 0, "loss": 0.123, "lr": 1e-4, "mol_per_s": 90.0, "time": 15.0})
    records.append({"event": "end", "step": steps})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


class ReportParser(HTMLParser):
    """The parts of a report page the tests check: metric cells, images, external references."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[tuple[str, str], dict[str, str]] = {}
        self.images: list[str] = []
        self.external: list[str] = []
        self.molecules: list[dict[str, str]] = []
        self.headers: list[str] = []
        self._value_cell: tuple[str, str] | None = None
        self._in_value = False

    def handle_starttag(self, tag: str, attrs) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:", "#")):
                self.external.append(a[key])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "td" and "data-metric" in a:
            self._value_cell = (a["data-set"], a["data-metric"])
            self.metrics[self._value_cell] = dict(a)
        if tag == "span" and a.get("class") == "value" and self._value_cell:
            self._in_value = True
        if tag == "div" and "data-stable" in a:
            self.molecules.append(a)
        if tag == "th" and "data-set" in a:
            self.headers.append(a["data-set"])

    def handle_data(self, data: str) -> None:
        if self._in_value and self._value_cell:
            self.metrics[self._value_cell]["text"] = data.strip()
            self._in_value = False


def parse_report(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def percent_text(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"
