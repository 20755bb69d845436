"""Autoguidance in a limited noise interval, min_t < t <= max_t: `guidance_max_t` and `guidance_min_t`
in the model, the release and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import generated_molecules, run_cli  # tests/, beside this file
from symdiff_cli.engine.release import load_release, save_release
from symdiff_cli.engine.release_config import Guide
from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.dit import SymmetrisedDenoiser
from symdiff_cli.model.geometry import remove_mean, rotate, sample_haar_orthogonal
from symdiff_cli.model.guidance import AutoGuidedDenoiser


def perturbed(seed: int) -> SymmetrisedDenoiser:
    torch.manual_seed(seed)
    model = SymmetrisedDenoiser(model_config_from_preset("tiny")).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


class CountingDenoiser(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def inputs(t: list[int]):
    g = torch.Generator().manual_seed(1)
    b, n = len(t), 7
    x = remove_mean(torch.randn(b, n, 3, generator=g, dtype=torch.float64))
    h = torch.randn(b, n, 6, generator=g, dtype=torch.float64)
    frames = sample_haar_orthogonal(b, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    noise = torch.randn(b, n, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return x, h, torch.tensor(t), dict(haar=frames, orientation_noise=noise)


def test_steps_above_max_t_run_the_main_network_alone():
    main, guide = perturbed(0), CountingDenoiser(perturbed(5))
    limited = AutoGuidedDenoiser(main, guide, 3.0, max_t=600)
    x, h, t, draws = inputs([900, 601, 1000])
    main_x, main_h = main(x, h, t, None, **draws)
    out_x, out_h = limited(x, h, t, None, **draws)
    assert guide.calls == 0
    assert torch.equal(out_x, main_x) and torch.equal(out_h, main_h)

    x, h, t, draws = inputs([600, 10, 300])
    full_x, full_h = AutoGuidedDenoiser(main, guide, 3.0)(x, h, t, None, **draws)
    out_x, out_h = limited(x, h, t, None, **draws)
    assert torch.equal(out_x, full_x) and torch.equal(out_h, full_h)
    assert not torch.allclose(out_x, main(x, h, t, None, **draws)[0], atol=1e-3)


def test_a_batch_of_mixed_timesteps_is_guided_row_by_row():
    main, guide = perturbed(0), perturbed(5)
    x, h, t, draws = inputs([900, 300, 700, 100])
    main_x, main_h = main(x, h, t, None, **draws)
    full_x, full_h = AutoGuidedDenoiser(main, guide, 3.0)(x, h, t, None, **draws)
    out_x, out_h = AutoGuidedDenoiser(main, guide, 3.0, max_t=500)(x, h, t, None, **draws)
    for row, guided in enumerate([False, True, False, True]):
        want_x, want_h = (full_x, full_h) if guided else (main_x, main_h)
        assert torch.equal(out_x[row], want_x[row]) and torch.equal(out_h[row], want_h[row]), row


def test_steps_at_or_below_min_t_run_the_main_network_alone():
    main, guide = perturbed(0), CountingDenoiser(perturbed(5))
    closed = AutoGuidedDenoiser(main, guide, 3.0, max_t=600, min_t=20)
    x, h, t, draws = inputs([20, 3, 0])
    main_x, main_h = main(x, h, t, None, **draws)
    out_x, out_h = closed(x, h, t, None, **draws)
    assert guide.calls == 0  # the quiet end costs the main network alone
    assert torch.equal(out_x, main_x) and torch.equal(out_h, main_h)

    x, h, t, draws = inputs([700, 21, 20, 600])  # above, inside, at min_t, at max_t
    main_x, main_h = main(x, h, t, None, **draws)
    full_x, full_h = AutoGuidedDenoiser(main, guide, 3.0)(x, h, t, None, **draws)
    out_x, out_h = closed(x, h, t, None, **draws)
    assert guide.calls == 2
    for row, guided in enumerate([False, True, False, True]):
        want_x, want_h = (full_x, full_h) if guided else (main_x, main_h)
        assert torch.equal(out_x[row], want_x[row]) and torch.equal(out_h[row], want_h[row]), row


def test_interval_guidance_stays_equivariant_and_com_free():
    guided = AutoGuidedDenoiser(perturbed(0), perturbed(5), 2.5, max_t=500, min_t=50)
    x, h, t, draws = inputs([900, 300, 20, 100])
    q = sample_haar_orthogonal(4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    q[:2, :, 0] *= -1  # two reflections among the four
    eps_x, eps_h = guided(x, h, t, None, **draws)
    eps_x_q, eps_h_q = guided(rotate(x, q), h, t, None, haar=q @ draws["haar"],
                              orientation_noise=draws["orientation_noise"])
    assert torch.allclose(rotate(eps_x, q), eps_x_q, atol=1e-5) and torch.allclose(eps_h, eps_h_q, atol=1e-5)
    assert eps_x.mean(dim=1).abs().max() < 1e-10


# Releases and the command line


@pytest.fixture()
def weights(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "weights"
    torch.manual_seed(0)
    cfg = model_config_from_preset("tiny")
    main, guide = SymmetrisedDenoiser(cfg), SymmetrisedDenoiser(cfg)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_release(root / "guided", cfg, main.state_dict(), {5: 2, 6: 2}, "qm9", {"step": 0}, default_steps_cpu=4,
                 guide=Guide.single(cfg, guide.state_dict(), 3.0))
    monkeypatch.setenv("SYMDIFF_WEIGHTS", str(root))
    return root


def generated_positions(capsys, tmp_path: Path, name: str, *options: str) -> list[np.ndarray]:
    return [m.positions for m in generated_molecules(capsys, tmp_path / f"{name}.sdf", 6, 3, 4, *options)]


def test_release_setting_round_trips_and_generate_overrides_it(weights, tmp_path, capsys):
    release = weights / "guided"
    shutil.copytree(release, weights / "guided-as-before")
    before = generated_positions(capsys, tmp_path, "before", "--model", "guided")

    code, _, err = run_cli(capsys, "convert", str(release), str(release), "--guidance-max-t", "600")
    assert code == 0 and "guided at timesteps <= 600" in err, err
    config = json.loads((release / "config.json").read_text())
    assert config["sampling"]["guidance_max_t"] == 600 and config["format_version"] == 2
    assert "timesteps <= 600" in (release / "README.md").read_text()
    assert load_release(str(release)).sample_config("cpu").guidance_max_t == 600

    limited = generated_positions(capsys, tmp_path, "limited", "--model", "guided")
    everywhere = generated_positions(capsys, tmp_path, "everywhere", "--model", "guided", "--guidance-max-t", "1000")
    old_release = generated_positions(capsys, tmp_path, "old", "--model", "guided-as-before")
    assert all(np.array_equal(a, b) for a, b in zip(everywhere, before))  # the earlier sampler, exactly
    assert all(np.array_equal(a, b) for a, b in zip(old_release, before))  # a release without the key: unchanged
    assert not all(np.allclose(a, b) for a, b in zip(limited, before))
    again = generated_positions(capsys, tmp_path, "again", "--model", "guided-as-before", "--guidance-max-t", "600")
    assert all(np.array_equal(a, b) for a, b in zip(again, limited))  # the option equals the release setting

    code, _, err = run_cli(capsys, "convert", str(release), str(release), "--guidance-max-t", "1000")
    assert code == 0, err
    assert "guidance_max_t" not in json.loads((release / "config.json").read_text())["sampling"]


def test_min_t_round_trips_through_convert_and_generate_overrides_it(weights, tmp_path, capsys):
    release = weights / "guided"
    before = generated_positions(capsys, tmp_path, "before", "--model", "guided")
    code, _, err = run_cli(capsys, "convert", str(release), str(release), "--guidance-min-t", "500")
    assert code == 0 and "not guided at timesteps <= 500" in err, err
    assert json.loads((release / "config.json").read_text())["sampling"]["guidance_min_t"] == 500
    assert "500 < t" not in (release / "README.md").read_text()  # no upper end set: "timesteps above 500"
    assert "timesteps above 500" in (release / "README.md").read_text()
    assert load_release(str(release)).sample_config("cpu").guidance_min_t == 500

    closed = generated_positions(capsys, tmp_path, "closed", "--model", "guided")
    assert not all(np.allclose(a, b) for a, b in zip(closed, before))
    to_the_end = generated_positions(capsys, tmp_path, "to-the-end", "--model", "guided", "--guidance-min-t", "0")
    assert all(np.array_equal(a, b) for a, b in zip(to_the_end, before))  # 0: the earlier sampler, exactly

    code, _, err = run_cli(capsys, "convert", str(release), str(release), "--guidance-min-t", "0")
    assert code == 0, err
    assert "guidance_min_t" not in json.loads((release / "config.json").read_text())["sampling"]
    again = generated_positions(capsys, tmp_path, "again", "--model", "guided")
    assert all(np.array_equal(a, b) for a, b in zip(again, before))


def test_bad_intervals_fail_with_one_clear_line(weights, tmp_path, capsys):
    out = tmp_path / "mols.sdf"
    code, _, err = run_cli(capsys, "generate", "--n", "2", "--out", str(out), "--model", "guided",
                           "--guidance-max-t", "-1")
    assert code != 0 and "--guidance-max-t must be a timestep >= 0" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "generate", "--n", "2", "--out", str(out), "--model", "guided",
                           "--guidance-max-t", "5000")
    assert code != 0 and "above the model's 1000 diffusion steps" in err and not out.exists()
    code, _, err = run_cli(capsys, "convert", "a.sdf", "b.sdf", "--guidance-max-t", "600")
    assert code != 0 and "applies only to a release directory" in err
    release = str(weights / "guided")
    code, _, err = run_cli(capsys, "convert", release, release, "--guidance-max-t", "-1")
    assert code != 0 and "must be >= 0, not -1" in err and "Traceback" not in err

    code, _, err = run_cli(capsys, "generate", "--n", "2", "--out", str(out), "--model", "guided",
                           "--guidance-min-t", "-5")
    assert code != 0 and "--guidance-min-t must be a timestep >= 0" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "generate", "--n", "2", "--out", str(out), "--model", "guided",
                           "--guidance-max-t", "300", "--guidance-min-t", "300")
    assert code != 0 and "leaves no timestep to guide" in err and not out.exists()
    code, _, err = run_cli(capsys, "convert", release, release, "--guidance-max-t", "300", "--guidance-min-t", "400")
    assert code != 0 and "must be below its highest (300)" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "convert", release, release, "--guidance-max-t", "0", "--guidance-min-t", "5")
    assert code != 0 and "must be below its highest (0)" in err and "Traceback" not in err  # 0 is a bound too
    assert "guidance_min_t" not in json.loads((weights / "guided" / "config.json").read_text())["sampling"]

    config_path = weights / "guided" / "config.json"
    config = json.loads(config_path.read_text())
    config["sampling"]["guidance_min_t"] = 1000
    config_path.write_text(json.dumps(config))
    with pytest.raises(SymdiffError, match=r"sampling.guidance_min_t must be an integer from 0"):
        load_release(str(weights / "guided"))
    del config["sampling"]["guidance_min_t"]
    config["sampling"]["guidance_max_t"] = "600"
    config_path.write_text(json.dumps(config))
    with pytest.raises(SymdiffError, match=r"sampling.guidance_max_t must be an integer in 0..1000"):
        load_release(str(weights / "guided"))
