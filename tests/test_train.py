"""`symdiff train`: learning, exact resume, crash safety, DDP under torchrun, CLI errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from symdiff_cli.engine.metrics_log import read_metrics
from symdiff_cli.engine.train import train
from symdiff_cli.engine.train_config import TrainConfig
from symdiff_cli.model.config import model_config_from_preset

CLI = [sys.executable, "-m", "symdiff_cli"]
# Two processes on this machine's CPU, as a user launches a DDP run.
TORCHRUN_CLI = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "symdiff_cli"]


def read_log(run: Path) -> list[dict]:
    # Some tests poll a live run, whose last line may be half-written.
    return read_metrics(run / "metrics.jsonl")


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(run) if "loss" in r and "event" not in r}


def tiny_config(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), data=[str(data)], batch_size=32, lr=3e-3, warmup_steps=0, log_every=5,
                ema_decay=0.99, seed=0, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def dataset_loss(model_cfg, state_dict, packed, repeats: int = 20) -> float:
    """The l2 loss over all molecules with fixed noise draws: a low-variance measure of fit."""
    from symdiff_cli.chem.elements import QM9
    from symdiff_cli.data.batching import MoleculeTensors, SizeGroupedBatches
    from symdiff_cli.model.diffusion import Batch, NoiseSchedule, VPDiffusion
    from symdiff_cli.model.dit import SymmetrisedDenoiser

    model = SymmetrisedDenoiser(model_cfg)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    data = MoleculeTensors(packed, QM9)
    diffusion = VPDiffusion(NoiseSchedule())
    gen = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for _ in range(repeats):
            for idx in SizeGroupedBatches(packed.num_atoms, 64).epoch(0):
                x, h = data.gather(idx, 4.0, 10.0)
                total += float(diffusion.loss(model, Batch(x, h, None), generator=gen)) * len(idx)
    return total / (repeats * len(packed))


@pytest.mark.slow
def test_tiny_preset_overfits_32_molecules(tmp_path, small_npz, small_packed):
    model_cfg = model_config_from_preset("tiny")
    cfg = tiny_config(tmp_path / "run", small_npz, max_steps=3500, lr=3e-3, log_every=50)
    summary = train(cfg, model_cfg, console_print=lambda s: None)
    assert summary["step"] == 3500
    # The EMA weights: what sampling and releases use, and less noisy than the raw weights.
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["ema"]
    before = dataset_loss(model_cfg, None, small_packed)
    after = dataset_loss(model_cfg, trained, small_packed)
    assert after < before / 5, f"loss fell only from {before:.3f} to {after:.3f}"


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted_run(tmp_path, small_npz):
    model_cfg = model_config_from_preset("tiny")
    train(tiny_config(tmp_path / "a", small_npz, max_steps=40), model_cfg, console_print=lambda s: None)
    train(tiny_config(tmp_path / "b", small_npz, max_steps=20), model_cfg, console_print=lambda s: None)
    train(tiny_config(tmp_path / "b", small_npz, max_steps=40), None, console_print=lambda s: None)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    later = [s for s in a if s > 20]
    assert later and all(s in b for s in later)
    assert [a[s] for s in later] == [b[s] for s in later]
    ck_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    ck_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for k in ck_a["ema"]:
        assert torch.equal(ck_a["ema"][k], ck_b["ema"][k]), k


def test_bf16_training_on_cpu_learns_and_resumes_exactly(tmp_path, small_npz):
    # --precision bf16 on a CPU: bf16 autocast with the attention in fp32 and the fused optimiser.
    model_cfg = model_config_from_preset("tiny")
    run = lambda out, steps: train(tiny_config(tmp_path / out, small_npz, max_steps=steps, precision="bf16"),
                                   model_cfg if not (tmp_path / out).exists() else None, console_print=lambda s: None)
    run("a", 60)
    run("b", 30)
    run("b", 60)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert all(math.isfinite(v) for v in a.values())
    steps = sorted(a)
    assert sum(a[s] for s in steps[-3:]) < sum(a[s] for s in steps[:3]), a  # it learns
    later = [s for s in steps if s > 30]
    assert later and [a[s] for s in later] == [b[s] for s in later]
    ck_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    ck_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ck_a["ema"][k], ck_b["ema"][k]) for k in ck_a["ema"])
    assert all(v.dtype == torch.float32 for v in ck_a["ema"].values())  # the weights stay fp32


@pytest.mark.slow
def test_sigkill_loses_at_most_one_checkpoint_interval(tmp_path, small_npz):
    run = tmp_path / "run"
    cmd = CLI + ["train", "--data", str(small_npz), "--preset", "tiny", "--out", str(run), "--batch-size", "8",
                 "--checkpoint-every", "2s", "--max-steps", "1000000", "--log-every", "1", "--quiet",
                 "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (run / "metrics.jsonl").exists() and sum(
                    r.get("event") == "checkpoint" for r in read_log(run)) >= 2:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = read_log(run)
    last_step = max(r["step"] for r in log if "loss" in r)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["state"]
    last_ckpt = [r for r in log if r.get("event") == "checkpoint"][-1]
    assert saved["step"] == last_ckpt["step"]
    # Lost work: from the checkpoint to the kill, at most one interval (2 s) plus slack.
    last_time = max(r["time"] for r in log if "loss" in r)
    assert last_time - last_ckpt["time"] < 2.0 + 3.0
    assert not list(run.glob("*.tmp"))
    out = subprocess.run(CLI + ["train", "--out", str(run), "--resume", "--data", str(small_npz),
                                "--max-steps", str(saved["step"] + 5), "--quiet", "--threads", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    resumed = [r for r in read_log(run) if r.get("event") == "resume"][-1]
    assert resumed["step"] == saved["step"] and last_step >= saved["step"]


@pytest.mark.slow
def test_torchrun_two_processes_keep_identical_parameters(tmp_path, small_npz):
    run = tmp_path / "ddp"
    cmd = TORCHRUN_CLI + ["train", "--data", str(small_npz), "--preset", "tiny", "--out", str(run),
                          "--batch-size", "4", "--max-time", "4s", "--checkpoint-every", "1s",
                          "--log-every", "4", "--quiet", "--device", "cpu", "--lr-schedule", "cosine",
                          "--warmup-steps", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    log = read_log(run)
    sync = [r for r in log if r.get("event") == "ranks_in_sync"]
    assert sync and sync[0]["value"] is True and len(sync[0]["checksums"]) == 2
    # The cosine learning rate follows rank 0's clock on every rank, so the weights stay bit-identical.
    assert sync[0]["checksums"][0] == sync[0]["checksums"][1]
    assert [r for r in log if r.get("event") == "start"][0]["world_size"] == 2
    assert (run / "checkpoint.pt").exists()
    # Both ranks stopped on the wall-clock budget at the same step and checkpointed together
    # (a rank deciding alone would hang the other in a collective).
    end = [r for r in log if r.get("event") == "end"][0]
    assert end["stop_reason"] == "max_time"
    assert sum(r.get("event") == "checkpoint" for r in log) >= 2
    # The release records the process count: its batch size is per process.
    out = subprocess.run(CLI + ["convert", str(run / "checkpoint.pt"), str(tmp_path / "release")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    provenance = json.loads((tmp_path / "release" / "config.json").read_text())["provenance"]
    assert provenance["world_size"] == 2 and provenance["batch_size"] == 4


def run_diverging_training(launch: list[str], run: Path, data: Path, *options: str) -> subprocess.CompletedProcess:
    """A learning rate of 1e6 without clipping turns the loss into NaN within a few steps."""
    cmd = launch + ["train", "--data", str(data), "--preset", "tiny", "--out", str(run), "--batch-size", "4",
                    "--max-steps", "40", "--quiet", "--device", "cpu", "--threads", "1", "--lr", "1e6",
                    "--grad-clip", "1e9", "--warmup-steps", "0", *options]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
@pytest.mark.parametrize("launch", [CLI, TORCHRUN_CLI], ids=["one-process", "torchrun"])
def test_diverged_run_stops_with_a_message_and_no_checkpoint(tmp_path, small_npz, launch):
    run = tmp_path / "diverged"
    out = run_diverging_training(launch, run, small_npz, "--log-every", "2")
    assert out.returncode != 0
    assert "training diverged at step" in out.stderr, out.stderr[-3000:]
    # No rank crashes on its way out (the DDP teardown abort: "terminate called ...", exit code -6).
    assert "terminate called" not in out.stderr and "exitcode  : -6" not in out.stderr
    if launch is CLI:
        assert "Traceback" not in out.stderr
    assert not (run / "checkpoint.pt").exists()


@pytest.mark.slow
def test_divergence_between_loss_reads_keeps_the_last_finite_checkpoint(tmp_path, small_npz):
    # A checkpoint after every step, the loss read only at the end of the first epoch: the weights
    # go NaN before any loss is read, and no checkpoint may hold them.
    run = tmp_path / "diverged"
    # One process: under torchrun, checkpoints are decided every 10 steps and this small an epoch
    # ends (and reads the loss) first.
    out = run_diverging_training(CLI, run, small_npz, "--log-every", "1000", "--checkpoint-every", "0.001")
    assert out.returncode != 0
    assert "training diverged at step" in out.stderr and "weights are no longer finite" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["state"]["step"] > 0 and f"at step {ckpt['state']['step'] + 1} " in out.stderr
    assert "is kept" in out.stderr
    for weights in (ckpt["model"], ckpt["ema"]):
        assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "unknown preset"),
    (["--orientation-kernel", "sometimes"], "orientation_kernel must be one of"),
    (["--max-time", "soon"], "cannot read duration"),
    (["--set", "model.hiddn=3"], "unknown setting"),
    (["--data", "/nonexistent/file.xyz"], "nonexistent"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--lr-schedule", "linear"], "--lr-schedule must be constant or cosine"),
    (["--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr must lie between 0 and --lr"),
    (["--low-noise-fraction", "1.5"], "--low-noise-fraction must lie between 0 and 1"),
    (["--init-from", ""], "--init-from is empty"),  # "$RELEASE" unset: not a fresh model in silence
    (["--data", ""], "--data is empty"),
    (["--distill", " "], "--distill is empty"),
])
def test_bad_train_options_give_one_line_errors(tmp_path, args, message):
    out = subprocess.run(CLI + ["train", "--out", str(tmp_path / "r"), "--max-steps", "1", "--quiet"] + args,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_cosine_schedule_needs_a_budget(tmp_path):
    out = subprocess.run(CLI + ["train", "--out", str(tmp_path / "r"), "--lr-schedule", "cosine", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "needs a budget" in out.stderr and "Traceback" not in out.stderr


def test_learning_rate_warms_up_then_follows_the_cosine_over_the_budget():
    from symdiff_cli.engine.optim import budget_fraction, learning_rate

    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, lr_schedule="cosine", max_steps=1000, max_time=100.0)
    # the furthest budget counts: 100 of 1000 steps but 50 of 100 seconds is half way
    assert budget_fraction(100, 50.0, cfg, steps_per_epoch=10) == pytest.approx(0.5)
    assert budget_fraction(1000, 1.0, cfg, steps_per_epoch=10) == 1.0
    assert learning_rate(0, cfg, 0.0) == pytest.approx(1e-4)  # first warm-up step
    assert learning_rate(500, cfg, 0.0) == pytest.approx(1e-3)
    assert learning_rate(500, cfg, 0.5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(900, cfg, 1.0) == pytest.approx(1e-5)
    rates = [learning_rate(20, cfg, f / 10) for f in range(11)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    constant = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=1000)
    assert learning_rate(999, constant, 0.999) == 1e-3
    assert budget_fraction(5, 5.0, TrainConfig(), steps_per_epoch=10) is None


@pytest.mark.slow
def test_cosine_run_logs_the_decaying_rate(tmp_path, small_npz):
    cfg = tiny_config(tmp_path / "r", small_npz, lr=1e-3, min_lr=1e-4, lr_schedule="cosine", max_steps=20,
                      log_every=1)
    model_cfg = model_config_from_preset("tiny")
    train(cfg, model_cfg, console_print=lambda *_: None)
    rates = [r["lr"] for r in read_log(tmp_path / "r") if "lr" in r]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert all(a >= b for a, b in zip(rates, rates[1:]))


@pytest.mark.slow
def test_existing_run_needs_resume(tmp_path, small_npz):
    run = tmp_path / "r"
    base = CLI + ["train", "--out", str(run), "--data", str(small_npz), "--preset", "tiny", "--max-steps", "2",
                  "--quiet", "--threads", "1"]
    assert subprocess.run(base, capture_output=True, timeout=120).returncode == 0
    again = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "--resume" in again.stderr


@pytest.mark.slow
def test_resume_with_budget_spent_makes_no_step_and_logs_strict_json(tmp_path, small_npz):
    run = tmp_path / "r"
    base = CLI + ["train", "--out", str(run), "--data", str(small_npz), "--preset", "tiny", "--max-steps", "2",
                  "--quiet", "--threads", "1"]
    assert subprocess.run(base, capture_output=True, timeout=120).returncode == 0
    again = subprocess.run(base + ["--resume"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr

    def no_nan(name: str):
        raise AssertionError(f"metrics.jsonl holds {name}, which is not JSON")

    lines = [json.loads(line, parse_constant=no_nan) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ends = [r for r in lines if r.get("event") == "end"]
    assert [e["step"] for e in ends] == [2, 2] and ends[-1]["loss"] is None


def trained_looking_release(path: Path):
    """A tiny release whose every tensor, gates included, is non-zero: at initialisation the
    adaLN-Zero gates are zero and every block is the identity, which would hide a wrong load."""
    from symdiff_cli.engine.release import save_release
    from symdiff_cli.model.dit import SymmetrisedDenoiser

    cfg = model_config_from_preset("tiny")
    torch.manual_seed(0)
    model = SymmetrisedDenoiser(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_release(path, cfg, model.state_dict(), {5: 1, 9: 2}, "qm9", {"step": 0})
    return cfg, model


def test_init_from_grows_a_release_into_a_deeper_model_that_starts_as_the_same_function(tmp_path):
    import dataclasses

    from symdiff_cli.engine.release import load_release_state_dict
    from symdiff_cli.engine.growth import load_release_weights, model_config_from_release
    from symdiff_cli.model.dit import SymmetrisedDenoiser

    cfg, release_model = trained_looking_release(tmp_path / "rel")
    release_cfg, state = load_release_state_dict(str(tmp_path / "rel"))
    grown_cfg = model_config_from_release(release_cfg, dataclasses.replace(cfg, depth=5, orientation_depth=2))
    assert (grown_cfg.depth, grown_cfg.orientation_depth, grown_cfg.hidden) == (5, 2, cfg.hidden)
    torch.manual_seed(1)
    grown = SymmetrisedDenoiser(grown_cfg)
    new_keys = load_release_weights(grown, state)
    assert new_keys and all(".blocks.3." in k or ".blocks.4." in k or "orientation.transformer.blocks.1." in k
                            for k in new_keys)

    x = torch.randn(3, 7, 3)
    x = x - x.mean(1, keepdim=True)
    h, t = torch.randn(3, 7, cfg.feature_dim), torch.tensor([0, 400, 1000])
    haar, noise = torch.linalg.qr(torch.randn(3, 3, 3))[0], torch.randn(3, 7, cfg.orientation_noise_channels)
    with torch.no_grad():
        want = release_model(x, h, t, None, haar=haar, orientation_noise=noise)
        got = grown(x, h, t, None, haar=haar, orientation_noise=noise)
    assert torch.allclose(want[0], got[0], atol=1e-6) and torch.allclose(want[1], got[1], atol=1e-6)
    # another preset is not a growth of these weights: the release's own configuration is kept
    assert model_config_from_preset("small").depth != 5
    assert model_config_from_release(release_cfg, model_config_from_preset("small")) == release_cfg
    # a depth the user did not set is the release's, whichever way the preset's default differs
    for depth in (1, 5):
        requested = dataclasses.replace(cfg, depth=depth)
        assert model_config_from_release(release_cfg, requested, explicit=set()) == release_cfg
        assert model_config_from_release(release_cfg, requested, explicit={"hidden"}) == release_cfg
    assert model_config_from_release(release_cfg, dataclasses.replace(cfg, depth=5), explicit={"depth"}).depth == 5


@pytest.mark.slow
def test_train_cli_grows_a_release_and_refuses_to_shrink_it(tmp_path, small_npz):
    trained_looking_release(tmp_path / "rel")

    def train_from(release: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(CLI + ["train", "--data", str(small_npz), "--preset", "tiny", "--init-from", str(release),
                                     "--max-steps", "2", "--batch-size", "8", "--quiet", "--threads", "1",
                                     "--out", str(out), *extra], capture_output=True, text=True, timeout=120)

    grown = train_from(tmp_path / "rel", tmp_path / "deep", "--set", "model.depth=4")
    assert grown.returncode == 0, grown.stderr
    run_config = json.loads((tmp_path / "deep" / "config.json").read_text())
    assert run_config["model"]["depth"] == 4 and run_config["train"]["init_from"] == str(tmp_path / "rel")
    ckpt = torch.load(tmp_path / "deep" / "checkpoint.pt", weights_only=False)
    assert "backbone.transformer.blocks.3.attn.qkv.weight" in ckpt["ema"]

    # the grown model, released, continues as it is: the preset's shallower default is not a request
    exported = subprocess.run(CLI + ["convert", str(tmp_path / "deep" / "checkpoint.pt"), str(tmp_path / "deep-rel")],
                              capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    again = train_from(tmp_path / "deep-rel", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model"]["depth"] == 4

    shrunk = train_from(tmp_path / "rel", tmp_path / "shallow", "--set", "model.depth=2")
    assert shrunk.returncode != 0
    assert "can add blocks, not remove them" in shrunk.stderr and "Traceback" not in shrunk.stderr
    assert not (tmp_path / "shallow" / "checkpoint.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("guided", [False, True, "override"])
def test_gpu_train_script_smoke_run_on_cpu(tmp_path, small_npz, guided):
    """scripts/gpu_train.sh continues a release for a time budget and exports a loadable model,
    guided as the release it started from was (by its own guide networks, or GUIDE_MODEL's)."""
    from symdiff_cli.engine.release import load_release, load_release_state_dict, save_release
    from symdiff_cli.engine.release_config import Guide, GuideNetwork
    from symdiff_cli.model.dit import SymmetrisedDenoiser

    cfg = model_config_from_preset("tiny")
    init = tmp_path / "init"
    guide, other = SymmetrisedDenoiser(cfg), SymmetrisedDenoiser(cfg)
    save_release(tmp_path / "guide", cfg, guide.state_dict(), {5: 1, 9: 2}, "qm9", {"step": 1})
    two = Guide([GuideNetwork(cfg, guide.state_dict()), GuideNetwork(cfg, other.state_dict())], 2.5)
    save_release(init, cfg, SymmetrisedDenoiser(cfg).state_dict(), {5: 1, 9: 2}, "qm9", {"step": 0},
                 guide=two if guided else None)
    out = tmp_path / "out"
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train.sh"
    env = dict(os.environ, PYTHON=sys.executable, INIT_MODEL=str(init), TRAIN_DATA=str(small_npz), BATCH_SIZE="8")
    if guided == "override":
        env["GUIDE_MODEL"] = str(tmp_path / "guide")
    res = subprocess.run(["bash", str(script), "4s", str(out), "--threads", "1"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "end" and log[-1]["stop_reason"] == "max_time" and log[-1]["step"] > 0
    released = load_release(str(out / "model"))
    assert released.cfg.to_dict() == cfg.to_dict()
    _, before = load_release_state_dict(str(init))
    changed = any(not torch.equal(before[k], v) for k, v in released.model.state_dict().items())
    assert changed, "the exported weights are the initial ones: nothing was trained"
    assert (released.guide is not None) == bool(guided) and released.guidance_weight == (2.5 if guided else 1.0)
    if guided == "override":  # GUIDE_MODEL's one network
        assert all(torch.equal(guide.state_dict()[k], v) for k, v in released.guide.state_dict().items())
    elif guided:  # the initial release's two networks
        for member, net in zip(released.guide.members, (guide, other), strict=True):
            assert all(torch.equal(net.state_dict()[k], v) for k, v in member.state_dict().items())


@pytest.mark.slow
def test_gpu_train_script_reports_a_failed_start_and_exports_nothing(tmp_path, small_npz):
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train.sh"
    env = dict(os.environ, PYTHON=sys.executable, TRAIN_DATA=str(small_npz), BATCH_SIZE="8")
    res = subprocess.run(["bash", str(script), "4s", str(tmp_path / "out"), "--lr-schedule", "sometimes"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0
    assert "--lr-schedule must be constant or cosine" in res.stdout
    assert "training failed before its first checkpoint" in res.stdout
    assert not (tmp_path / "out" / "model").exists()


@pytest.mark.slow
def test_geom_configuration_trains_on_processed_geom_file(tmp_path):
    """GEOM-Drugs layout: (atoms x 5) rows of conformer id, Z, x, y, z, with GEOM-only elements."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for conf, elements in enumerate([[6, 16, 17, 1, 1], [6, 6, 35, 8, 1, 1, 1], [7, 15, 9, 53, 1, 1]]):
        for z in elements:
            rows.append([conf, z, *rng.normal(size=3)])
    path = tmp_path / "geom_conformers.npy"
    np.save(path, np.array(rows))
    run = tmp_path / "geom"
    out = subprocess.run(CLI + ["train", "--dataset", "geom", "--data-format", "geom", "--data", str(path),
                                "--preset", "tiny", "--out", str(run), "--batch-size", "2", "--max-steps", "3",
                                "--quiet", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["model_config"]["atom_types"][:3] == ["H", "B", "C"] and len(ckpt["model_config"]["atom_types"]) == 16
    assert ckpt["model_config"]["max_atoms"] == 181
    assert ckpt["atom_count_histogram"] == {5: 1, 6: 1, 7: 1}
    assert ckpt["state"]["step"] == 3


def test_resume_keeps_the_runs_data_and_optimiser_settings_unless_given_again(tmp_path, small_npz, capsys,
                                                                               monkeypatch):
    # `symdiff train --out RUN --resume --max-steps N` continues the run as it was: on its own data
    # (not the QM9 split, the default), with its learning rate, batch size and seed.
    from cli_helpers import run_cli

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--data", str(small_npz), "--out", str(run),
                           "--max-steps", "4", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "0",
                           "--seed", "3", "--log-every", "1", "--quiet", "--threads", "1")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--max-steps", "8", "--quiet",
                           "--threads", "1", "--log-every", "1")
    assert code == 0, err
    settings = json.loads((run / "config.json").read_text())["train"]
    assert settings["data"] == [str(small_npz)] and settings["dataset"] == "qm9"
    assert (settings["lr"], settings["batch_size"], settings["warmup_steps"], settings["seed"]) == (1e-3, 8, 0, 3)
    assert settings["max_steps"] == 8  # budgets are the command line's
    log = read_log(run)
    resumed = [r for r in log if r.get("event") == "resume"]
    assert resumed and resumed[-1]["molecules"] == 32 and "user path" in resumed[-1]["data"]
    assert [r["lr"] for r in log if "loss" in r and "event" not in r and r["step"] > 4] == [1e-3] * 4
    # Given again, an option wins, from the command line or from --set.
    code, _, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--max-steps", "10", "--lr", "5e-4",
                           "--set", "train.batch_size=4", "--quiet", "--threads", "1")
    assert code == 0, err
    settings = json.loads((run / "config.json").read_text())["train"]
    assert (settings["lr"], settings["batch_size"], settings["data"]) == (5e-4, 4, [str(small_npz)])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["step"] == 10
