"""Issue 35, reliability: stop signals, full disks, memory bounds, bad training input, the run
lock, non-finite samples and closed pipes. Each test failed before its fix.

Signals go to real subprocesses (the console entry point), as a shell, `timeout` or Slurm
sends them. The full-disk tests mount a small tmpfs and need root; elsewhere they skip.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from symdiff_cli.io.reader import read_molecules
from test_generate_cli import FAST, env, run_cli, subprocess_env, weights  # noqa: F401 (fixtures)
from test_train import CLI, read_log

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


def _child_setup(memory_limit: int | None = None):
    """preexec_fn for the CLI under test: SIGINT as at a terminal (a background shell starts
    children with it ignored), and optionally a cap on its address space."""

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    return setup


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".partial", ".tmp")))


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for the process")


def _partial_written(folder: Path):
    return lambda: any(p.name.endswith(".partial") and p.stat().st_size > 0 for p in folder.iterdir())


def _generate(env_weights: Path, folder: Path, out: str, *args: str, memory_limit: int | None = None,
              stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(
        CLI + ["generate", "--model", "tiny", "--out", out, "--threads", "1", *args],
        stdout=stdout, stderr=subprocess.PIPE, env=subprocess_env(env_weights), cwd=folder,
        preexec_fn=_child_setup(memory_limit))


def _check_complete_sdf_or_none(path: Path, most: int) -> int:
    """The molecules of `path`: a complete SDF (every record whole) or no file at all."""
    if not path.exists():
        return 0
    mols, skipped = read_molecules(str(path), strict=True)
    assert skipped == 0 and 0 < len(mols) <= most
    assert path.read_text().endswith("$$$$\n")
    return len(mols)


# --------------------------------------------------------------------------------------
# Defect 3: SIGTERM and SIGHUP during generate and train


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_generate_keeps_finished_molecules_on_sigterm_and_sighup(env, tmp_path, signum):
    out = tmp_path / "mols.sdf"
    proc = _generate(env, tmp_path, str(out), "--n", "400", "--batch-size", "2", "--steps", "20", "--num-atoms", "5")
    _wait_for(_partial_written(tmp_path), proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    stderr = stderr.decode()
    assert proc.returncode == EXIT[signum], stderr
    assert "Traceback" not in stderr and f"Interrupted by {signal.Signals(signum).name}: wrote" in stderr
    assert 2 <= _check_complete_sdf_or_none(out, 399)
    assert [p.name for p in tmp_path.iterdir()] == ["mols.sdf"]


def test_an_interrupt_leaves_an_existing_file_as_it_was_and_writes_beside_it(env, tmp_path):
    # The user's file at --out is theirs until a run finishes: an interrupted run puts its finished
    # molecules beside it (mols.interrupted.sdf), and one with none finished writes nothing.
    out = tmp_path / "mols.sdf"
    out.write_text("the user's molecules\n")
    proc = _generate(env, tmp_path, str(out), "--n", "400", "--batch-size", "2", "--steps", "20", "--num-atoms", "5")
    _wait_for(_partial_written(tmp_path), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    stderr = stderr.decode()
    assert proc.returncode == EXIT[signal.SIGTERM], stderr
    assert out.read_text() == "the user's molecules\n"
    beside = tmp_path / "mols.interrupted.sdf"
    assert 2 <= _check_complete_sdf_or_none(beside, 399)
    said = "".join(stderr.split())  # the console wraps long paths
    assert "to" + str(beside) in said and str(out) + "wasleftasitwas" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mols.interrupted.sdf", "mols.sdf"]


def _train_cmd(run: Path, data: Path, *extra: str) -> list[str]:
    return CLI + ["train", "--data", str(data), "--preset", "tiny", "--out", str(run), "--batch-size", "8",
                  "--log-every", "1", "--threads", "1", "--quiet", *extra]


def _steps_logged(run: Path) -> int:
    if not (run / "metrics.jsonl").exists():
        return 0
    return sum(1 for r in read_log(run) if "loss" in r and "event" not in r)


def _check_resumable(run: Path, data: Path) -> int:
    """The step of run's checkpoint, after a resume from it ran to 2 more steps."""
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"]
    resumed = subprocess.run(_train_cmd(run, data, "--resume", "--max-steps", str(saved + 2)),
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert [r for r in read_log(run) if r.get("event") == "resume"][-1]["step"] == saved
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"] == saved + 2
    return saved


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_train_writes_a_checkpoint_of_the_current_step_on_a_stop_signal(tmp_path, small_npz, signum):
    run = tmp_path / "run"
    # A checkpoint interval far longer than the test: whatever is saved, the signal saved.
    proc = subprocess.Popen(_train_cmd(run, small_npz, "--checkpoint-every", "1h", "--max-steps", "100000"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_child_setup())
    _wait_for(lambda: _steps_logged(run) >= 3, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT[signum], stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert _leftovers(run) == [] and not (run / "train.lock").exists()
    last_logged = max(r["step"] for r in read_log(run) if "loss" in r and "event" not in r)
    assert _check_resumable(run, small_npz) == last_logged


# --------------------------------------------------------------------------------------
# Defect 8: bad training input, the run lock


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr (train.lr) must be a finite number, not nan"),
    (["--set", "model.hidden=abc"], "model.hidden='abc': expected a value of type int"),
    (["--set", "train.epochs=abc"], "--epochs must be a whole number"),
    (["--ema-decay", "2"], "--ema-decay must be in [0, 1)"),
    (["--ema-decay", "1"], "--ema-decay must be in [0, 1)"),
    (["--config", "BINARY"], "is not a text file"),
    (["--config", "LIST"], "must hold a JSON object"),
    (["--config", "SECTION"], "unknown section(s) 'modle'"),
    (["--set", "model.depth=0"], "model.depth must be positive"),
    # It trained, and then no release could be exported: the histogram outran the model.
    (["--set", "model.max_atoms=5"], "molecules of up to 14 atoms, more than the model's max_atoms of 5"),
])
def test_bad_train_input_is_one_line(tmp_path, small_npz, capsys, args, message):
    files = {"BINARY": b"\x80\x81\xff\x00binary", "LIST": b"[1, 2]", "SECTION": b'{"modle": {}}'}
    args = list(args)
    if args[-1] in files:
        path = tmp_path / "cfg.json"
        path.write_bytes(files[args[-1]])
        args[-1] = str(path)
    # In this process, through the console entry point: the checks come before any training.
    code, _, stderr = run_cli(capsys, *_train_cmd(tmp_path / "r", small_npz, "--max-steps", "1", *args)[3:])
    assert code == 2 or code == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], stderr
    assert not (tmp_path / "r").exists()


