"""Self-conditioning (model.self_condition): the same function at zero weights, equivariance with
the clean estimate as an input, the two-pass training loss, sampling that feeds estimates back,
guidance wrappers, --init-from, resume and releases."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from symdiff_cli.engine.sampling import Sampler, plan_batches
from symdiff_cli.model.config import ModelConfig, model_config_from_preset
from symdiff_cli.model.diffusion import Batch, NoiseSchedule, SelfConditioning, VPDiffusion
from symdiff_cli.model.dit import SELF_COND_PREFIX, SymmetrisedDenoiser, uses_self_condition
from symdiff_cli.model.geometry import remove_mean, rotate
from symdiff_cli.model.guidance import AutoGuidedDenoiser

from test_model import fixed_draws, random_inputs, reflection_and_rotation

CLI = [sys.executable, "-m", "symdiff_cli"]


def sc_model(kernel: str = "learned", seed: int = 0, dtype=torch.float64, self_condition: bool = True):
    """A tiny model with every tensor perturbed (the self-conditioning embedding included)."""
    torch.manual_seed(seed)
    cfg = model_config_from_preset("tiny", orientation_kernel=kernel, self_condition=self_condition)
    model = SymmetrisedDenoiser(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def estimate_like(x: torch.Tensor, h: torch.Tensor, seed: int = 9):
    g = torch.Generator().manual_seed(seed)
    return (remove_mean(torch.randn(x.shape, generator=g, dtype=x.dtype)),
            torch.randn(h.shape, generator=g, dtype=h.dtype))


def test_default_adds_nothing_and_old_configs_load_without_the_key():
    cfg = model_config_from_preset("tiny")
    assert cfg.self_condition is False
    # described as before the setting existed (older symdiff reads the release), and read back
    old = cfg.to_dict()
    assert "self_condition" not in old and ModelConfig.from_dict(old) == cfg
    on = dataclasses.replace(cfg, self_condition=True)
    assert on.to_dict()["self_condition"] is True and ModelConfig.from_dict(on.to_dict()) == on
    plain = SymmetrisedDenoiser(cfg).state_dict()
    assert not any(k.startswith(SELF_COND_PREFIX) for k in plain)
    with_sc = SymmetrisedDenoiser(dataclasses.replace(cfg, self_condition=True)).state_dict()
    extra = set(with_sc) - set(plain)
    assert extra == {SELF_COND_PREFIX + "weight"} and set(plain) <= set(with_sc)
    assert torch.count_nonzero(with_sc[SELF_COND_PREFIX + "weight"]) == 0


def test_a_release_loaded_into_a_self_conditioned_model_computes_the_same_function():
    from symdiff_cli.engine.growth import load_release_weights

    release = sc_model(self_condition=False)
    model = SymmetrisedDenoiser(dataclasses.replace(release.cfg, self_condition=True)).double().eval()
    new_keys = load_release_weights(model, release.state_dict())
    assert new_keys == [SELF_COND_PREFIX + "weight"]
    assert torch.count_nonzero(model.backbone.self_cond_embed.weight) == 0
    x, h, t = random_inputs()
    g, noise = fixed_draws(*x.shape[:2])
    want = release(x, h, t, None, haar=g, orientation_noise=noise)
    for estimate in (None, estimate_like(x, h)):
        got = model(x, h, t, None, haar=g, orientation_noise=noise, self_cond=estimate)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


@pytest.mark.parametrize("kernel", ["learned", "haar"])
def test_coupled_draws_rotate_the_output_exactly_with_the_estimate_rotated_too(kernel):
    model = sc_model(kernel)
    x, h, t = random_inputs()
    b, n = x.shape[:2]
    g, noise = fixed_draws(b, n)
    q = reflection_and_rotation(b)
    x0, h0 = estimate_like(x, h)
    eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise, self_cond=(x0, h0))
    eps_x_q, eps_h_q = model(rotate(x, q), h, t, None, haar=q @ g, orientation_noise=noise,
                             self_cond=(rotate(x0, q), h0))
    assert torch.allclose(rotate(eps_x, q), eps_x_q, atol=1e-5)
    assert torch.allclose(eps_h, eps_h_q, atol=1e-5)
    # the estimate is read: another one changes the output; an unrotated one breaks equivariance
    other_x, _ = model(x, h, t, None, haar=g, orientation_noise=noise, self_cond=estimate_like(x, h, seed=10))
    assert not torch.allclose(other_x, eps_x, atol=1e-4)
    wrong_x, _ = model(rotate(x, q), h, t, None, haar=q @ g, orientation_noise=noise, self_cond=(x0, h0))
    assert not torch.allclose(rotate(eps_x, q), wrong_x, atol=1e-4)
    # and the estimate's centre of mass is not: it is made CoM-free like x
    shifted_x, _ = model(x, h, t, None, haar=g, orientation_noise=noise, self_cond=(x0 + 3.0, h0))
    assert torch.allclose(shifted_x, eps_x, atol=1e-10)


@pytest.mark.parametrize("kernel", ["learned", "haar", "none"])
def test_permuting_atoms_with_their_estimates_permutes_outputs(kernel):
    model = sc_model(kernel)
    x, h, t = random_inputs()
    b, n = x.shape[:2]
    g, noise = fixed_draws(b, n)
    x0, h0 = estimate_like(x, h)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise, self_cond=(x0, h0))
    eps_x_p, eps_h_p = model(x[:, perm], h[:, perm], t, None, haar=g, orientation_noise=noise[:, perm],
                             self_cond=(x0[:, perm], h0[:, perm]))
    assert torch.allclose(eps_x[:, perm], eps_x_p, atol=1e-8)
    assert torch.allclose(eps_h[:, perm], eps_h_p, atol=1e-8)


@pytest.mark.parametrize("kernel", ["learned", "haar", "none"])
def test_padded_estimates_do_not_reach_real_atoms_and_outputs_are_com_free(kernel):
    model = sc_model(kernel)
    x, h, t = random_inputs(b=2, n=7)
    b, n = x.shape[:2]
    g, noise = fixed_draws(b, n)
    x0, h0 = estimate_like(x, h)
    eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise, self_cond=(x0, h0))
    pad = 4

    def padded(v):
        return torch.cat([v, 100 * torch.randn(b, pad, v.shape[-1], dtype=v.dtype)], 1)

    mask = torch.zeros(b, n + pad, dtype=torch.bool)
    mask[:, :n] = True
    eps_xp, eps_hp = model(padded(x), padded(h), t, mask, haar=g, orientation_noise=padded(noise),
                           self_cond=(padded(x0), padded(h0)))
    assert torch.allclose(eps_xp[:, :n], eps_x, atol=1e-8)
    assert torch.allclose(eps_hp[:, :n], eps_h, atol=1e-8)
    assert torch.all(eps_xp[:, n:] == 0) and torch.all(eps_hp[:, n:] == 0)
    assert eps_x.sum(dim=1).abs().max() < 1e-10 and eps_xp.sum(dim=1).abs().max() < 1e-10


class Recording(torch.nn.Module):
    """Wraps a denoiser and records each call's self_cond and whether gradients were on."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls: list[tuple] = []

    def forward(self, x, h, t, mask=None, **kwargs):
        self.calls.append((kwargs.get("self_cond"), torch.is_grad_enabled(), x, h, t))
        out = self.inner(x, h, t, mask, **kwargs)
        self.calls[-1] += out
        return out


