"""`symdiff generate` end to end, with a tiny untrained model and a few denoising steps.

Most runs go through the real console entry point in this process (fast: torch is imported
once); pipes and Ctrl-C need a real child process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import run_cli  # tests/, beside this file
from symdiff_cli.engine.shards import parse_shard, shard_share
from symdiff_cli.engine.release import save_release
from symdiff_cli.engine.release_config import Guide, GuideNetwork
from symdiff_cli.engine.release_layout import WEIGHTS_FILE
from symdiff_cli.errors import UsageError
from symdiff_cli.io.reader import read_molecules
from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.dit import SymmetrisedDenoiser

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "3", "--batch-size", "4"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A weights directory holding the release "tiny" (untrained, sizes 4..7 atoms)."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    cfg = model_config_from_preset("tiny")
    histogram = {4: 1, 5: 2, 6: 2, 7: 1}
    main = SymmetrisedDenoiser(cfg)
    save_release(root / "tiny", cfg, main.state_dict(), histogram, "qm9", {"step": 0}, default_steps_cpu=3)
    # Guides: another tiny network, shipped inside a copy of "tiny" and as a release of its own.
    guide = SymmetrisedDenoiser(cfg)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_release(root / "tiny-old", cfg, guide.state_dict(), histogram, "qm9", {"step": 0}, default_steps_cpu=3)
    save_release(root / "tiny-guided", cfg, main.state_dict(), histogram, "qm9", {"step": 0}, default_steps_cpu=3,
                 guide=Guide.single(cfg, guide.state_dict(), 2.0))
    # A guide of two networks: tiny-old's and a smaller one's (mean prediction), shipped and on its own.
    small_cfg = model_config_from_preset("tiny", depth=1)
    small = SymmetrisedDenoiser(small_cfg)
    save_release(root / "tiny-small", small_cfg, small.state_dict(), histogram, "qm9", {"step": 0}, default_steps_cpu=3)
    save_release(root / "tiny-guided2", cfg, main.state_dict(), histogram, "qm9", {"step": 0}, default_steps_cpu=3,
                 guide=Guide([GuideNetwork(cfg, guide.state_dict()), GuideNetwork(small_cfg, small.state_dict())], 2.0))
    hcno = model_config_from_preset("tiny", atom_types=("H", "C", "N", "O"))
    save_release(root / "tiny-hcno", hcno, SymmetrisedDenoiser(hcno).state_dict(), histogram, "qm9", {"step": 0})
    return root


@pytest.fixture()
def env(weights, monkeypatch):
    monkeypatch.setenv("SYMDIFF_WEIGHTS", str(weights))
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(name, raising=False)
    return weights


def subprocess_env(weights: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SYMDIFF_WEIGHTS=str(weights), PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def positions(path: Path) -> list[np.ndarray]:
    mols, skipped = read_molecules(str(path))
    assert skipped == 0
    return [m.positions for m in mols]


def test_sdf_with_tags_and_summary(env, tmp_path, capsys):
    out = tmp_path / "mols.sdf"
    code, stdout, stderr = run_cli(capsys, "generate", "--n", "10", "--out", str(out), "--model", "tiny", *FAST)
    assert code == 0, stderr
    assert stdout == ""
    mols, _ = read_molecules(str(out))
    assert len(mols) == 10
    assert all(4 <= m.num_atoms <= 7 for m in mols)
    assert all({"symdiff_stable", "symdiff_valid", "smiles"} <= m.props.keys() for m in mols)
    assert all(m.props["symdiff_stable"] in ("0", "1") for m in mols)
    assert not any("[H]" in m.props["smiles"] for m in mols)  # the readable, hydrogen-implicit form
    assert all(m.bonds is not None for m in mols)  # the perceived bonds are in the records
    assert "Wrote 10 molecules" in stderr and "molecules/s" in stderr and "atom stability" in stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mols.sdf"]


def test_tags_agree_with_the_coordinates_in_the_file(env, tmp_path, capsys, monkeypatch):
    """A sampled bond length just below a threshold must not be tagged from more digits than
    the SDF keeps: `symdiff evaluate` on the file has to give the tags' answer."""
    from symdiff_cli.chem.metrics import evaluate_molecule
    from symdiff_cli.engine.sampling import Sampler
    from symdiff_cli.io.molecule import Molecule

    # Methanimine with C=N at 1.33996 Å: stable as sampled (C=N needs < 1.34 Å), not at 1.3400.
    imine = [[0.0, 0.0, 0.0], [1.33996, 0.0, 0.0], [-0.545, 0.944, 0.0], [-0.545, -0.944, 0.0],
             [1.84996, 0.883, 0.0]]

    def sample(self, plan, steps, on_step=None):
        yield [Molecule([6, 7, 1, 1, 1], imine)]

    monkeypatch.setattr(Sampler, "sample", sample)
    assert evaluate_molecule(Molecule([6, 7, 1, 1, 1], imine)).stable
    out = tmp_path / "imine.sdf"
    code, _, stderr = run_cli(capsys, "generate", "--n", "1", "--out", str(out), "--model", "tiny", *FAST)
    assert code == 0, stderr
    (back,), _ = read_molecules(str(out))
    assert not evaluate_molecule(back).stable
    assert back.props["symdiff_stable"] == "0"
    assert "molecule stability 0.0 %" in stderr