def test_second_train_on_the_same_out_is_refused_and_names_the_holder(tmp_path, small_npz):
    run = tmp_path / "run"
    first = subprocess.Popen(_train_cmd(run, small_npz, "--checkpoint-every", "1h", "--max-steps", "100000"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_child_setup())
    try:
        _wait_for(lambda: _steps_logged(run) >= 1, first)
        second = subprocess.run(_train_cmd(run, small_npz, "--max-steps", "2"), capture_output=True, text=True,
                                timeout=180)
        assert second.returncode == 1
        assert second.stderr.startswith(f"Error: {run} is in use by another training run (pid {first.pid} on host "
                                         f"{socket.gethostname()}"), second.stderr
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
        assert first.returncode == 143
        # Nothing of the refused run went into the log: one start, one end.
        events = [r.get("event") for r in read_log(run) if "event" in r]
        assert events.count("start") == 1 and events.count("end") == 1
    finally:
        if first.poll() is None:
            first.kill()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, small_npz):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    out = subprocess.run(_train_cmd(run, small_npz, "--max-steps", "2"), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert not (run / "train.lock").exists()


def test_run_lock_refuses_a_live_holder_in_process(tmp_path):
    from symdiff_cli.engine.run_lock import RunLock
    from symdiff_cli.errors import SymdiffError

    with RunLock(tmp_path / "run"):
        with pytest.raises(SymdiffError, match=f"pid {os.getpid()} on host"):
            RunLock(tmp_path / "run").acquire()
    with RunLock(tmp_path / "run"):  # released: free again
        pass


# --------------------------------------------------------------------------------------
# Defect 8: non-finite molecules, closed standard output


def test_a_non_finite_molecule_is_left_out_and_the_rest_is_written(env, tmp_path, capsys, monkeypatch):
    from symdiff_cli.engine.sampling import Sampler

    real_sample = Sampler.sample

    def sample(self, plan, steps, on_step=None):
        for number, mols in enumerate(real_sample(self, plan, steps, on_step)):
            if number == 1:
                mols[0].positions[2, 1] = np.nan
            yield mols

    monkeypatch.setattr(Sampler, "sample", sample)
    out = tmp_path / "mols.sdf"
    code, _, stderr = run_cli(capsys, "generate", "--n", "8", "--out", str(out), "--model", "tiny",
                              "--num-atoms", "5", *FAST)
    assert code == 0, stderr
    assert "1 molecules with non-finite coordinates (a diverged sample) were left out" in stderr
    mols, _ = read_molecules(str(out), strict=True)
    names = [m.props["name"] for m in mols]
    assert len(mols) == 7 and "symdiff-seed0-0000004" not in names and names[-1] == "symdiff-seed0-0000007"
    assert [p.name for p in tmp_path.iterdir()] == ["mols.sdf"]


def test_all_molecules_non_finite_is_an_error_and_no_file(env, tmp_path, capsys, monkeypatch):
    from symdiff_cli.engine.sampling import Sampler

    real_sample = Sampler.sample

    def sample(self, plan, steps, on_step=None):
        for mols in real_sample(self, plan, steps, on_step):
            for mol in mols:
                mol.positions[:] = np.inf
            yield mols

    monkeypatch.setattr(Sampler, "sample", sample)
    code, _, stderr = run_cli(capsys, "generate", "--n", "4", "--out", str(tmp_path / "m.sdf"), "--model", "tiny", *FAST)
    assert code == 1 and "all 4 sampled molecules have non-finite coordinates" in stderr
    assert list(tmp_path.iterdir()) == []


def test_a_closed_stdout_pipe_ends_quietly_with_141(env, tmp_path):
    proc = _generate(env, tmp_path, "-", "--n", "50", "--num-atoms", "5", "--quiet", *FAST, stdout=subprocess.PIPE)
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()  # what `| head -c 100` does after 100 bytes
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 141
    assert "Traceback" not in stderr.decode() and "Error" not in stderr.decode()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["generate", "--model", "tiny", "--n", "2", "--out", "-", "--steps", "2"],
                                     ["convert", "@sdf", "-", "--to", "xyz"],
                                     ["evaluate", "@sdf", "--json", "-"], ["evaluate", "@sdf", "--per-molecule", "-"]])