def test_training_loss_self_conditions_half_the_batches_from_a_no_grad_first_pass():
    model = sc_model(dtype=torch.float32).train()
    d = VPDiffusion(NoiseSchedule(1000))
    x, h, _ = random_inputs(b=6, n=5, dtype=torch.float32)
    batch = Batch(x, h, None)
    two_pass = 0
    for seed in range(16):
        rec = Recording(model)
        loss = d.loss(rec, batch, generator=torch.Generator().manual_seed(seed), self_condition=True)
        if len(rec.calls) == 2:
            two_pass += 1
            (none, grad_first, x_t, h_t, t, ex, eh), (estimate, grad_second, *_) = rec.calls
            assert none is None and not grad_first and grad_second
            want = d.clean_estimate(x_t, h_t, t, ex, eh, None)
            assert torch.equal(estimate[0], want[0]) and torch.equal(estimate[1], want[1])
            assert not estimate[0].requires_grad
            # (z_t - sigma eps) / alpha, and CoM-free
            gamma = d.schedule.gamma(t).view(-1, 1, 1)
            alpha, sigma = d.schedule.alpha(gamma), d.schedule.sigma(gamma)
            assert torch.allclose(estimate[1], (h_t - sigma * eh) / alpha)
            assert estimate[0].mean(1).abs().max() < 1e-3 * estimate[0].abs().max()
            model.zero_grad()
            loss.backward()
            assert model.backbone.self_cond_embed.weight.grad.abs().max() > 0
        else:
            assert len(rec.calls) == 1 and rec.calls[0][0] is None
        # the same generator seed gives the same loss
        again = d.loss(model, batch, generator=torch.Generator().manual_seed(seed), self_condition=True)
        assert torch.equal(loss.detach(), again.detach())
    assert 3 <= two_pass <= 13
    # without the option, exactly one pass that is not given an estimate
    rec = Recording(model)
    d.loss(rec, batch, generator=torch.Generator().manual_seed(0))
    assert len(rec.calls) == 1 and rec.calls[0][0] is None