@pytest.mark.slow
def test_same_seed_same_bytes_and_other_seed_differs(env, tmp_path, capsys):
    args = ["--n", "9", "--model", "tiny", "--quiet", *FAST]
    for name, seed in (("a.sdf", "5"), ("b.sdf", "5"), ("c.sdf", "6")):
        code, _, stderr = run_cli(capsys, "generate", "--out", str(tmp_path / name), "--seed", seed, *args)
        assert code == 0 and stderr == ""  # --quiet: nothing on stderr
    assert (tmp_path / "a.sdf").read_bytes() == (tmp_path / "b.sdf").read_bytes()
    assert (tmp_path / "a.sdf").read_bytes() != (tmp_path / "c.sdf").read_bytes()


@pytest.mark.slow
def test_bf16_and_fp32_sampling_are_each_reproducible(env, tmp_path, capsys):
    files = {}
    for precision in ("fp32", "bf16", "bf16"):
        out = tmp_path / f"{precision}-{len(files)}.xyz"
        code, _, stderr = run_cli(capsys, "generate", "--n", "6", "--out", str(out), "--model", "tiny",
                                  "--precision", precision, "--quiet", *FAST)
        assert code == 0, stderr
        files[out.name] = out.read_bytes()
    _, bf16_a, bf16_b = files.values()
    assert bf16_a == bf16_b


def test_spacing_changes_the_molecules_and_each_is_reproducible(env, tmp_path, capsys):
    files = []
    for spacing in ("cubic", "uniform", "uniform", "quadratic"):
        out = tmp_path / f"{spacing}-{len(files)}.xyz"
        code, _, stderr = run_cli(capsys, "generate", "--n", "6", "--out", str(out), "--model", "tiny",
                                  "--spacing", spacing, "--quiet", "--steps", "10", "--batch-size", "4")
        assert code == 0, stderr
        files.append(out.read_bytes())
    assert files[1] == files[2] and len({files[0], files[1], files[3]}) == 3
    # cubic is the default
    code, _, stderr = run_cli(capsys, "generate", "--n", "6", "--out", str(tmp_path / "default.xyz"),
                              "--model", "tiny", "--quiet", "--steps", "10", "--batch-size", "4")
    assert code == 0, stderr
    assert (tmp_path / "default.xyz").read_bytes() == files[0]


@pytest.mark.slow  # eight sampling runs
def test_guidance_from_the_release_or_the_command_line(env, tmp_path, capsys):
    def sample(name: str, *args: str) -> bytes:
        out = tmp_path / f"{name}.xyz"
        code, _, stderr = run_cli(capsys, "generate", "--n", "6", "--out", str(out), "--quiet", *FAST, *args)
        assert code == 0, stderr
        return out.read_bytes()

    plain = sample("plain", "--model", "tiny")
    shipped = sample("shipped", "--model", "tiny-guided")  # its guide, weight 2
    assert shipped != plain
    assert sample("explicit", "--model", "tiny", "--guide", "tiny-old", "--guidance", "2") == shipped
    assert sample("off", "--model", "tiny-guided", "--guidance", "1") == plain
    assert sample("stronger", "--model", "tiny-guided", "--guidance", "3") not in (plain, shipped)
    # --guide replaces the shipped guide, with the shipped weight unless --guidance says otherwise
    assert sample("same-guide", "--model", "tiny-guided", "--guide", "tiny-old") == shipped
    assert sample("other-guide", "--model", "tiny-guided", "--guide", "tiny") not in (plain, shipped)
    # a repeated --guide guides with the mean of the releases, as a release shipping both does
    both = sample("both-shipped", "--model", "tiny-guided2")
    assert both not in (plain, shipped)
    assert sample("both-explicit", "--model", "tiny", "--guide", "tiny-old", "--guide", "tiny-small",
                  "--guidance", "2") == both
    assert sample("small-alone", "--model", "tiny", "--guide", "tiny-small", "--guidance", "2") not in (both, shipped)
    assert sample("both-off", "--model", "tiny-guided2", "--guidance", "1") == plain


