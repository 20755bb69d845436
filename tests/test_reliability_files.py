"""Issue 35, the file side: nothing a user owns is lost, every bad input is one clear line.

Most commands run through the console entry point in this process (torch is imported once);
`capfd` sees what RDKit writes to the stderr file descriptor as well as Python's output. The
warning checks need a real child process, because pytest itself collects Python warnings.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import run_cli as cli  # tests/, beside this file
from symdiff_cli.engine.checkpoint import CHECKSUM_KEY, atomic_torch_save, load_checkpoint, save_checkpoint
from symdiff_cli.engine.guides import attach_guide
from symdiff_cli.engine.release import load_release, load_release_state_dict, save_release
from symdiff_cli.engine.release_config import CHECKSUMS_KEY, Guide, GuideNetwork
from symdiff_cli.engine.release_layout import CONFIG_FILE, GUIDE_WEIGHTS_FILE, WEIGHTS_FILE
from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.atomic import atomic_output
from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.dit import SymmetrisedDenoiser

REPO = Path(__file__).resolve().parents[1]
HISTOGRAM = {4: 1, 5: 2, 6: 1}
WATER_XYZ = "3\nwater\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"
FORMALDEHYDE_XYZ = (
    "4\nformaldehyde\nC 0.0 0.0 0.0\nO 1.205 0.0 0.0\nH -0.587 0.9377 0.0\nH -0.587 -0.9377 0.0\n"
)


# --------------------------------------------------------------------------------------
# Helpers


def assert_one_line_error(code: int, stdout: str, stderr: str, expected: str = "", exit_code: int | None = None) -> None:
    assert code != 0, stderr
    if exit_code is not None:
        assert code == exit_code, (code, stderr)
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert expected in lines[0], lines[0]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and directory under `root` (hidden ones too): content digest, mtime, mode."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = ("link", os.readlink(path))
        elif path.is_dir():
            state[key] = ("dir", stat.S_IMODE(info.st_mode))
        elif not stat.S_ISREG(info.st_mode):  # reading a FIFO would block
            state[key] = ("special", stat.S_IFMT(info.st_mode), info.st_mtime_ns)
        else:
            state[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns, stat.S_IMODE(info.st_mode))
    return state


def leftovers(root: Path) -> list[str]:
    """Temporary files or directories that a finished command must not leave behind."""
    return [str(p) for p in root.rglob("*") if p.name.endswith((".partial", ".tmp", ".old"))]


def tiny_state(seed: int, **overrides) -> tuple:
    torch.manual_seed(seed)
    cfg = model_config_from_preset("tiny", **overrides)
    return cfg, SymmetrisedDenoiser(cfg).state_dict()


def tiny_release(path: Path, seed: int = 0, guide_seeds: tuple[int, ...] = (), weight: float = 2.0) -> Path:
    cfg, state = tiny_state(seed)
    guide = None
    if guide_seeds:
        guide = Guide([GuideNetwork(cfg, tiny_state(s)[1], {"step": s}) for s in guide_seeds], weight)
    return save_release(path, cfg, state, HISTOGRAM, "qm9", {"step": seed}, default_steps_cpu=2, guide=guide)


def tiny_checkpoint(path: Path, seed: int = 0, with_digest: bool = True) -> Path:
    cfg, ema = tiny_state(seed)
    ckpt = {"ema": ema, "model": tiny_state(seed + 1)[1], "model_config": cfg.to_dict(),
            "atom_count_histogram": HISTOGRAM, "dataset": "qm9",
            "state": {"step": 7, "epoch": 1, "batch_in_epoch": 0, "elapsed": 3.0}, "train_config": {"preset": "tiny"}}
    (save_checkpoint if with_digest else atomic_torch_save)(ckpt, path)
    return path


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def safetensors_data_start(path: Path) -> int:
    """The offset of the first tensor byte: past the 8-byte length and the JSON header."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def add_user_files(directory: Path) -> None:
    (directory / "notes.txt").write_text("my notes\n")
    (directory / "samples").mkdir()
    (directory / "samples" / "mols.sdf").write_text("not really an sdf, but mine\n")