def test_a_ddp_wrappers_first_pass_runs_on_its_module():
    class Wrapper(torch.nn.Module):  # stands for DistributedDataParallel: .module is the network
        def __init__(self, module):
            super().__init__()
            self.module = Recording(module)
            self.calls = 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    d = VPDiffusion(NoiseSchedule(1000))
    x, h, _ = random_inputs(b=3, n=4, dtype=torch.float32)
    for seed in range(8):
        wrapped = Wrapper(sc_model(dtype=torch.float32))
        d.loss(wrapped, Batch(x, h, None), generator=torch.Generator().manual_seed(seed), self_condition=True)
        assert wrapped.calls == 1 and len(wrapped.module.calls) in (1, 2)


def reference_chain(denoiser, d: VPDiffusion, b: int, n: int, f: int, steps: int, gen: torch.Generator):
    """The reverse chain as VPDiffusion.sample ran it before self-conditioning, step by step."""
    from symdiff_cli.model.geometry import sample_com_free_noise

    x = sample_com_free_noise((b, n, 3), None, gen, "cpu")
    h = torch.randn(b, n, f, generator=gen)
    ts = d.sampling_timesteps(steps)
    for t, s in zip(ts[:-1], ts[1:]):
        x, h = d.ancestral_step(denoiser, x, h, t, s, None, gen)
    return d.final_estimate(denoiser, x, h, None, gen)