def test_a_standard_output_closed_from_the_start_is_one_line(env, tmp_path, small_packed, command):
    # `symdiff ... --out - >&-`: Python sets sys.stdout to None; a write then raised deep inside
    # (generate, convert) or vanished with exit code 0 (evaluate).
    from symdiff_cli.io.writer import write_molecules

    sdf = tmp_path / "in.sdf"
    write_molecules(str(sdf), small_packed.to_molecules()[:3])
    command = [str(sdf) if part == "@sdf" else part for part in command]
    proc = subprocess.run(CLI + command, stderr=subprocess.PIPE, env=subprocess_env(env), cwd=tmp_path,
                          preexec_fn=lambda: os.close(1), timeout=120)
    stderr = proc.stderr.decode()
    assert proc.returncode != 0 and "Traceback" not in stderr
    assert stderr.strip().splitlines() == [f"Error: standard output is closed: cannot write "
                                           f"{'molecules' if command[0] != 'evaluate' else 'the ' + command[-2] + ' output'}"
                                           " to '-'; give a file instead"]


# --------------------------------------------------------------------------------------
# Defect 6: memory that does not grow with --n or with N^2


def test_plan_is_lazy_and_keeps_the_plan_of_a_small_run():
    from symdiff_cli.engine.shards import iter_plan_for_shard, plan_for_shard
    from symdiff_cli.engine.sampling import draw_atom_counts, plan_batches

    histogram = {4: 1, 5: 2, 6: 2, 7: 1}
    # The plan of a run within one chunk is the one generate always made (seeds included).
    counts_seq, batches_seq = np.random.SeedSequence([3, 0, 1]).spawn(2)
    counts = draw_atom_counts(histogram, 1000, np.random.default_rng(counts_seq))
    seed = int(batches_seq.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)
    assert plan_for_shard(histogram, 1000, None, 16, 3, (0, 1)).batches == plan_batches(counts, 16, seed).batches
    # Larger runs are planned chunk by chunk: all molecules, distinct seeds, nothing up front.
    batches = list(iter_plan_for_shard(histogram, 1000, None, 16, 3, (0, 1), chunk=64))
    assert sum(b for _, b, _ in batches) == 1000
    assert len({s for _, _, s in batches}) == len(batches)
    huge = iter_plan_for_shard(histogram, 10**12, None, 16, 3, (0, 1), chunk=64)
    assert sum(b for _, b, _ in (next(huge) for _ in range(8))) <= 8 * 16


