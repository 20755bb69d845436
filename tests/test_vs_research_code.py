"""benchmarks/vs_research_code.py: our network timed against the SymDiff research code.

The research code is not part of this project and fetching it needs the network, so the timing
test runs only where SYMDIFF_RESEARCH_CODE names a checkout of github.com/leozhangML/symdiff
(f70cba9) and timm is installed; the failure test runs everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "vs_research_code.py"
MEASUREMENTS = ("sampling_forward_own_layout", "training_step_own_layout", "sampling_forward_same_padded",
                "training_step_same_padded")


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # One thread: the benchmark's default of two would compete with anything else running.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), "--threads", "1", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def research_code_folder() -> Path:
    folder = os.environ.get("SYMDIFF_RESEARCH_CODE")
    if not folder:
        pytest.skip("SYMDIFF_RESEARCH_CODE is not set: the research code (github.com/leozhangML/symdiff at f70cba9) "
                    "cannot be fetched without the network")
    if not (Path(folder) / "sym_nn" / "sym_nn.py").is_file():
        pytest.skip(f"SYMDIFF_RESEARCH_CODE={folder} holds no sym_nn/sym_nn.py")
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (the research DiT's MLPs): pip install --no-deps timm")
    return Path(folder)


def test_tiny_comparison_writes_every_measurement_with_positive_times(tmp_path):
    folder = research_code_folder()
    out = tmp_path / "times.json"
    result = run("--tiny", "--research-code", str(folder), "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "| sampling forward | own" in result.stdout and "| parameters |" in result.stdout
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and report["torch"] and report["cpu"]
    assert report["research_code"]["pinned_commit"] == "f70cba9" and "commit" in report["research_code"]
    params = next(row for row in report["settings"] if row["setting"] == "parameters")
    assert int(params["ours"].replace(",", "")) > 0 and int(params["theirs"].replace(",", "")) > 0
    assert [m["key"] for m in report["measurements"]] == list(MEASUREMENTS)
    for m in report["measurements"]:
        assert m["ours_ms"] and m["theirs_ms"] and min(m["ours_ms"] + m["theirs_ms"]) > 0, m["key"]
        assert m["ours_ms_per_1000_molecules"] > 0 and m["theirs_ms_per_1000_molecules"] > 0
        assert m["theirs_over_ours"] > 0
    # Theirs: random batches, padded; ours: batches of one atom count each, from the same data.
    data = report["data"]
    assert data["molecules"] == data["their_batches"] * data["batch_size"]
    assert sum(data["our_batch_sizes"]) == data["our_molecules"] > 0
    assert max(data["our_batch_sizes"]) <= data["batch_size"] and len(data["our_atom_counts"]) == data["our_batches"]


def test_research_code_that_cannot_be_fetched_is_one_line_error(tmp_path):
    target = tmp_path / "symdiff-research"
    result = run("--tiny", "--research-code", str(target), "--research-url", str(tmp_path / "no-such-repository"))
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("Error:"), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not target.exists()


def test_precisions_of_each_side_are_applied_and_recorded(tmp_path):
    folder = research_code_folder()
    out = tmp_path / "times.json"
    result = run("--tiny", "--research-code", str(folder), "--precision", "bf16", "--their-precision", "fp32",
                 "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "precision: ours bf16, theirs fp32" in result.stdout
    report = json.loads(out.read_text())
    assert report["precision"] == {"ours": "bf16", "theirs": "fp32"}
    # --their-precision defaults to --precision: the same configuration on both sides.
    result = run("--tiny", "--research-code", str(folder), "--precision", "bf16", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["precision"] == {"ours": "bf16", "theirs": "bf16"}


def test_autocast_runs_our_linear_layers_in_bfloat16_only_for_bf16():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import vs_research_code
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    import torch

    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with vs_research_code.autocast("bf16"):
        assert layer(x).dtype == torch.bfloat16
    with vs_research_code.autocast("fp32"):
        assert layer(x).dtype == torch.float32