def user_files(directory: Path) -> dict[str, tuple]:
    return {k: v for k, v in snapshot(directory).items() if k == "notes.txt" or k.startswith("samples")}


# --------------------------------------------------------------------------------------
# 1. A release written into an existing directory keeps the user's other files


def test_exporting_a_checkpoint_over_a_release_keeps_the_users_files(tmp_path, capfd):
    release = tiny_release(tmp_path / "rel", seed=0)
    add_user_files(release)
    before = user_files(release)
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", seed=5)
    code, _, err = cli(capfd, "convert", str(ckpt), str(release))
    assert code == 0, err
    assert user_files(release) == before
    _, tensors = load_release_state_dict(str(release))
    for name, tensor in tiny_state(5)[1].items():
        assert torch.equal(tensors[name], tensor), name
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "rel"]


def test_in_place_new_guidance_weight_keeps_the_users_files(tmp_path, capfd):
    release = tiny_release(tmp_path / "rel", seed=0, guide_seeds=(1,))
    add_user_files(release)
    before = user_files(release)
    mode_before = stat.S_IMODE((release / WEIGHTS_FILE).stat().st_mode)
    code, _, err = cli(capfd, "convert", str(release), str(release), "--guidance", "3")
    assert code == 0, err
    assert user_files(release) == before
    assert json.loads((release / CONFIG_FILE).read_text())["guidance"]["weight"] == 3.0
    assert load_release(str(release)).guidance_weight == 3.0
    assert stat.S_IMODE((release / WEIGHTS_FILE).stat().st_mode) == mode_before
    assert leftovers(tmp_path) == []


def test_fewer_guide_networks_retire_the_old_guide_files_only(tmp_path):
    release = tiny_release(tmp_path / "rel", seed=0, guide_seeds=(1, 2))
    add_user_files(release)
    (release / "guide-notes.txt").write_text("mine too")
    before = user_files(release)
    cfg, _ = tiny_state(0)
    attach_guide(release, release, Guide.single(cfg, tiny_state(3)[1], 2.0))
    assert user_files(release) == before and (release / "guide-notes.txt").read_text() == "mine too"
    assert not (release / "guide-2.safetensors").exists()
    assert load_release(str(release)).guide is not None


def test_a_failed_swap_puts_the_previous_release_back(tmp_path, monkeypatch):
    release = tiny_release(tmp_path / "rel", seed=0, guide_seeds=(1,))
    add_user_files(release)
    before = snapshot(release)
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # after config.json and model.safetensors are in place
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    cfg, state = tiny_state(7)
    with pytest.raises(SymdiffError, match="No space left on device"):
        save_release(release, cfg, state, {5: 1}, "qm9", {}, guide=Guide.single(cfg, tiny_state(8)[1], 4.0))
    monkeypatch.setattr(os, "replace", real_replace)
    after = snapshot(release)
    # Same bytes and modes (a restored file has its old content; mtimes of hard links stay too).
    assert after == before
    assert load_release(str(release)).guidance_weight == 2.0


# --------------------------------------------------------------------------------------
# 2. An output path that is an input file is refused


@pytest.fixture
def sdf_file(tmp_path) -> Path:
    from symdiff_cli.io.reader import read_molecules
    from symdiff_cli.io.writer import write_molecules

    xyz = tmp_path / "in.xyz"
    xyz.write_text(FORMALDEHYDE_XYZ + WATER_XYZ)
    sdf = tmp_path / "a.sdf"
    write_molecules(str(sdf), read_molecules(str(xyz))[0])
    xyz.unlink()
    return sdf


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "other spelling"])
@pytest.mark.parametrize("option", ["--json", "--per-molecule"])
def test_evaluate_refuses_to_write_over_its_input(tmp_path, capfd, sdf_file, how, option):
    out = {"same path": sdf_file, "symlink": tmp_path / "link.json", "hard link": tmp_path / "hard.csv",
           "other spelling": tmp_path / "." / "sub" / ".." / "a.sdf"}[how]
    (tmp_path / "sub").mkdir()
    if how == "symlink":
        out.symlink_to(sdf_file.name)
    elif how == "hard link":
        os.link(sdf_file, out)
    before = snapshot(tmp_path)
    code, stdout, stderr = cli(capfd, "evaluate", str(sdf_file), option, str(out), "--no-novelty")
    assert_one_line_error(code, "", stderr, "refusing to overwrite", exit_code=2)
    assert snapshot(tmp_path) == before


