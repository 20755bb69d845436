"""scripts/gpu_check.sh and scripts/pack_qm9_train.py: the one-call check of a GPU machine, run here
on the CPU as a bare GPU image would run it (no RDKit, no qm9pack)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Imports of these fail inside the scripts' processes, as on a GPU image that lacks them.
BLOCKER = """
import sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("rdkit", "qm9pack"):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _Missing())
"""


def load_packer():
    spec = importlib.util.spec_from_file_location("pack_qm9_train", ROOT / "scripts" / "pack_qm9_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packed_training_data_unpacks_to_the_molecules_within_half_a_milliangstrom(small_packed):
    packer = load_packer()
    data = packer.pack_molecules(small_packed)
    arrays = np.load(__import__("io").BytesIO(packer.unpack_molecules(data)))
    assert np.array_equal(arrays["atomic_numbers"], small_packed.atomic_numbers)
    assert np.array_equal(arrays["num_atoms"], small_packed.num_atoms)
    error = np.abs(arrays["positions"] - small_packed.positions).max()
    assert 0 < error <= 0.5e-3 + 1e-12  # rounded, and no further than half a step
    assert arrays["positions"].dtype == np.float64


@pytest.mark.slow
def test_gpu_check_runs_without_rdkit_and_brings_back_at_most_eight_plain_files(tmp_path, small_packed):
    from symdiff_cli.engine.release import load_release, save_release
    from symdiff_cli.io.reader import read_molecules
    from symdiff_cli.model.config import model_config_from_preset
    from symdiff_cli.model.dit import SymmetrisedDenoiser

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    archive = tmp_path / "train.npz.xz"
    archive.write_bytes(load_packer().pack_molecules(small_packed))
    cfg = model_config_from_preset("tiny")
    init = tmp_path / "init"
    save_release(init, cfg, SymmetrisedDenoiser(cfg).state_dict(), {5: 1, 9: 2}, "qm9", {"step": 0})
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(site), TRAIN_ARCHIVE=str(archive),
               INIT_MODEL=str(init), BATCH_SIZE="8", SAMPLING_N="3 5", SAMPLING_STEPS="2",
               SAMPLING_PRECISION="fp32", PROFILE_N="4", OMP_NUM_THREADS="1")
    env.pop("SYMDIFF_TEST_DEVICE", None)  # the CUDA tests are skipped here, as in CI
    blocked = subprocess.run([sys.executable, "-c", "import rdkit"], capture_output=True, text=True, env=env)
    assert blocked.returncode != 0 and "blocked by the test" in blocked.stderr
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "4s"], capture_output=True,
                         text=True, env=env, timeout=600)
    log = (out / "check.log").read_text()
    assert res.returncode == 0, log[-3000:] + res.stderr[-2000:]
    assert "skipped" in log and "done: tests exit 0, sampling exit 0, profile exit 0, training exit 0" in log
    # The profile ran both layouts; without RDKit it counts no stable molecules ('-').
    assert "| 1 | one atom count |" in log and "| 1 | mixed |" in log and "| - of 4 |" in log
    names = sorted(p.name for p in out.iterdir())
    assert all(p.is_file() for p in out.iterdir()) and len(names) <= 8
    assert names == sorted(["check.log", "sampling.json", "molecules_3.npz", "molecules_5.npz", "train_log.jsonl",
                            "model.safetensors", "config.json"])
    summary = json.loads((out / "sampling.json").read_text())
    assert [run["n"] for run in summary["runs"]] == [3, 5] and summary["steps"] == 2
    mols, skipped = read_molecules(str(out / "molecules_5.npz"))
    assert len(mols) == 5 and skipped == 0
    trained = load_release(str(out))  # model.safetensors and config.json are a release as they come back
    assert trained.cfg.to_dict() == cfg.to_dict()
    log_rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log_rows[-1]["event"] == "end" and log_rows[-1]["step"] > 0
