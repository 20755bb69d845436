"""The default model in weights/: loads, is small enough to ship, and generates without --model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from symdiff_cli.engine.release import load_release

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "qm9"


def test_shipped_model_loads_and_is_under_50_mb():
    released = load_release(None)  # the default: weights/qm9
    assert Path(released.path).resolve() == WEIGHTS.resolve()
    assert released.cfg.dataset == "qm9" and released.cfg.atom_types == ("H", "C", "N", "O", "F")
    assert sum(f.stat().st_size for f in WEIGHTS.iterdir()) < 50 * 2**20
    config = json.loads((WEIGHTS / "config.json").read_text())
    assert config["provenance"]["step"] > 0  # trained, not a fresh initialisation
    assert sum(released.histogram.values()) == 100_000  # the QM9 train split's atom counts


@pytest.mark.slow
def test_generate_uses_the_shipped_model_by_default(tmp_path):
    out = tmp_path / "mols.sdf"
    env = {k: v for k, v in os.environ.items() if k not in ("SYMDIFF_WEIGHTS",) and not k.startswith("SLURM_")}
    res = subprocess.run([sys.executable, "-m", "symdiff_cli", "generate", "--n", "4", "--steps", "5", "--out",
                          str(out), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert out.read_text().count("$$$$") == 4