def test_evaluate_refuses_two_outputs_on_one_file(tmp_path, capfd, sdf_file):
    code, _, stderr = cli(capfd, "evaluate", str(sdf_file), "--json", str(tmp_path / "x"),
                          "--per-molecule", str(tmp_path / "x"), "--no-novelty")
    assert_one_line_error(code, "", stderr, "give them different paths", exit_code=2)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("how", ["same path", "symlink"])
def test_convert_refuses_to_write_over_its_input(tmp_path, capfd, sdf_file, how):
    out = sdf_file
    if how == "symlink":
        out = tmp_path / "out.sdf"
        out.symlink_to(sdf_file)
    before = snapshot(tmp_path)
    code, _, stderr = cli(capfd, "convert", str(sdf_file), str(out))
    assert_one_line_error(code, "", stderr, "is the input file", exit_code=2)
    assert snapshot(tmp_path) == before


def test_train_refuses_to_write_its_run_into_a_release(tmp_path, capfd, small_npz):
    release = tiny_release(tmp_path / "rel", guide_seeds=(1,))
    before = snapshot(tmp_path)
    code, out, err = cli(capfd, "train", "--data", str(small_npz), "--out", str(release), "--preset", "tiny",
                         "--max-steps", "1", "--quiet", "--threads", "1")
    assert_one_line_error(code, out, err, "is a release directory", exit_code=2)
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------
# 4. Binary or compressed data where text is expected


@pytest.fixture
def binary_inputs(tmp_path, sdf_file) -> dict[str, Path]:
    files = {}
    for seed in (0, 1, 2):
        data = random.Random(seed).randbytes(4096)
        for ext in ("sdf", "xyz", "smi"):
            files[f"urandom{seed}.{ext}"] = data
    files["gzipped.sdf"] = gzip.compress(sdf_file.read_bytes())
    files["gzipped.xyz"] = gzip.compress(WATER_XYZ.encode())
    files["nul.sdf"] = sdf_file.read_bytes().replace(b"\n", b"\n\x00", 1)
    paths = {}
    for name, data in files.items():
        path = tmp_path / "inputs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
    return paths


def test_binary_data_is_one_line_in_evaluate_and_convert(tmp_path, capfd, binary_inputs):
    before = snapshot(tmp_path)
    for name, path in binary_inputs.items():
        code, out, err = cli(capfd, "evaluate", str(path), "--no-novelty")
        assert_one_line_error(code, out, err, "is not a text molecule file", exit_code=1)
        code, out, err = cli(capfd, "convert", str(path), str(tmp_path / "out.xyz"))
        assert_one_line_error(code, out, err, "is not a text molecule file", exit_code=1)
        code, out, err = cli(capfd, "evaluate", "-", "--no-novelty", stdin=path.read_bytes())
        assert_one_line_error(code, out, err, exit_code=1)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_gzip_names_the_compression(capfd, binary_inputs):
    code, out, err = cli(capfd, "evaluate", str(binary_inputs["gzipped.sdf"]), "--no-novelty")
    assert_one_line_error(code, out, err, "gzip-compressed", exit_code=1)


@pytest.mark.parametrize("name", ["urandom0.sdf", "urandom1.xyz", "gzipped.sdf"])
def test_binary_training_data_is_one_line(tmp_path, capfd, binary_inputs, name):
    before = snapshot(tmp_path)
    code, out, err = cli(capfd, "train", "--data", str(binary_inputs[name]), "--out", str(tmp_path / "run"),
                         "--preset", "tiny", "--max-steps", "1", "--quiet", "--threads", "1")
    assert_one_line_error(code, out, err, "is not a text molecule file", exit_code=1)
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------
# 7. Integrity of release weights and checkpoints