def test_fixed_num_atoms_and_other_formats(env, tmp_path, capsys):
    for name in ("m.xyz", "m.npz"):
        code, _, stderr = run_cli(capsys, "generate", "--n", "5", "--num-atoms", "8", "--out", str(tmp_path / name),
                                  "--model", "tiny", "-q", *FAST)
        assert code == 0, stderr
        mols, _ = read_molecules(str(tmp_path / name))
        assert [m.num_atoms for m in mols] == [8] * 5
    code, _, stderr = run_cli(capsys, "generate", "--n", "5", "--out", str(tmp_path / "m.txt"), "--format", "xyz",
                              "--model", "tiny", "-q", *FAST)
    assert code == 0, stderr
    assert len(read_molecules(str(tmp_path / "m.txt"), fmt="xyz")[0]) == 5


def test_shards_are_disjoint_and_reproducible(env, tmp_path, capsys, monkeypatch):
    base = ["generate", "--n", "11", "--model", "tiny", "-q", *FAST]
    for name, shard in (("s0.sdf", "0/2"), ("s1.sdf", "1/2"), ("s1again.sdf", "1/2")):
        assert run_cli(capsys, *base, "--shard", shard, "--out", str(tmp_path / name))[0] == 0
    shard0, shard1 = positions(tmp_path / "s0.sdf"), positions(tmp_path / "s1.sdf")
    assert (len(shard0), len(shard1)) == (6, 5)  # 11 split as evenly as possible
    assert (tmp_path / "s1.sdf").read_bytes() == (tmp_path / "s1again.sdf").read_bytes()
    for a in shard0:
        for b in shard1:
            assert a.shape != b.shape or not np.allclose(a, b)

    # A Slurm job array selects the shard when --shard is not given (ids may start at 1).
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert run_cli(capsys, *base, "--out", str(tmp_path / "slurm.sdf"))[0] == 0
    assert (tmp_path / "slurm.sdf").read_bytes() == (tmp_path / "s1.sdf").read_bytes()


