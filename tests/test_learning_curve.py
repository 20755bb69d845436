"""scripts/learning_curve.py reads the metrics.jsonl of runs that may still be writing it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "learning_curve.py"


def load_script():
    spec = importlib.util.spec_from_file_location("learning_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def eval_record(step: int, atom: float) -> dict:
    return {"event": "eval", "step": step, "epoch": 1, "time": 120.0, "cpu_time": 100.0, "num_molecules": 50,
            "atom_stability": atom, "molecule_stability": 0.1, "validity": 0.5, "uniqueness": 1.0}


def test_half_written_last_line_is_skipped_and_repeated_steps_once(tmp_path: Path, capsys) -> None:
    lines = [json.dumps({"step": 5, "loss": 0.9}), json.dumps(eval_record(10, 0.8)),
             json.dumps(eval_record(10, 0.8)), json.dumps(eval_record(20, 0.85))]
    # A trainer killed or polled mid-append leaves a prefix of a record without its newline.
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + json.dumps(eval_record(30, 0.9))[:40])
    script = load_script()
    rows = script.evaluations(tmp_path)
    assert [r["step"] for r in rows] == [10, 20]
    script.main([str(tmp_path)])
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 4
    assert "| 20 | 50 | 85.0 % |" in table[3]