def test_release_records_a_checksum_per_weights_file(tmp_path):
    release = tiny_release(tmp_path / "rel", guide_seeds=(1, 2))
    checksums = json.loads((release / CONFIG_FILE).read_text())[CHECKSUMS_KEY]
    assert sorted(checksums) == sorted([WEIGHTS_FILE, GUIDE_WEIGHTS_FILE, "guide-2.safetensors"])
    for name, digest in checksums.items():
        assert hashlib.sha256((release / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("weights_file", [WEIGHTS_FILE, GUIDE_WEIGHTS_FILE])
def test_a_flipped_weight_byte_is_refused_by_name(tmp_path, weights_file):
    release = tiny_release(tmp_path / "rel", guide_seeds=(1,))
    path = release / weights_file
    flip_byte(path, safetensors_data_start(path) + 100)
    with pytest.raises(SymdiffError) as info:
        load_release(str(release))
    assert f"{weights_file} is damaged" in str(info.value) and "\n" not in str(info.value)


def test_releases_without_checksums_load_as_before(tmp_path):
    release = tiny_release(tmp_path / "rel", guide_seeds=(1,))
    config = json.loads((release / CONFIG_FILE).read_text())
    del config[CHECKSUMS_KEY]
    (release / CONFIG_FILE).write_text(json.dumps(config))
    flip_byte(release / WEIGHTS_FILE, safetensors_data_start(release / WEIGHTS_FILE) + 100)  # undetectable now
    assert load_release(str(release)).guide is not None


def test_the_shipped_releases_still_load():
    # The guides were written before releases carried checksums: they must keep loading without.
    for name in ("qm9-guide", "qm9-guide-small"):
        assert CHECKSUMS_KEY not in json.loads((REPO / "weights" / name / CONFIG_FILE).read_text())
        assert load_release(str(REPO / "weights" / name)).guide is None
    # qm9 was written again (its sampler settings) with checksums, which loading verifies.
    assert set(json.loads((REPO / "weights" / "qm9" / CONFIG_FILE).read_text())[CHECKSUMS_KEY]) == {
        "model.safetensors", "guide.safetensors", "guide-2.safetensors"}
    assert load_release(str(REPO / "weights" / "qm9")).guide is not None


@pytest.mark.parametrize("bad", [["sha256"], {"model.safetensors": "abc"}, {"model.safetensors": 3}])
def test_a_malformed_checksum_section_is_one_line(tmp_path, bad):
    release = tiny_release(tmp_path / "rel")
    config = json.loads((release / CONFIG_FILE).read_text())
    config[CHECKSUMS_KEY] = bad
    (release / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SymdiffError, match="sha256 must map weights file names"):
        load_release(str(release))


def _tensor_offset(path: Path, tensor: torch.Tensor) -> int:
    offset = path.read_bytes().find(tensor.contiguous().numpy().tobytes())
    assert offset > 0
    return offset


def test_a_flipped_checkpoint_byte_is_refused(tmp_path, capfd):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt")
    loaded = load_checkpoint(ckpt)
    assert isinstance(loaded[CHECKSUM_KEY], str)
    largest = max(loaded["ema"].values(), key=lambda t: t.numel())
    flip_byte(ckpt, _tensor_offset(ckpt, largest) + 17)
    with pytest.raises(SymdiffError, match="is damaged"):
        load_checkpoint(ckpt)
    before = snapshot(tmp_path)
    code, out, err = cli(capfd, "convert", str(ckpt), str(tmp_path / "rel"))
    assert_one_line_error(code, out, err, "is damaged", exit_code=1)
    assert snapshot(tmp_path) == before


def test_training_writes_checkpoints_whose_damage_is_caught(tmp_path, capfd, small_npz):
    run = tmp_path / "run"
    code, _, err = cli(capfd, "train", "--data", str(small_npz), "--out", str(run), "--preset", "tiny",
                       "--max-steps", "1", "--batch-size", "8", "--quiet", "--threads", "1")
    assert code == 0, err
    ckpt = run / "checkpoint.pt"
    loaded = load_checkpoint(ckpt)
    assert isinstance(loaded[CHECKSUM_KEY], str)
    largest = max(loaded["ema"].values(), key=lambda t: t.numel())
    flip_byte(ckpt, _tensor_offset(ckpt, largest) + 5)
    before = snapshot(tmp_path)
    code, out, err = cli(capfd, "train", "--data", str(small_npz), "--out", str(run), "--resume",
                         "--max-steps", "2", "--quiet", "--threads", "1")
    assert_one_line_error(code, out, err, "is damaged", exit_code=1)
    assert snapshot(tmp_path) == before


def test_checkpoints_without_a_digest_load_as_before(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", with_digest=False)
    assert CHECKSUM_KEY not in load_checkpoint(ckpt)


@pytest.mark.parametrize("damage", ["zero bytes", "truncated"])
def test_empty_or_truncated_checkpoint_is_one_line(tmp_path, capfd, damage):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt")
    data = ckpt.read_bytes()
    ckpt.write_bytes(b"" if damage == "zero bytes" else data[: len(data) // 3])
    before = snapshot(tmp_path)
    code, out, err = cli(capfd, "convert", str(ckpt), str(tmp_path / "rel"))
    assert_one_line_error(code, out, err, "empty" if damage == "zero bytes" else "cannot read checkpoint",
                          exit_code=1)
    assert snapshot(tmp_path) == before


def test_resuming_from_a_damaged_checkpoint_is_one_line(tmp_path, capfd, small_npz):
    run = tmp_path / "run"
    tiny_checkpoint(run / "checkpoint.pt")
    (run / "checkpoint.pt").write_bytes(b"")
    before = snapshot(tmp_path)
    code, out, err = cli(capfd, "train", "--data", str(small_npz), "--out", str(run), "--resume",
                         "--max-steps", "1", "--quiet", "--threads", "1")
    assert_one_line_error(code, out, err, "empty", exit_code=1)
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------
# 8. Atom types, release to stdout, overwrite semantics, warnings, unused guides, --from


def test_unknown_atom_type_is_caught_when_the_release_loads(tmp_path, capfd):
    release = tiny_release(tmp_path / "rel")
    config = json.loads((release / CONFIG_FILE).read_text())
    config["model_config"]["atom_types"] = ["H", "C", "N", "O", "Xx"]
    (release / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SymdiffError, match="'Xx', which is not an element symbol"):
        load_release(str(release))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = cli(capfd, "generate", "--n", "2", "--model", str(release), "--out", str(out_dir / "m.sdf"),
                         "--steps", "2", "--quiet")
    assert_one_line_error(code, out, err, "not an element symbol", exit_code=1)
    assert list(out_dir.iterdir()) == []


def test_a_release_with_unknown_atom_types_is_never_written(tmp_path):
    cfg, state = tiny_state(0)
    bad = cfg.__class__.from_dict({**cfg.to_dict(), "atom_types": ["H", "C", "N", "O", "Q"]})
    with pytest.raises(SymdiffError, match="'Q', which is not an element symbol"):
        save_release(tmp_path / "rel", bad, state, HISTOGRAM, "qm9", {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("source", ["checkpoint", "release"])
def test_a_release_cannot_go_to_stdout(tmp_path, capfd, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    if source == "checkpoint":
        args = [str(tiny_checkpoint(tmp_path / "ckpt.pt")), "-"]
    else:
        args = [str(tiny_release(tmp_path / "rel", guide_seeds=(1,))), "-", "--guidance", "3"]
    before = snapshot(tmp_path)
    code, out, err = cli(capfd, "convert", *args)
    assert_one_line_error(code, out, err, "cannot go to standard output", exit_code=2)
    assert snapshot(tmp_path) == before and not (tmp_path / "-").exists()


def test_an_overwritten_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "secret.json"
    target.write_text("old")
    target.chmod(0o600)
    with atomic_output(target) as handle:
        handle.write("new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_writing_through_a_symlink_keeps_the_link(tmp_path, capfd):
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "real.sdf"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.sdf"
    link.symlink_to(real)
    xyz = tmp_path / "w.xyz"
    xyz.write_text(WATER_XYZ)
    code, _, err = cli(capfd, "convert", str(xyz), str(link))
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert "water" in real.read_text() and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path / "data")) == ["real.sdf"]


def test_a_pipe_or_device_output_is_never_replaced_by_a_file(tmp_path, capfd, sdf_file):
    # A FIFO stands in for /dev/null or /dev/stdout, which a rename (as root) would replace.
    fifo = tmp_path / "out.xyz"
    os.mkfifo(fifo)
    before = snapshot(tmp_path)
    code, out, err = cli(capfd, "convert", str(sdf_file), str(fifo))
    assert_one_line_error(code, out, err, "not a regular file", exit_code=1)
    code, out, err = cli(capfd, "evaluate", str(sdf_file), "--json", str(fifo), "--no-novelty")
    assert_one_line_error(code, "", err, "not a regular file", exit_code=1)
    assert snapshot(tmp_path) == before and stat.S_ISFIFO(fifo.lstat().st_mode)


def _run_symdiff(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "symdiff_cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_rdkit_and_numpy_warnings_stay_off_stderr(tmp_path):
    # A lone hydrogen makes RDKit warn while writing SMILES; coordinates of 1e200 Å overflow
    # numpy's squared distances in the bond rules.
    (tmp_path / "lone.xyz").write_text("1\nh\nH 0 0 0\n" + WATER_XYZ)
    (tmp_path / "far.xyz").write_text("2\nfar\nC 1e200 0 0\nC -1e200 0 0\n")
    result = _run_symdiff("convert", "lone.xyz", "lone.smi", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "Converted 2 molecules from lone.xyz to lone.smi (smi)."]
    result = _run_symdiff("evaluate", "far.xyz", "--no-novelty", "--json", "far.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "overflow" not in result.stderr, result.stderr


@pytest.fixture
def guided_with_damaged_guide(tmp_path) -> Path:
    release = tiny_release(tmp_path / "rel", seed=0, guide_seeds=(1,))
    (release / GUIDE_WEIGHTS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    return release


def test_guidance_one_never_opens_the_guide(tmp_path, capfd, guided_with_damaged_guide):
    out = tmp_path / "m.xyz"
    code, _, err = cli(capfd, "generate", "--n", "2", "--model", str(guided_with_damaged_guide), "--out", str(out),
                       "--guidance", "1", "--steps", "2", "--quiet", "--device", "cpu")
    assert code == 0, err
    assert out.read_text().count("\n") > 4
    # --guide replaces the release's guide, which is then not opened either; its weight stays.
    other = tiny_release(tmp_path / "other", seed=3)
    code, _, err = cli(capfd, "generate", "--n", "2", "--model", str(guided_with_damaged_guide), "--out", str(out),
                       "--guide", str(other), "--steps", "2", "--quiet", "--device", "cpu")
    assert code == 0, err
    # Sampling with it still names the damaged file.
    code, stdout, err = cli(capfd, "generate", "--n", "2", "--model", str(guided_with_damaged_guide),
                            "--out", str(tmp_path / "n.xyz"), "--steps", "2", "--quiet", "--device", "cpu")
    assert_one_line_error(code, stdout, err, GUIDE_WEIGHTS_FILE, exit_code=1)
    assert not (tmp_path / "n.xyz").exists()


def test_evaluate_reads_smiles_from_stdin_with_from(capfd):
    code, out, err = cli(capfd, "evaluate", "-", "--from", "smi", "--no-novelty", "--json", "-", stdin=b"CCO\nC=O\n")
    assert code == 0, err
    assert json.loads(out)["counts"]["molecules"] == 2
    code, out, err = cli(capfd, "evaluate", "-", "--no-novelty", stdin=b"CCO\n")
    assert_one_line_error(code, out, err, "give it explicitly", exit_code=1)
    code, out, err = cli(capfd, "evaluate", "-", "--from", "pdb", "--no-novelty", stdin=b"CCO\n")
    assert_one_line_error(code, out, err, "unsupported format 'pdb'", exit_code=1)


# --------------------------------------------------------------------------------------
# Fault injection: damaged releases and checkpoints, random bytes to every reader


def _damaged(path: Path, kind: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if kind == "zero":
        data = bytearray()
    elif kind == "truncate":
        data = data[: rng.randrange(1, len(data))]
    elif kind == "urandom":
        data = bytearray(rng.randbytes(len(data)))
    else:  # flip a few bytes at random offsets
        for offset in rng.sample(range(len(data)), 3):
            data[offset] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["flip", "truncate", "zero", "urandom"])
@pytest.mark.parametrize("weights_file", [WEIGHTS_FILE, GUIDE_WEIGHTS_FILE])
def test_fault_injection_damaged_release_weights(tmp_path, capfd, seed, kind, weights_file):
    release = tiny_release(tmp_path / "rel", seed=0, guide_seeds=(1,))
    _damaged(release / weights_file, kind, random.Random(seed))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = snapshot(tmp_path)
    code, out, err = cli(capfd, "generate", "--n", "2", "--model", str(release), "--out", str(out_dir / "m.sdf"),
                         "--steps", "2", "--quiet", "--device", "cpu")
    assert_one_line_error(code, out, err, weights_file, exit_code=1)
    code, out, err = cli(capfd, "convert", str(release), str(tmp_path / "copy"), "--guidance", "3")
    assert_one_line_error(code, out, err, weights_file, exit_code=1)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["flip", "truncate", "urandom"])
def test_fault_injection_damaged_checkpoint(tmp_path, capfd, seed, kind):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt")
    clean = tmp_path / "clean"
    code, _, err = cli(capfd, "convert", str(ckpt), str(clean))
    assert code == 0, err
    _damaged(ckpt, kind, random.Random(seed))
    before = snapshot(tmp_path)
    out = tmp_path / "rel"
    code, stdout, err = cli(capfd, "convert", str(ckpt), str(out))
    if code == 0:
        # Only bytes that carry nothing (zip padding, an unchecked field) can pass: same release.
        assert kind == "flip"
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            assert (out / name).read_bytes() == (clean / name).read_bytes()
        shutil.rmtree(out)
    else:
        assert_one_line_error(code, stdout, err, "ckpt.pt", exit_code=1)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_fault_injection_random_bytes_to_every_reader(tmp_path, capfd, sdf_file, seed):
    rng = random.Random(seed)
    payloads = {"urandom": rng.randbytes(rng.randrange(1, 20000)), "gzip": gzip.compress(sdf_file.read_bytes())}
    work = tmp_path / "work"
    work.mkdir()
    release = tiny_release(work / "rel")
    for label, payload in payloads.items():
        for ext in ("sdf", "xyz", "smi", "npz"):
            path = work / f"{label}.{ext}"
            path.write_bytes(payload)
            before = snapshot(work)
            runs = [("evaluate", str(path), "--no-novelty"),
                    ("convert", str(path), str(work / "out.xyz")),
                    ("evaluate", "-", "--no-novelty", "--from", ext)]
            if ext != "smi":
                runs.append(("train", "--data", str(path), "--out", str(work / "run"), "--preset", "tiny",
                             "--max-steps", "1", "--quiet", "--threads", "1"))
            for args in runs:
                code, out, err = cli(capfd, *args, stdin=payload if "-" in args else None)
                assert_one_line_error(code, out, err, exit_code=1)
                assert snapshot(work) == before, args
            path.unlink()
        config = release / CONFIG_FILE
        saved = config.read_bytes()
        config.write_bytes(payload)
        before = snapshot(work)
        code, out, err = cli(capfd, "generate", "--n", "1", "--model", str(release), "--out", str(work / "m.sdf"),
                             "--steps", "2", "--quiet", "--device", "cpu")
        assert_one_line_error(code, out, err, "config.json", exit_code=1)
        assert snapshot(work) == before
        config.write_bytes(saved)
    assert leftovers(tmp_path) == []