@pytest.mark.slow
def test_a_huge_n_starts_sampling_at_once_in_bounded_memory(env, tmp_path):
    out = tmp_path / "mols.sdf"
    # 3 GiB of address space: planning 10^9 molecules up front needed 20 GB.
    proc = _generate(env, tmp_path, str(out), "--n", "1000000000", "--batch-size", "4", "--steps", "2", "--quiet",
                     memory_limit=3 << 30)
    _wait_for(_partial_written(tmp_path), proc, timeout=120)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr.decode()
    assert _check_complete_sdf_or_none(out, 10**9) >= 4


def test_npz_output_holds_one_batch_in_memory_not_the_whole_run(tmp_path):
    import tracemalloc

    from symdiff_cli.io.writer import MoleculeWriter
    from symdiff_cli.io.molecule import Molecule

    rng = np.random.default_rng(0)
    batch = [Molecule(rng.integers(1, 10, 20), rng.normal(size=(20, 3))) for _ in range(1000)]
    writer = MoleculeWriter(str(tmp_path / "run.npz"))
    tracemalloc.start()
    try:
        for _ in range(100):  # 2 million atoms: 64 MB of arrays if the writer gathered them
            writer.write(batch)
        writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB"
    archive = np.load(tmp_path / "run.npz")
    assert archive["positions"].shape == (2_000_000, 3) and archive["num_atoms"].shape == (100_000,)
    assert np.array_equal(archive["positions"][-20:], batch[-1].positions)
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]


def test_benchmark_bonds_are_the_rows_of_the_dense_matrix_in_bounded_chunks(monkeypatch):
    import symdiff_cli.chem.bonds as bonds

    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 29, 300):
        z = rng.choice([1, 6, 7, 8, 9], n)
        x = rng.uniform(0, 1.5 * max(n, 1) ** (1 / 3), (n, 3))
        dense = bonds.bonds_from_matrix(bonds.bond_order_matrix(z, x))
        for chunk in (bonds._PAIRS_PER_CHUNK, 5, 1000):
            monkeypatch.setattr(bonds, "_PAIRS_PER_CHUNK", chunk)
            assert np.array_equal(bonds.benchmark_bonds(z, x), dense), (n, chunk)
            assert np.array_equal(bonds.bonds_from_matrix(bonds.bond_order_matrix(z, x)), dense), (n, chunk)