def test_sampling_without_self_conditioning_is_the_chain_it_was():
    model = sc_model(dtype=torch.float32, self_condition=False)
    assert not uses_self_condition(model)
    d = VPDiffusion(NoiseSchedule(1000))
    with torch.no_grad():
        want = reference_chain(model, d, 3, 6, 6, 8, torch.Generator().manual_seed(2))
    got = d.sample(model, 3, 6, 6, steps=8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    rec = Recording(model)
    d.sample(rec, 2, 5, 6, steps=3, generator=torch.Generator().manual_seed(0))
    assert all(c[0] is None for c in rec.calls)


def test_self_conditioned_sampling_feeds_each_steps_estimate_to_the_next():
    model = sc_model(dtype=torch.float32)
    d = VPDiffusion(NoiseSchedule(1000))
    rec = Recording(model)
    x, h = d.sample(rec, 2, 5, 6, steps=4, generator=torch.Generator().manual_seed(0), self_condition=True)
    assert len(rec.calls) == 5 and rec.calls[0][0] is None
    for previous, current in zip(rec.calls, rec.calls[1:]):
        _, _, x_t, h_t, t, ex, eh = previous
        want = d.clean_estimate(x_t, h_t, t, ex, eh, None)
        assert torch.equal(current[0][0], want[0]) and torch.equal(current[0][1], want[1])
    assert torch.isfinite(x).all() and x.sum(1).abs().max() < 1e-4
    # the estimates matter: feeding none gives other molecules
    plain = d.sample(model, 2, 5, 6, steps=4, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(plain[0], x, atol=1e-4)


def test_sampler_with_zero_self_conditioning_weights_draws_the_plain_models_molecules():
    from symdiff_cli.engine.growth import load_release_weights

    plain = sc_model(dtype=torch.float32, self_condition=False)
    zero = SymmetrisedDenoiser(dataclasses.replace(plain.cfg, self_condition=True))
    load_release_weights(zero, plain.state_dict())
    plan = plan_batches([5, 5, 7], batch_size=2, seed=3)

    def draw(model, cfg):
        sampler = Sampler(model, cfg)
        return np.concatenate([m.positions for batch in sampler.sample(plan, steps=5) for m in batch])

    assert Sampler(zero, zero.cfg).self_condition and not Sampler(plain, plain.cfg).self_condition
    assert np.array_equal(draw(plain, plain.cfg), draw(zero, zero.cfg))


def test_self_conditioned_main_model_with_a_plain_guide_and_valence_guidance():
    from symdiff_cli.chem.bonds import bond_thresholds_angstrom
    from symdiff_cli.model.valence import ValenceGuidedDenoiser

    main = sc_model(dtype=torch.float32)
    guide = Recording(sc_model(seed=5, dtype=torch.float32, self_condition=False))
    guided = AutoGuidedDenoiser(main, guide, 2.0)
    thresholds, valences = bond_thresholds_angstrom(main.cfg.atom_types)
    valence = ValenceGuidedDenoiser(guided, NoiseSchedule(1000), thresholds, valences, 4.0, scale=1e-3, max_t=500)
    assert uses_self_condition(valence)
    plan = plan_batches([5, 6], batch_size=2, seed=1)
    mols = [m for batch in Sampler(valence, main.cfg).sample(plan, steps=4) for m in batch]
    assert len(mols) == 2 and all(np.isfinite(m.positions).all() for m in mols)
    # the guide was handed the estimates too, and ignored them: its output is its plain output
    estimate, _, x_t, h_t, t, _, _ = guide.calls[-1]
    assert estimate is not None
    with torch.no_grad():  # frames coupled through the generator's seed
        a = guide.inner(x_t, h_t, t, None, generator=torch.Generator().manual_seed(4))
        b = guide.inner(x_t, h_t, t, None, generator=torch.Generator().manual_seed(4), self_cond=estimate)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_release_round_trip_samples_identically(tmp_path):
    from symdiff_cli.engine.release import load_release, save_release

    model = sc_model(dtype=torch.float32)
    save_release(tmp_path / "rel", model.cfg, model.state_dict(), {5: 1, 6: 2}, "qm9", {"step": 0})
    assert json.loads((tmp_path / "rel" / "config.json").read_text())["model_config"]["self_condition"] is True
    loaded = load_release(str(tmp_path / "rel"), show_progress=False)
    assert loaded.cfg.self_condition and uses_self_condition(loaded.model)
    plan = plan_batches([5, 6, 6], batch_size=2, seed=4)

    def draw(m):
        return np.concatenate([mol.positions for batch in Sampler(m, model.cfg).sample(plan, steps=4) for mol in batch])

    assert np.array_equal(draw(model), draw(loaded.model))
    # a release without it says nothing of it, as before the setting existed
    plain = sc_model(dtype=torch.float32, self_condition=False)
    save_release(tmp_path / "plain", plain.cfg, plain.state_dict(), {5: 1}, "qm9", {"step": 0})
    assert "self_condition" not in json.loads((tmp_path / "plain" / "config.json").read_text())["model_config"]


def test_init_from_adds_self_conditioning_but_does_not_remove_it():
    from symdiff_cli.engine.growth import model_config_from_release
    from symdiff_cli.errors import SymdiffError

    release = model_config_from_preset("tiny")
    wanted = dataclasses.replace(model_config_from_preset("small"), self_condition=True)
    assert model_config_from_release(release, wanted, {"self_condition"}) == \
        dataclasses.replace(release, self_condition=True)
    assert model_config_from_release(release, wanted, set()) == release  # not asked for: the release's
    # library callers: a request that differs only in the flag (and depths) asks for it
    grown = model_config_from_release(release, dataclasses.replace(release, self_condition=True, depth=4))
    assert grown.self_condition and grown.depth == 4
    sc_release = dataclasses.replace(release, self_condition=True)
    assert model_config_from_release(sc_release, model_config_from_preset("small"), set()).self_condition
    with pytest.raises(SymdiffError, match="not remove it"):
        model_config_from_release(sc_release, release, {"self_condition"})


def tiny_train_config(out: Path, data: Path, **kw):
    from symdiff_cli.engine.train_config import TrainConfig

    base = dict(out=str(out), data=[str(data)], batch_size=16, lr=3e-3, warmup_steps=0, log_every=2,
                ema_decay=0.9, seed=0, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_resumed_self_conditioned_run_matches_uninterrupted_run(tmp_path, small_npz):
    from symdiff_cli.engine.metrics_log import read_metrics
    from symdiff_cli.engine.train import train

    model_cfg = model_config_from_preset("tiny", self_condition=True)
    quiet = dict(console_print=lambda s: None)
    train(tiny_train_config(tmp_path / "a", small_npz, max_steps=8), model_cfg, **quiet)
    train(tiny_train_config(tmp_path / "b", small_npz, max_steps=4), model_cfg, **quiet)
    train(tiny_train_config(tmp_path / "b", small_npz, max_steps=8), None, **quiet)

    def losses(run):
        return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r and "event" not in r}

    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [a[s] for s in (6, 8)] == [b[s] for s in (6, 8)]
    ck_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    ck_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ck_a["model_config"]["self_condition"] is True
    for k in ck_a["ema"]:
        assert torch.equal(ck_a["ema"][k], ck_b["ema"][k]), k
    # the self-conditioning weights learned something
    assert torch.count_nonzero(ck_a["model"][SELF_COND_PREFIX + "weight"]) > 0


@pytest.mark.slow
def test_train_cli_self_condition_from_a_release_then_convert_and_sample(tmp_path, small_npz):
    from symdiff_cli.engine.release import load_release

    plain = sc_model(dtype=torch.float32, self_condition=False)
    from symdiff_cli.engine.release import save_release

    save_release(tmp_path / "rel", plain.cfg, plain.state_dict(), {5: 1, 9: 2}, "qm9", {"step": 0})
    common = ["train", "--data", str(small_npz), "--preset", "tiny", "--max-steps", "2", "--batch-size", "8",
              "--quiet", "--threads", "1"]
    run = subprocess.run(CLI + common + ["--init-from", str(tmp_path / "rel"), "--self-condition",
                                         "--out", str(tmp_path / "ft")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["model"]["self_condition"] is True
    via_set = subprocess.run(CLI + common + ["--set", "model.self_condition=true", "--out", str(tmp_path / "set")],
                             capture_output=True, text=True, timeout=120)
    assert via_set.returncode == 0, via_set.stderr
    assert json.loads((tmp_path / "set" / "config.json").read_text())["model"]["self_condition"] is True

    exported = subprocess.run(CLI + ["convert", str(tmp_path / "ft" / "checkpoint.pt"), str(tmp_path / "ft-rel")],
                              capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    loaded = load_release(str(tmp_path / "ft-rel"), show_progress=False)
    assert loaded.cfg.self_condition
    ema = SymmetrisedDenoiser(loaded.cfg)
    ema.load_state_dict(torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)["ema"])
    plan = plan_batches([5, 6], batch_size=2, seed=0)

    def draw(m):
        return np.concatenate([mol.positions for batch in Sampler(m, loaded.cfg).sample(plan, steps=3) for mol in batch])

    assert np.array_equal(draw(ema), draw(loaded.model))
    generated = subprocess.run(CLI + ["generate", "--model", str(tmp_path / "ft-rel"), "-n", "2", "--steps", "3",
                                      "-o", str(tmp_path / "out.xyz"), "--quiet"],
                               capture_output=True, text=True, timeout=120)
    assert generated.returncode == 0, generated.stderr


@pytest.mark.slow
def test_torchrun_self_conditioned_ranks_with_different_coins_stay_in_step(tmp_path, small_npz):
    """Each rank draws its own coins (seed + rank), so some steps run the no-grad first pass on one
    rank only: it must not enter a collective, or the ranks would hang or drift apart."""
    import os

    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "symdiff_cli", "train", "--data", str(small_npz), "--preset", "tiny", "--self-condition",
           "--out", str(run), "--batch-size", "4", "--max-steps", "12", "--log-every", "4", "--quiet",
           "--device", "cpu", "--warmup-steps", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    from symdiff_cli.engine.metrics_log import read_metrics

    sync = [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "ranks_in_sync"]
    assert sync and sync[0]["value"] is True and sync[0]["checksums"][0] == sync[0]["checksums"][1]
