"""The CPU settings that make sampling faster: glibc's allocator keeping freed buffers
(engine/memory.py), and benchmarks/cpu_kernels.py, which measures the kernels of model/kernels.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Asks the C allocator for twelve 8 MiB buffers at once, writes them and frees them, twenty
# times, as a forward does with its activations (torch's own allocations are left out: other
# threads' small allocations between them make the count vary), and prints the minor page faults
# that took: each new page the kernel hands out and zeroes is one. By default glibc gives the freed
# top of its heap back to the kernel once it exceeds twice the largest buffer freed so far.
_FAULTS = textwrap.dedent("""
    import ctypes, ctypes.util, resource, sys
    from symdiff_cli.engine.memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 8 << 20
    def forward():
        buffers = [libc.malloc(size) for _ in range(12)]
        for buffer in buffers:
            ctypes.memset(buffer, 1, size)
        for buffer in buffers:
            libc.free(buffer)
    for _ in range(3):
        forward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        forward()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, cwd=REPO)
        assert run.returncode == 0, run.stderr
        return int(run.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    # 20 rounds of 96 MiB are about 490,000 pages.
    assert default > 100_000
    assert kept < default / 10


def test_the_cli_keeps_freed_memory(monkeypatch):
    from symdiff_cli import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True) or True)
    monkeypatch.setattr(sys, "argv", ["symdiff", "--version"])
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == [True]


def test_the_benchmark_prints_its_three_tables(tmp_path):
    from symdiff_cli.engine.release import save_release
    from symdiff_cli.model.config import model_config_from_preset
    from symdiff_cli.model.dit import SymmetrisedDenoiser

    torch.manual_seed(0)
    cfg = model_config_from_preset("tiny")
    release = save_release(tmp_path / "tiny", cfg, SymmetrisedDenoiser(cfg).state_dict(), {4: 3, 6: 2}, "qm9",
                           {"step": 0}, default_steps_cpu=3)
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cpu_kernels.py"), "--model", str(release), "--threads", "1",
         "--batch", "8", "--train-batch", "4", "--batches", "2", "--num-atoms", "5", "--repeats", "1"],
        capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "| transformer.blocks.0.mlp.fc1 |" in run.stdout
    assert "| forward + backward, bf16 autocast, 4 x 5 |" in run.stdout
    assert "| main (hidden 64, depth 3) | 2 |" in run.stdout
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu_kernels.py"), "tables"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown table 'tables'" in bad.stderr
