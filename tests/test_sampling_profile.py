"""benchmarks/sampling_profile.py: the grouping rule of mixed batches, and the script's three
reports on a tiny release."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from sampling_profile import mixed_batches  # noqa: E402  (benchmarks/ is not a package)

from symdiff_cli.engine.release import save_release  # noqa: E402
from symdiff_cli.model.config import model_config_from_preset  # noqa: E402
from symdiff_cli.model.dit import SymmetrisedDenoiser  # noqa: E402


def test_small_groups_join_a_batch_and_large_ones_keep_their_own():
    counts = [9] * 3 + [8] * 2 + [7] * 50 + [3]
    batches = mixed_batches(counts, batch_size=256, pad_tokens=100)
    # 8 pads 2 atoms into the 9s' batch; 7 would pad 100 (50 x 2), so it starts its own, and
    # 3 pads 4 x 1 = 4 atoms there.
    assert batches == [[9, 9, 9, 8, 8], [7] * 50 + [3]]
    assert sorted(c for b in batches for c in b) == sorted(counts)
    # The batch size holds; the rest of a split group takes the next count in.
    capped = mixed_batches([5] * 7 + [4], batch_size=3, pad_tokens=100)
    assert capped == [[5, 5, 5], [5, 5, 5], [5, 4]]


def test_the_script_reports_calls_operators_and_layouts(tmp_path):
    torch.manual_seed(0)
    cfg = model_config_from_preset("tiny")
    release = save_release(tmp_path / "tiny", cfg, SymmetrisedDenoiser(cfg).state_dict(), {4: 3, 6: 2}, "qm9",
                           {"step": 0}, default_steps_cpu=3)
    script = [sys.executable, str(REPO / "benchmarks" / "sampling_profile.py")]
    common = ["--model", str(release), "--threads", "1"]
    calls = subprocess.run(script + ["calls", "--n", "6", "--seed", "1"] + common, capture_output=True, text=True)
    assert calls.returncode == 0, calls.stderr
    assert "6 molecules" in calls.stdout and "| hidden" in calls.stdout and "| 1-4 |" in calls.stdout
    ops = subprocess.run(script + ["ops", "--batch", "2", "--num-atoms", "5", "--repeats", "1"] + common,
                         capture_output=True, text=True)
    assert ops.returncode == 0, ops.stderr
    assert "aten::" in ops.stdout
    layouts = subprocess.run(script + ["layouts", "--n", "6", "--rounds", "1"] + common, capture_output=True, text=True)
    assert layouts.returncode == 0, layouts.stderr
    assert "| 1 | one atom count |" in layouts.stdout and "| 1 | mixed |" in layouts.stdout
    assert "of 6 |" in layouts.stdout