@pytest.mark.slow
def test_convert_of_a_10000_atom_molecule_in_a_10_angstrom_cube_runs_in_bounded_memory(tmp_path):
    rng = np.random.default_rng(1)
    symbols = rng.choice(["C", "H", "N", "O"], 10_000)
    positions = rng.uniform(0, 10, (10_000, 3))
    source = tmp_path / "big.xyz"
    source.write_text("10000\nbig\n" + "".join(f"{s} {x:.5f} {y:.5f} {z:.5f}\n" for s, (x, y, z) in zip(symbols, positions)))
    for target in ("big.sdf", "big.smi"):
        out = subprocess.run(CLI + ["convert", str(source), str(tmp_path / target)], capture_output=True, text=True,
                             timeout=300, preexec_fn=_child_setup(memory_limit=3 << 30))
        assert out.returncode == 0, out.stderr[-2000:]
        assert "Traceback" not in out.stderr
    head = (tmp_path / "big.sdf").read_text()[:400]
    assert "V3000" in head and "COUNTS 10000 " in head
    # Far more bonds than valences allow: no valid SMILES, counted as left out.
    assert (tmp_path / "big.smi").read_text() == ""


# --------------------------------------------------------------------------------------
# Defect 5: a full disk


@pytest.fixture()
def small_disk(tmp_path):
    """A 96 KiB tmpfs (root only): room for a few small files, not for the outputs."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("the full-disk tests mount a tmpfs, which needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def _one_line_no_space(out: subprocess.CompletedProcess | tuple[int, str], target: Path) -> None:
    code, stderr = (out.returncode, out.stderr) if isinstance(out, subprocess.CompletedProcess) else out
    assert code == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and "WARNING" not in line]
    assert lines[-1].startswith(f"Error: no space left on device writing {target}"), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


@pytest.mark.parametrize("fmt", ["sdf", "npz"])
def test_generate_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(env, small_disk, fmt):
    target = small_disk / f"mols.{fmt}"
    proc = _generate(env, small_disk, str(target), "--n", "2000", "--num-atoms", "9", "--quiet", "--steps", "2",
                     "--batch-size", "500")
    _, stderr = proc.communicate(timeout=300)
    _one_line_no_space((proc.returncode, stderr.decode()), target)
    assert list(small_disk.iterdir()) == []


def test_convert_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(small_disk, tmp_path, small_packed):
    from symdiff_cli.io.writer import write_molecules
    from symdiff_cli.io.molecule import Molecule

    # Jittered copies: identical ones compress into an npz small enough to fit.
    rng = np.random.default_rng(0)
    mols = [Molecule(m.atomic_numbers, m.positions + rng.normal(0, 0.01, m.positions.shape))
            for m in small_packed.to_molecules() * 100]
    source = tmp_path / "many.xyz"
    write_molecules(str(source), mols)
    for name in ("out.sdf", "out.npz", "out.xyz"):
        out = subprocess.run(CLI + ["convert", str(source), str(small_disk / name)], capture_output=True, text=True,
                             timeout=300)
        _one_line_no_space(out, small_disk / name)
        assert list(small_disk.iterdir()) == []


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(small_disk, small_npz):
    run = small_disk / "run"
    out = subprocess.run(_train_cmd(run, small_npz, "--max-steps", "2"), capture_output=True, text=True, timeout=300)
    _one_line_no_space(out, run / "checkpoint.pt")
    assert _leftovers(small_disk) == [] and not (run / "checkpoint.pt").exists()
    assert not (run / "train.lock").exists()


def test_a_release_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk, tmp_path):
    from test_reliability_files import tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "checkpoint.pt")  # ~1 MB of weights, the disk has 96 KiB
    out = subprocess.run(CLI + ["convert", str(checkpoint), str(small_disk / "rel")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [f"Error: cannot write a release to {small_disk / 'rel'}: No space left on device"], out.stderr
    assert list(small_disk.iterdir()) == []


def test_write_error_names_the_file_and_finds_the_os_error_behind_torch():
    from symdiff_cli.errors import write_error

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as err:
        assert str(write_error(err, "run/checkpoint.pt")) == "no space left on device writing run/checkpoint.pt"
    assert write_error(RuntimeError("a bug"), "x") is None


# --------------------------------------------------------------------------------------
# Fault injection: stop signals at random moments


@pytest.mark.slow
def test_generate_survives_stop_signals_at_random_moments(env, tmp_path):
    rng = random.Random(35)
    for attempt in range(4):
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        out = folder / "mols.sdf"
        signum = rng.choice([signal.SIGINT, signal.SIGTERM])
        proc = _generate(env, folder, str(out), "--n", "40", "--batch-size", "2", "--steps", "6", "--num-atoms", "5",
                         "--quiet")
        # From the model load to after the end of sampling.
        time.sleep(rng.uniform(1.5, 6.0))
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
        stderr = stderr.decode()
        assert "Traceback" not in stderr, stderr
        assert _leftovers(folder) == []
        written = _check_complete_sdf_or_none(out, 40)
        if proc.returncode in (0, -signum):
            # The signal came after the run had finished its work: it ended normally, or the
            # signal ended it on its way out (the shell sees 128 + signal, as documented).
            assert written == 40, (attempt, proc.returncode, written)
        else:
            assert proc.returncode == EXIT[signum], (attempt, proc.returncode, stderr)


@pytest.mark.slow
def test_train_survives_stop_signals_at_random_moments(tmp_path, small_npz):
    rng = random.Random(35)
    for attempt in range(3):
        run = tmp_path / f"run{attempt}"
        signum = rng.choice([signal.SIGINT, signal.SIGTERM])
        proc = subprocess.Popen(_train_cmd(run, small_npz, "--checkpoint-every", "1h", "--max-steps", "100000"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_child_setup())
        time.sleep(rng.uniform(1.0, 8.0))
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == EXIT[signum], (proc.returncode, stderr.decode())
        assert "Traceback" not in stderr.decode()
        assert not run.exists() or _leftovers(run) == []
        if (run / "checkpoint.pt").exists():
            _check_resumable(run, small_npz)
        else:  # stopped before the first step: nothing of the run is left but its log
            assert not run.exists() or not any(r.get("event") == "end" for r in read_log(run))


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path, small_npz):
    from test_train import TORCHRUN_CLI

    run = tmp_path / "ddp"
    cmd = TORCHRUN_CLI + _train_cmd(run, small_npz, "--checkpoint-every", "1h", "--max-steps", "100000")[3:]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    _wait_for(lambda: _steps_logged(run) >= 12, proc, timeout=180)
    # torchrun passes SIGTERM on to its workers, as Slurm does to every task.
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    stderr = stderr.decode()
    # torchrun reports its own signal with a traceback of its own; none may come from symdiff.
    assert "symdiff_cli/" not in stderr, stderr[-3000:]
    log = read_log(run)
    stopped = [r for r in log if r.get("event") == "signal"]
    assert len(stopped) == 1 and stopped[0]["signal"] == "SIGTERM"
    assert [r for r in log if r.get("event") == "ranks_in_sync"][-1]["value"] is True
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"] == stopped[0]["step"]
    assert _leftovers(run) == [] and not (run / "train.lock").exists()
    _check_resumable(run, small_npz)


@pytest.mark.slow
def test_a_stop_signal_cuts_an_evaluation_short_and_keeps_the_checkpoint(tmp_path, small_npz):
    """Slurm waits some 30 s between SIGTERM and SIGKILL; an evaluation may take far longer."""
    run = tmp_path / "run"
    # An evaluation after step 1 that would sample for hours.
    proc = subprocess.Popen(_train_cmd(run, small_npz, "--checkpoint-every", "1h", "--max-steps", "100000",
                                       "--eval-every", "1", "--eval-samples", "100000", "--eval-steps", "1000"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_child_setup())
    try:
        _wait_for(lambda: _steps_logged(run) >= 1, proc)
        time.sleep(1.0)  # into the evaluation
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr.decode()
    log = read_log(run)
    assert not any(r.get("event") == "eval" for r in log)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"] == 1
