"""Restart sampling of radicals: the check, the chain, the release setting and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import symdiff_cli.model.diffusion as diffusion_module
from cli_helpers import generated_molecules, run_cli  # tests/, beside this file
from symdiff_cli.engine.release import load_release, save_release
from symdiff_cli.engine.restart import RestartSettings, odd_electron_check
from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.diffusion import NoiseSchedule, RestartRule, VPDiffusion
from symdiff_cli.model.dit import SymmetrisedDenoiser
from symdiff_cli.model.geometry import rotate, sample_haar_orthogonal

TYPES = ["H", "C", "N", "O", "F"]


def one_hot(symbols: list[str], pad_to: int) -> torch.Tensor:
    h = torch.zeros(pad_to, len(TYPES))
    for i, symbol in enumerate(symbols):
        h[i, TYPES.index(symbol)] = 0.25
    return h


def test_the_check_flags_odd_electron_counts_and_ignores_padding_and_positions():
    reject = odd_electron_check(TYPES)
    # CH4 (10 electrons), CH3 (9), NH3 (10), NO (15), HF (10); padded to 5 atoms.
    molecules = [["C", "H", "H", "H", "H"], ["C", "H", "H", "H"], ["N", "H", "H", "H"], ["N", "O"], ["H", "F"]]
    h0 = torch.stack([one_hot(m, 5) for m in molecules])
    mask = torch.tensor([[1.0] * len(m) + [0.0] * (5 - len(m)) for m in molecules])
    h0[1:, -1, TYPES.index("N")] = 0.25 * (mask[1:, -1] == 0)  # padding that would read as N (7 electrons)
    x0 = torch.randn(5, 5, 3)
    flagged = reject(x0, h0, mask)
    assert flagged.tolist() == [False, True, False, True, False]
    q = sample_haar_orthogonal(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(reject(rotate(x0, q) + 3.0, h0, mask), flagged)


class ToyDenoiser:
    """eps_x equivariant, eps_h invariant (read from h and interatomic distances); records calls."""

    def __init__(self):
        self.batch_sizes: list[int] = []
        self.conditions: list[torch.Tensor] = []

    def __call__(self, x, h, t, mask=None, generator=None, condition=None, **kwargs):
        self.batch_sizes.append(x.shape[0])
        if condition is not None:
            self.conditions.append(condition)
        scale = 1.0 + 0.1 * torch.tanh(h.sum(-1, keepdim=True))
        dist = torch.cdist(x, x).mean(-1, keepdim=True)
        eps_x = 0.3 * x * scale
        eps_h = 0.5 * torch.tanh(h) + 0.05 * dist
        if mask is not None:
            eps_x, eps_h = eps_x * mask.unsqueeze(-1), eps_h * mask.unsqueeze(-1)
        return eps_x - eps_x.mean(1, keepdim=True) if mask is None else eps_x, eps_h


def sample(restart, steps=20, seed=0, batch=6, atoms=5, mask=None, row_kwargs=None, denoiser=None):
    diffusion = VPDiffusion(NoiseSchedule(1000))
    return diffusion.sample(denoiser or ToyDenoiser(), batch, atoms, len(TYPES), steps,
                            generator=torch.Generator().manual_seed(seed), mask=mask, restart=restart,
                            row_kwargs=row_kwargs)


def test_a_check_that_rejects_nothing_leaves_the_chain_exactly_as_without_it():
    never = RestartRule(lambda x0, h0, mask: torch.zeros(x0.shape[0], dtype=torch.bool), 3, 50, 400)
    x_plain, h_plain = sample(None)
    x_never, h_never = sample(never)
    assert torch.equal(x_plain, x_never) and torch.equal(h_plain, h_never)
    off = RestartRule(lambda x0, h0, mask: torch.ones(x0.shape[0], dtype=torch.bool), 0, 50, 400)
    assert torch.equal(sample(off)[0], x_plain)


def test_rejected_molecules_run_again_from_the_restart_point_at_most_rounds_times():
    diffusion = VPDiffusion(NoiseSchedule(1000))
    ts = diffusion.sampling_timesteps(20)
    here = next(i for i, s in enumerate(ts) if s <= 50)
    top = min(range(here + 1), key=lambda i: abs(ts[i] - 400))
    # The whole batch: its odd rows; a restarted sub-batch: every row again, so each round runs.
    odd_rows = RestartRule(lambda x0, h0, mask: (torch.arange(x0.shape[0]) % 2 == 1) | (x0.shape[0] == 3), 2, 50, 400)
    toy = ToyDenoiser()
    x, h = sample(odd_rows, denoiser=toy)
    rerun = toy.batch_sizes[here:here + 2 * (here - top)]
    assert rerun == [3] * (2 * (here - top))  # the three odd rows, two rounds of the steps top..here
    assert toy.batch_sizes.count(6) == 21  # 20 steps and the final estimate for the whole batch
    assert x.mean(dim=1).abs().max() < 1e-5
    assert not torch.equal(x, sample(None)[0])


def test_restarted_rows_keep_their_own_condition_and_padding_stays_empty():
    mask = torch.ones(4, 5)
    mask[:, 4] = 0
    mask[3, 3] = 0
    condition = torch.arange(4, dtype=torch.float32).view(4, 1)
    rule = RestartRule(lambda x0, h0, m: torch.tensor([False, True, False, True])[: x0.shape[0]], 1, 50, 400)
    toy = ToyDenoiser()
    x, h = sample(rule, batch=4, mask=mask, row_kwargs={"condition": condition}, denoiser=toy)
    sub = [c for c in toy.conditions if c.shape[0] == 2]
    assert sub and all(torch.equal(c, condition[[1, 3]]) for c in sub)
    assert torch.equal(h * (1 - mask).unsqueeze(-1), torch.zeros_like(h))


def test_the_restarted_chain_stays_equivariant(monkeypatch):
    """Every position noise rotated by one rotation R (the same law) rotates the samples by R and
    leaves the types unchanged, restarts included: the check reads invariant types only."""
    check = odd_electron_check(TYPES)
    rule = RestartRule(check, 2, 50, 400)
    x, h = sample(rule, steps=20, seed=3)
    q = sample_haar_orthogonal(1, generator=torch.Generator().manual_seed(9))[0]
    plain_noise = diffusion_module.sample_com_free_noise
    monkeypatch.setattr(diffusion_module, "sample_com_free_noise",
                        lambda *args, **kwargs: plain_noise(*args, **kwargs) @ q.T)
    x_q, h_q = sample(rule, steps=20, seed=3)
    assert torch.allclose(x_q, x @ q.T, atol=1e-4) and torch.allclose(h_q, h, atol=1e-4)


def test_settings_round_trip_and_bad_ones_are_refused():
    settings = RestartSettings(rounds=3, check_t=50, restart_t=400)
    assert RestartSettings.from_dict(settings.to_dict(), 1000) == settings
    assert RestartSettings.off_for(1000) == RestartSettings(0, 50, 400)
    for bad, message in (({"rounds": -1}, "rounds must be an integer >= 0"),
                         ({"rounds": 2, "check_t": 500, "restart_t": 400}, "check_t < restart_t"),
                         ({"rounds": 2, "restart_t": 2000}, "restart_t <= 1000"),
                         ({"rounds": 2, "check": "valence"}, "check must be"),
                         ({"rounds": True}, "rounds must be an integer"), ([], "must be an object")):
        with pytest.raises(ValueError, match=message):
            RestartSettings.from_dict(bad, 1000)


# Releases and the command line


@pytest.fixture()
def weights(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "weights"
    torch.manual_seed(0)
    cfg = model_config_from_preset("tiny")
    save_release(root / "plain", cfg, SymmetrisedDenoiser(cfg).state_dict(), {5: 2, 6: 2}, "qm9", {"step": 0},
                 default_steps_cpu=4)
    monkeypatch.setenv("SYMDIFF_WEIGHTS", str(root))
    return root


def generated(capsys, tmp_path: Path, name: str, *options: str) -> list:
    return generated_molecules(capsys, tmp_path / f"{name}.sdf", 8, 4, 2, *options)


def odd(mol) -> bool:
    return int(np.sum(mol.atomic_numbers)) % 2 == 1


def test_release_setting_round_trips_and_generate_overrides_it(weights, tmp_path, capsys):
    release = weights / "plain"
    shutil.copytree(release, weights / "plain-as-before")
    before = generated(capsys, tmp_path, "before", "--model", "plain")
    restarted = generated(capsys, tmp_path, "restarted", "--model", "plain", "--restart-rounds", "3")
    assert any(map(odd, before)), "an untrained model samples radicals, so the option has work to do"
    assert not all(np.array_equal(a.positions, b.positions) for a, b in zip(restarted, before))

    code, _, err = run_cli(capsys, "convert", str(release), str(release), "--restart-rounds", "3")
    assert code == 0 and "restart sampling at most 3 rounds" in err, err
    config = json.loads((release / "config.json").read_text())
    assert config["sampling"]["restart"] == {"check": "odd_electrons", "rounds": 3, "check_t": 50, "restart_t": 400}
    assert "Restart sampling of radicals" in (release / "README.md").read_text()
    assert load_release(str(release)).sample_config("cpu").restart.rounds == 3

    from_release = generated(capsys, tmp_path, "from-release", "--model", "plain")
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(from_release, restarted))
    turned_off = generated(capsys, tmp_path, "off", "--model", "plain", "--restart-rounds", "0")
    old_release = generated(capsys, tmp_path, "old", "--model", "plain-as-before")
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(turned_off, before))
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(old_release, before))

    code, _, err = run_cli(capsys, "convert", str(release), str(release), "--restart-rounds", "0",
                           "--default-steps", "3")
    assert code == 0 and "3 sampling steps by default on CPU" in err, err
    sampling = json.loads((release / "config.json").read_text())["sampling"]
    assert "restart" not in sampling and sampling["default_steps_cpu"] == 3
    assert load_release(str(release)).sample_config("cpu").steps == 3


def test_default_steps_on_a_gpu_are_a_release_setting_of_their_own(weights, capsys):
    release = weights / "plain"
    assert load_release(str(release)).sample_config("cuda").steps == 1000  # releases that do not say
    code, _, err = run_cli(capsys, "convert", str(release), str(release), "--default-steps-cuda", "100")
    assert code == 0 and "100 sampling steps by default on a GPU" in err, err
    sampling = json.loads((release / "config.json").read_text())["sampling"]
    assert sampling["default_steps_cuda"] == 100 and sampling["default_steps_cpu"] == 4  # the CPU's kept
    loaded = load_release(str(release))
    assert loaded.sample_config("cuda").steps == 100 and loaded.sample_config("cpu").steps == 4
    assert "`default_steps_cuda` 100" in (release / "README.md").read_text()
    for bad, message in (("0", "--default-steps-cuda must be at least 1"),
                         ("1001", "the default steps must be in 1..1000, not 1001")):
        code, _, err = run_cli(capsys, "convert", str(release), str(release), "--default-steps-cuda", bad)
        assert code != 0 and message in err and "Traceback" not in err, err
    assert json.loads((release / "config.json").read_text())["sampling"]["default_steps_cuda"] == 100


def test_bad_restart_options_fail_with_one_clear_line(weights, tmp_path, capsys):
    out = tmp_path / "mols.sdf"
    code, _, err = run_cli(capsys, "generate", "--n", "2", "--out", str(out), "--model", "plain",
                           "--restart-rounds", "-1")
    assert code != 0 and "--restart-rounds must be 0 (off) or more" in err and "Traceback" not in err
    assert not out.exists()
    code, _, err = run_cli(capsys, "convert", "a.sdf", "b.sdf", "--restart-rounds", "2")
    assert code != 0 and "applies only to a release directory" in err
    code, _, err = run_cli(capsys, "convert", str(weights / "plain"), str(weights / "plain"), "--default-steps", "0")
    assert code != 0 and "--default-steps must be at least 1" in err and "Traceback" not in err

    config_path = weights / "plain" / "config.json"
    config = json.loads(config_path.read_text())
    config["sampling"]["restart"] = {"rounds": 2, "check_t": 600, "restart_t": 400}
    config_path.write_text(json.dumps(config))
    with pytest.raises(SymdiffError, match=r"invalid sampling.restart \(need 0 <= check_t < restart_t"):
        load_release(str(weights / "plain"))