def test_shard_arithmetic():
    assert [shard_share(10, i, 3) for i in range(3)] == [4, 3, 3]
    assert parse_shard("2/5", {}) == (2, 5)
    assert parse_shard(None, {}) == (0, 1)
    assert parse_shard(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    for bad in ("2/2", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(UsageError):
            parse_shard(bad, {})


@pytest.mark.slow
def test_stdout_carries_only_sdf_and_pipes_into_convert(env, tmp_path):
    cmd = [sys.executable, "-m", "symdiff_cli"]
    generate = subprocess.run([*cmd, "generate", "--n", "20", "--out", "-", "--model", "tiny", *FAST],
                              capture_output=True, env=subprocess_env(env), cwd=tmp_path, timeout=120)
    assert generate.returncode == 0, generate.stderr.decode()
    text = generate.stdout.decode()
    records = text.split("$$$$\n")
    assert records[-1] == "" and len(records) == 21  # 20 records, nothing before, between or after
    assert all("M  END" in r for r in records[:-1])
    assert b"Wrote 20 molecules" in generate.stderr  # the summary goes to stderr

    converted = subprocess.run([*cmd, "convert", "-", "out.xyz", "--from", "sdf"], input=generate.stdout,
                               capture_output=True, env=subprocess_env(env), cwd=tmp_path, timeout=120)
    assert converted.returncode == 0, converted.stderr.decode()
    assert len(read_molecules(str(tmp_path / "out.xyz"))[0]) == 20


def _damage_weights(weights: Path, tmp_path: Path, kind: str) -> str:
    """A copy of the tiny release with corrupt weights or weights that do not fit the config."""
    import shutil

    target = tmp_path / f"release-{kind}"
    shutil.copytree(weights / "tiny", target)
    if kind == "corrupt":
        (target / WEIGHTS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    else:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(target / WEIGHTS_FILE))
        name = next(n for n, t in tensors.items() if t.dim() == 2)
        tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
        save_file(tensors, str(target / WEIGHTS_FILE))
    return str(target)


BAD_INPUTS = {
    "zero n": (["--n", "0"], "--n"),
    "negative n": (["--n", "-3"], "--n"),
    "zero atoms": (["--n", "2", "--num-atoms", "0"], "--num-atoms"),
    "negative atoms": (["--n", "2", "--num-atoms", "-4"], "--num-atoms"),
    "too many atoms": (["--n", "2", "--num-atoms", "30"], "maximum of 29"),
    "unknown model": (["--n", "2", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    "corrupt weights": (["--n", "2", "--model", "@corrupt"], "safetensors"),
    "mismatched weights": (["--n", "2", "--model", "@mismatch"], "shape mismatch"),
    "bad shard": (["--n", "2", "--shard", "3/2"], "shard"),
    "bad format": (["--n", "2", "--format", "pdb"], "unsupported format"),
    "bad device": (["--n", "2", "--device", "tpu"], "--device"),
    "zero steps": (["--n", "2", "--steps", "0"], "--steps"),
    "bad precision": (["--n", "2", "--precision", "fp8"], "--precision"),
    "bad spacing": (["--n", "2", "--spacing", "cosine"], "--spacing must be one of cubic, quadratic, uniform"),
    "guidance without a guide": (["--n", "2", "--guidance", "2"], "this release ships none; pass --guide MODEL"),
    "guide without a weight": (["--n", "2", "--guide", "tiny-old"], "--guide needs --guidance W"),
    "negative guidance": (["--n", "2", "--model", "tiny-guided", "--guidance", "-1"], "--guidance must be"),
    "unknown guide": (["--n", "2", "--guide", "no-such-guide", "--guidance", "2"], "unknown model 'no-such-guide'"),
    "guide of other atom types": (["--n", "2", "--guide", "tiny-hcno", "--guidance", "2"],
                                  "--guide tiny-hcno: the guide model does not fit the main model (atom_types"),
    # An unset shell variable ("$MODEL") must not quietly mean the default model.
    "empty model": (["--n", "2", "--model", ""], "the model name is empty"),
    "empty guide": (["--n", "2", "--guide", " ", "--guidance", "2"], "the model name is empty"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_leaves_no_file(env, tmp_path, capsys, case):
    args, expected = BAD_INPUTS[case]
    args = [_damage_weights(env, tmp_path, a[1:]) if a.startswith("@") else a for a in args]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, stdout, stderr = run_cli(capsys, "generate", "--out", str(out_dir / "mols.sdf"),
                                   *(["--model", "tiny"] if "--model" not in args else []), "--steps", "2", *args)
    assert code != 0
    assert stdout == ""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], stderr
    assert "Traceback" not in stderr
    assert list(out_dir.iterdir()) == []  # neither the file nor a temporary one


def test_unwritable_output_directory(env, tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "generate", "--n", "2", "--out", str(tmp_path / "missing" / "m.sdf"),
                              "--model", "tiny", *FAST)
    assert code != 0 and stderr.startswith("Error: ") and "does not exist" in stderr and len(stderr.splitlines()) == 1
    assert not (tmp_path / "missing").exists()
    (tmp_path / "a.sdf").write_text("")
    code, _, stderr = run_cli(capsys, "generate", "--n", "2", "--out", str(tmp_path / "a.sdf" / "m.sdf"),
                              "--model", "tiny", *FAST)
    assert code != 0 and f"{tmp_path / 'a.sdf'} is not a directory" in stderr, stderr


def _restore_default_sigint() -> None:
    # A shell starts background jobs (`make test &`, nohup) with SIGINT ignored, and children
    # inherit that; Ctrl-C reaches a foreground process, whose SIGINT is the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_batches(env, tmp_path):
    """SIGINT after the first batch: a complete, shorter SDF and exit code 130."""
    out = tmp_path / "mols.sdf"
    proc = subprocess.Popen(
        [sys.executable, "-m", "symdiff_cli", "generate", "--n", "400", "--batch-size", "2", "--steps", "20",
         "--num-atoms", "5", "--model", "tiny", "--out", str(out), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(env), cwd=tmp_path,
        preexec_fn=_restore_default_sigint,
    )
    deadline = time.monotonic() + 120
    # MoleculeWriter streams into a hidden temporary file next to the output until it closes.
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".partial") and p.stat().st_size > 0]
        if partial:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "generate finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    stderr = stderr.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Interrupted: wrote" in stderr
    mols, skipped = read_molecules(str(out), strict=True)
    assert skipped == 0 and 2 <= len(mols) < 400 and len(mols) % 2 == 0
    assert out.read_text().endswith("$$$$\n")
    assert [p.name for p in tmp_path.iterdir()] == ["mols.sdf"]


def test_help_explains_every_option(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, stdout, _ = run_cli(capsys, "generate", "--help")
    assert code == 0
    for option in ("--n", "--out", "--format", "--batch-size", "--steps", "--spacing", "--guidance", "--guide",
                   "--seed", "--device", "--num-atoms", "--model", "--offline", "--shard", "--quiet", "--threads",
                   "--precision"):
        assert option in stdout, option
    text = " ".join(stdout.replace("│", " ").split())  # wrapped help read as one line
    assert "eps_guide + W (eps_main - eps_guide)" in text and "1 samples the main model alone" in text
    assert "--condition" in stdout and "--condition-guidance" in stdout


def test_valence_guidance_wraps_the_sampler_s_network_at_the_release_s_or_the_given_scale(env, tmp_path):
    import json
    import shutil

    from symdiff_cli.engine.denoiser import valence_guided
    from symdiff_cli.engine.release import load_release
    from symdiff_cli.model.valence import ValenceGuidedDenoiser

    plain = load_release("tiny", torch.device("cpu"), show_progress=False)
    assert valence_guided(plain.model, plain, None) is plain.model  # older releases: off
    assert valence_guided(plain.model, plain, 0.0) is plain.model
    wrapped = valence_guided(plain.model, plain, 0.02)
    assert isinstance(wrapped, ValenceGuidedDenoiser) and wrapped.scale == 0.02 and wrapped.inner is plain.model

    release = tmp_path / "tiny-valence"
    shutil.copytree(env / "tiny", release)
    config = json.loads((release / "config.json").read_text())
    config["sampling"]["valence_guidance"] = {"scale": 0.03, "max_t": 250, "width": 0.04, "temperature": 0.2}
    (release / "config.json").write_text(json.dumps(config))
    own = load_release(str(release), torch.device("cpu"), show_progress=False)
    wrapped = valence_guided(own.model, own, None)
    assert (wrapped.scale, wrapped.max_t, wrapped.width, wrapped.temperature) == (0.03, 250, 0.04, 0.2)
    assert valence_guided(own.model, own, 0.0) is own.model
    assert valence_guided(own.model, own, 0.5).max_t == 250  # the scale overrides, the rest stays


def test_valence_guidance_option_reaches_the_sampler_and_bad_values_are_one_line(env, tmp_path, capsys, monkeypatch):
    import json
    import shutil

    import symdiff_cli.engine.generate as engine

    seen = []
    real = engine.valence_guided
    monkeypatch.setattr(engine, "valence_guided", lambda d, r, s: seen.append(s) or real(d, r, s))
    code, _, stderr = run_cli(capsys, "generate", "--n", "2", "--out", str(tmp_path / "a.sdf"), "--model", "tiny",
                              *FAST, "--valence-guidance", "0.02")
    assert code == 0, stderr
    assert seen == [0.02]
    code, _, stderr = run_cli(capsys, "generate", "--n", "2", "--out", str(tmp_path / "b.sdf"), "--model", "tiny",
                              *FAST, "--valence-guidance", "-1")
    assert code != 0 and "--valence-guidance must be a number >= 0" in stderr and "Traceback" not in stderr
    release = tmp_path / "tiny-bad"
    shutil.copytree(env / "tiny", release)
    config = json.loads((release / "config.json").read_text())
    config["sampling"]["valence_guidance"] = {"scale": "strong"}
    (release / "config.json").write_text(json.dumps(config))
    code, _, stderr = run_cli(capsys, "generate", "--n", "2", "--out", str(tmp_path / "c.sdf"), "--model", str(release),
                              *FAST)
    assert code != 0 and "valence_guidance" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "c.sdf").exists()


def test_rdkit_warnings_stay_off_stderr(env, tmp_path):
    """The untrained tiny model makes molecules RDKit warns about (hydrogens without neighbours)."""
    cmd = [sys.executable, "-m", "symdiff_cli", "generate", "--n", "12", "--out", str(tmp_path / "m.sdf"),
           "--model", "tiny", *FAST]
    result = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(env), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Wrote 12 molecules" in result.stderr
    assert "WARNING" not in result.stderr and "RuntimeWarning" not in result.stderr
