"""Property conditioning (EDM's conditional generation): a zero embedding is the unconditional model
exactly, equivariance with a condition, the condition is read, the training halves, conditional
releases through `generate --condition`, and the errors users get."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from symdiff_cli.engine.conditions import ConditionDraws, conditioning_section, parse_condition_specs
from symdiff_cli.errors import SymdiffError, UsageError
from symdiff_cli.model.config import ModelConfig, model_config_from_preset
from symdiff_cli.model.diffusion import Batch, NoiseSchedule, VPDiffusion
from symdiff_cli.model.dit import CONDITION_PREFIX, SymmetrisedDenoiser
from symdiff_cli.model.geometry import rotate

from cli_helpers import run_cli
from test_model import fixed_draws, random_inputs, reflection_and_rotation

ALPHA = dict(conditions=("alpha",), condition_mean=(75.0,), condition_std=(8.0,))


def perturbed(cfg: ModelConfig, seed: int = 0) -> SymmetrisedDenoiser:
    torch.manual_seed(seed)
    model = SymmetrisedDenoiser(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_config_round_trip_and_unconditional_configs_are_written_as_before():
    plain = model_config_from_preset("tiny")
    assert "conditions" not in plain.to_dict() and ModelConfig.from_dict(plain.to_dict()) == plain
    cond = dataclasses.replace(plain, **ALPHA)
    assert cond.to_dict()["conditions"] == ["alpha"] and ModelConfig.from_dict(cond.to_dict()) == cond
    with pytest.raises(SymdiffError, match="one entry per property"):
        dataclasses.replace(plain, conditions=("alpha",)).validate()
    with pytest.raises(SymdiffError, match="positive"):
        dataclasses.replace(plain, **{**ALPHA, "condition_std": (0.0,)}).validate()


def test_a_release_grown_with_a_condition_computes_the_same_function_for_any_value():
    from symdiff_cli.engine.growth import load_release_weights, model_config_from_release

    release = perturbed(model_config_from_preset("tiny"))
    cfg = model_config_from_release(release.cfg, dataclasses.replace(release.cfg, **ALPHA), {"conditions"})
    assert cfg.conditions == ("alpha",)
    model = SymmetrisedDenoiser(cfg).double().eval()
    new = load_release_weights(model, release.state_dict())
    assert sorted(new) == [CONDITION_PREFIX + "bias", CONDITION_PREFIX + "weight"]
    x, h, t = random_inputs()
    g, noise = fixed_draws(*x.shape[:2])
    want = release(x, h, t, None, haar=g, orientation_noise=noise)
    for value in (40.0, 75.0, 120.0):
        got = model(x, h, t, None, haar=g, orientation_noise=noise, condition=torch.full((x.shape[0], 1), value))
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    # an unconditional model (a guide) ignores a condition
    again = release(x, h, t, None, haar=g, orientation_noise=noise, condition=torch.ones(x.shape[0], 1))
    assert torch.equal(want[0], again[0])


@pytest.mark.parametrize("kernel", ["learned", "haar"])
def test_equivariance_holds_with_a_condition_and_the_condition_is_read(kernel):
    model = perturbed(model_config_from_preset("tiny", orientation_kernel=kernel, **ALPHA))
    x, h, t = random_inputs()
    b, n = x.shape[:2]
    g, noise = fixed_draws(b, n)
    q = reflection_and_rotation(b)
    c = torch.tensor([[60.0], [70.0], [80.0], [95.0]])
    eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise, condition=c)
    eps_x_q, eps_h_q = model(rotate(x, q), h, t, None, haar=q @ g, orientation_noise=noise, condition=c)
    assert torch.allclose(rotate(eps_x, q), eps_x_q, atol=1e-5)
    assert torch.allclose(eps_h, eps_h_q, atol=1e-5)
    other_x, other_h = model(x, h, t, None, haar=g, orientation_noise=noise, condition=c + 10)
    assert not torch.allclose(other_x, eps_x, atol=1e-4) and not torch.allclose(other_h, eps_h, atol=1e-4)
    assert eps_x.sum(dim=1).abs().max() < 1e-10  # still CoM-free
    with pytest.raises(ValueError, match="conditioned on alpha"):
        model(x, h, t, None)


def test_the_training_loss_passes_the_batch_values_and_trains_the_embedding():
    # a trained model (the fresh one's adaLN-Zero gates pass no gradient), its embedding still zero
    model = perturbed(model_config_from_preset("tiny", **ALPHA)).float().train()
    torch.nn.init.zeros_(model.backbone.condition_embed.weight)
    x, h, _ = random_inputs(b=6, n=5, dtype=torch.float32)
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("condition"))
        return model(*args, **kwargs)

    values = torch.linspace(60, 90, 6).unsqueeze(1)
    loss = VPDiffusion(NoiseSchedule(1000)).loss(recording, Batch(x, h, None, values),
                                                 generator=torch.Generator().manual_seed(0))
    assert len(seen) == 1 and torch.equal(seen[0], values)
    loss.backward()
    assert model.backbone.condition_embed.weight.grad.abs().max() > 0


def test_parse_condition_specs_fixed_drawn_and_errors():
    cond = model_config_from_preset("tiny", **ALPHA)
    assert parse_condition_specs(["alpha=80.5"], cond, "m") == {"alpha": 80.5}
    assert parse_condition_specs(["ALPHA"], cond, "m") == {"alpha": None}
    assert parse_condition_specs([], cond, "m") == {"alpha": None}
    with pytest.raises(UsageError, match="conditioned on alpha, not 'gap'"):
        parse_condition_specs(["gap=3"], cond, "m")
    with pytest.raises(UsageError, match="finite number"):
        parse_condition_specs(["alpha=nan"], cond, "m")
    with pytest.raises(UsageError, match="unconditional"):
        parse_condition_specs(["alpha=80"], model_config_from_preset("tiny"), "qm9")
    with pytest.raises(UsageError, match="twice"):
        parse_condition_specs(["alpha=80", "alpha=70"], cond, "m")
    two = model_config_from_preset("tiny", conditions=("alpha", "gap"), condition_mean=(75.0, 6800.0),
                                   condition_std=(8.0, 1300.0))
    assert parse_condition_specs(["gap=7000"], two, "m") == {"alpha": None, "gap": 7000.0}
    x, h, t = random_inputs(b=2, n=5, dtype=torch.float32)
    eps_x, _ = SymmetrisedDenoiser(two)(x, h, t, condition=torch.tensor([[70.0, 7000.0], [80.0, 6000.0]]))
    assert eps_x.shape == x.shape


def test_drawn_values_follow_the_quantiles_of_the_atom_count_and_are_reproducible():
    cfg = model_config_from_preset("tiny", **ALPHA)
    quantiles = {"9": list(np.linspace(10, 30, 21)), "19": list(np.linspace(70, 90, 21))}
    config = {"conditioning": conditioning_section(["alpha"], {"alpha": quantiles}, "test")}
    draws = ConditionDraws.for_release(cfg, config, {"alpha": None})
    small, large = draws(9, 4000, 7), draws(19, 4000, 7)
    assert small.shape == (4000, 1) and 10 <= small.min() and small.max() <= 30
    assert 70 <= large.min() and large.max() <= 90 and abs(np.median(large) - 80) < 0.5
    assert np.array_equal(draws(19, 50, 3), draws(19, 50, 3)) and not np.array_equal(draws(19, 50, 3), draws(19, 50, 4))
    assert 70 <= draws(25, 10, 1).min()  # an atom count without data takes the nearest one's
    assert np.all(ConditionDraws.for_release(cfg, config, {"alpha": 55.0})(9, 5, 0) == 55.0)
    with pytest.raises(SymdiffError, match="no conditioning.quantiles"):
        ConditionDraws.for_release(cfg, {}, {"alpha": None})


def save_conditional_release(path, seed: int = 0):
    from symdiff_cli.engine.release import save_release

    model = perturbed(model_config_from_preset("tiny", **ALPHA), seed).float()
    quantiles = {str(n): list(np.linspace(40 + 2 * n, 50 + 2 * n, 21)) for n in (5, 6)}
    save_release(path, model.cfg, model.state_dict(), {5: 3, 6: 2}, "qm9", {"source": "test"},
                 default_steps_cpu=4, extra_config={"conditioning": conditioning_section(["alpha"], {"alpha": quantiles}, "test")})
    return model


def tags(path, name="symdiff_condition_alpha"):
    from symdiff_cli.io.reader import read_molecules

    mols, _ = read_molecules(str(path))
    return [float(m.props[name]) for m in mols]


def test_generate_condition_fixed_and_drawn_tags_every_record(tmp_path, capsys):
    save_conditional_release(tmp_path / "rel")
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "rel"), "--n", "6", "--out",
                           str(tmp_path / "fixed.sdf"), "--condition", "alpha=80", "-q")
    assert code == 0, err
    assert tags(tmp_path / "fixed.sdf") == [80.0] * 6
    for name in ("a.sdf", "b.sdf"):
        assert run_cli(capsys, "generate", "--model", str(tmp_path / "rel"), "--n", "8", "--out",
                       str(tmp_path / name), "--condition", "alpha", "-q")[0] == 0
    drawn = tags(tmp_path / "a.sdf")
    assert drawn == tags(tmp_path / "b.sdf") and len(set(drawn)) == 8
    assert all(50 <= v <= 62 for v in drawn)  # within the quantiles of atom counts 5 and 6
    # a different value changes the molecules (the network reads it)
    run_cli(capsys, "generate", "--model", str(tmp_path / "rel"), "--n", "6", "--out", str(tmp_path / "low.sdf"),
            "--condition", "alpha=20", "-q")
    assert (tmp_path / "low.sdf").read_text().split("symdiff_condition")[0] != \
        (tmp_path / "fixed.sdf").read_text().split("symdiff_condition")[0]


def test_a_value_outside_the_training_range_is_warned_about_and_still_sampled(tmp_path, capsys):
    # The quantiles of the release span 50-62 (atom counts 5 and 6): alpha=80 is beyond them.
    save_conditional_release(tmp_path / "rel")
    for value, warned in (("80", True), ("56", False), ("49.9", True)):
        code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "rel"), "--n", "2", "--out",
                               str(tmp_path / "w.sdf"), "--condition", f"alpha={value}")
        said = " ".join(err.split())
        assert code == 0 and (tmp_path / "w.sdf").exists(), err
        assert ("Warning: alpha=" in said) == warned, err
        if warned:
            assert f"alpha={value} lies outside the values the model was trained on (50 to 62 Bohr^3)" in said


def test_convert_keeps_the_conditioning_section(tmp_path, capsys):
    save_conditional_release(tmp_path / "rel")
    before = json.loads((tmp_path / "rel" / "config.json").read_text())["conditioning"]
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "rel"), str(tmp_path / "copy"))
    assert code == 0, err
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["conditioning"] == before


def test_condition_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from symdiff_cli.engine.release import save_release

    plain = perturbed(model_config_from_preset("tiny")).float()
    save_release(tmp_path / "plain", plain.cfg, plain.state_dict(), {5: 1}, "qm9", {"source": "test"}, default_steps_cpu=2)
    save_conditional_release(tmp_path / "rel")
    cases = [
        (["generate", "--model", str(tmp_path / "plain"), "--n", "2", "--condition", "alpha=80"], "unconditional"),
        (["generate", "--model", str(tmp_path / "rel"), "--n", "2", "--condition", "gap=80"], "conditioned on alpha"),
        (["generate", "--model", str(tmp_path / "rel"), "--n", "2", "--condition", "alpha=big"], "finite number"),
        (["train", "--condition", "beta", "--out", str(tmp_path / "run")], "unknown property 'beta'"),
        (["train", "--condition", "alpha", "--data", str(tmp_path), "--out", str(tmp_path / "run")], "cannot be combined"),
    ]
    for args, message in cases:
        code, out, err = run_cli(capsys, *args, "--out" if args[0] == "generate" else "--quiet",
                                 *( [str(tmp_path / "x.sdf")] if args[0] == "generate" else []))
        assert code == 2, (args, err)
        assert message in err and "Traceback" not in err
        assert not (tmp_path / "x.sdf").exists() and not (tmp_path / "run").exists()


def test_the_halves_are_disjoint_reproducible_and_inside_the_train_split():
    from symdiff_cli.data.properties import HALF_SIZE, half_positions, qm9_property
    from symdiff_cli.data.qm9 import split_positions

    first, second = half_positions("first"), half_positions("second")
    assert len(first) == len(second) == HALF_SIZE and not set(first) & set(second)
    assert np.array_equal(first, half_positions("first"))
    train = split_positions()["train"]
    assert set(first) | set(second) == set(train)
    assert qm9_property("cv").name == "Cv" and qm9_property("Alpha").column == "Polarizability_bohr3"
    with pytest.raises(UsageError, match="unknown property"):
        qm9_property("enthalpy")


@pytest.mark.slow
def test_conditional_training_from_a_release_resumes_exactly_and_exports(tmp_path, capsys):
    from symdiff_cli.engine.metrics_log import read_metrics
    from symdiff_cli.engine.release import save_release

    plain = perturbed(model_config_from_preset("tiny")).float()
    save_release(tmp_path / "plain", plain.cfg, plain.state_dict(), {5: 1}, "qm9", {"source": "test"})
    common = ["train", "--init-from", str(tmp_path / "plain"), "--condition", "alpha", "--batch-size", "16",
              "--warmup-steps", "0", "--log-every", "2", "--threads", "1", "--quiet"]
    assert run_cli(capsys, *common, "--out", str(tmp_path / "a"), "--max-steps", "6")[0] == 0
    assert run_cli(capsys, *common, "--out", str(tmp_path / "b"), "--max-steps", "3")[0] == 0
    # resumed without --condition: the run's own condition
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "b"), "--resume", "--max-steps", "6",
                           "--batch-size", "16", "--warmup-steps", "0", "--log-every", "2", "--threads", "1",
                           "--quiet", "--init-from", str(tmp_path / "plain"))
    assert code == 0, err
    ck_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    ck_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for k in ck_a["ema"]:
        assert torch.equal(ck_a["ema"][k], ck_b["ema"][k]), k
    assert torch.count_nonzero(ck_a["model"][CONDITION_PREFIX + "weight"]) > 0
    cfg = ck_a["model_config"]
    assert cfg["conditions"] == ["alpha"] and 70 < cfg["condition_mean"][0] < 80 and cfg["condition_std"][0] > 5
    start = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if r.get("event") == "start"][0]
    assert start["molecules"] == 50_000 and "second half" in start["data"]
    assert run_cli(capsys, "convert", str(tmp_path / "a" / "checkpoint.pt"), str(tmp_path / "rel"))[0] == 0
    config = json.loads((tmp_path / "rel" / "config.json").read_text())
    assert config["provenance"]["conditions"] == ["alpha"]
    assert set(config["conditioning"]["quantiles"]["alpha"]) == {str(n) for n in map(int, config["atom_count_histogram"])}
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "rel"), "--n", "3", "--steps", "3",
                           "--condition", "alpha=70", "--out", str(tmp_path / "m.sdf"), "-q")
    assert code == 0, err
    assert tags(tmp_path / "m.sdf") == [70.0] * 3


def test_the_card_of_a_conditional_release_shows_its_use_provenance_and_mae_table(tmp_path):
    from symdiff_cli.engine.card import model_card

    save_conditional_release(tmp_path / "rel")
    config = json.loads((tmp_path / "rel" / "config.json").read_text())
    config["provenance"]["init_from"] = "qm9"
    metrics = {"format": "symdiff-metrics", "format_version": 1, "measurements": [
        {"name": "unguided", "date": "2026-12-03", "command": "symdiff generate", "seeds": [0], "n_per_seed": 10,
         "metrics": {"molecule_stability": {"count": 4, "of": 10}}}],
        "property_mae": [{"name": "unguided", "property": "alpha", "unit": "Bohr^3", "date": "2026-12-03",
                          "command": "symdiff generate --condition alpha", "num_molecules": 10, "mae": 2.5,
                          "mae_standard_error": 0.25, "molecule_stability": 40.0,
                          "references": {"shuffled": 9.0, "atom_count": 3.8, "real_molecules": 0.5}}]}
    card = model_card(config, 100, metrics, "qm9-alpha")
    assert "## Property conditioning" in card and "--model qm9-alpha --condition alpha=80" in card
    assert "Fine-tuned from the release `qm9`" in card and "saw the property predictor's half too" in card
    assert "| unguided (10 molecules; molecule stability 40 %) | 2.5 ± 0.25 | 2.76 |" in card
    assert "| atom count alone | 3.8 | 3.86 |" in card
    assert "Conditional on alpha" in card and "no property conditioning" not in card
    plain = model_card({**config, "model_config": {k: v for k, v in config["model_config"].items()
                                                   if not k.startswith("condition")}}, 100, None, "x")
    assert "Property conditioning" not in plain and "no property conditioning" in plain


def test_condition_guidance_extrapolates_from_the_network_without_its_condition():
    from symdiff_cli.model.guidance import AutoGuidedDenoiser, ConditionGuidedDenoiser

    model = perturbed(model_config_from_preset("tiny", **ALPHA))
    x, h, t = random_inputs()
    b, n = x.shape[:2]
    g, noise = fixed_draws(b, n)
    c = torch.full((b, 1), 85.0)
    draws = dict(haar=g, orientation_noise=noise, condition=c)
    with_c = model(x, h, t, None, **draws)
    without = model(x, h, t, None, **draws, drop_condition=torch.ones(b, dtype=torch.bool))
    # left out, the condition adds nothing: the embedding's zero, the grown release's function
    saved = model.backbone.condition_embed.weight.detach().clone(), model.backbone.condition_embed.bias.detach().clone()
    with torch.no_grad():
        model.backbone.condition_embed.weight.zero_()
        model.backbone.condition_embed.bias.zero_()
    zero = model(x, h, t, None, **draws)
    with torch.no_grad():
        model.backbone.condition_embed.weight.copy_(saved[0])
        model.backbone.condition_embed.bias.copy_(saved[1])
    assert torch.equal(without[0], zero[0]) and not torch.allclose(without[0], with_c[0], atol=1e-4)
    # row by row
    some = torch.tensor([True, False, True, False])
    mixed = model(x, h, t, None, **draws, drop_condition=some)
    assert torch.allclose(mixed[0][some], without[0][some]) and torch.allclose(mixed[0][~some], with_c[0][~some])
    assert torch.equal(ConditionGuidedDenoiser(model, 1.0)(x, h, t, None, **draws)[0], with_c[0])
    guided = ConditionGuidedDenoiser(model, 3.0)(x, h, t, None, **draws)
    assert torch.allclose(guided[0], without[0] + 3 * (with_c[0] - without[0]), atol=1e-10)
    # equivariant, under autoguidance by an unconditional guide too
    q = reflection_and_rotation(b)
    guide = perturbed(model_config_from_preset("tiny"), seed=1)
    both = AutoGuidedDenoiser(ConditionGuidedDenoiser(model, 3.0), guide, 2.0)
    eps_x, _ = both(x, h, t, None, **draws)
    eps_x_q, _ = both(rotate(x, q), h, t, None, haar=q @ g, orientation_noise=noise, condition=c)
    assert torch.allclose(rotate(eps_x, q), eps_x_q, atol=1e-5)


def test_condition_dropout_leaves_out_that_share_of_the_batch():
    model = perturbed(model_config_from_preset("tiny", **ALPHA)).float()
    x, h, _ = random_inputs(b=400, n=3, dtype=torch.float32)
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("drop_condition"))
        return model(*args, **kwargs)

    batch = Batch(x, h, None, torch.full((400, 1), 70.0))
    d = VPDiffusion(NoiseSchedule(1000))
    d.loss(recording, batch, generator=torch.Generator().manual_seed(0), condition_dropout=0.25)
    assert seen[0].dtype == torch.bool and 70 <= int(seen[0].sum()) <= 130
    d.loss(recording, batch, generator=torch.Generator().manual_seed(0))
    assert seen[1] is None


def test_condition_guidance_and_dropout_errors(tmp_path, capsys):
    from symdiff_cli.engine.release import save_release

    plain = perturbed(model_config_from_preset("tiny")).float()
    save_release(tmp_path / "plain", plain.cfg, plain.state_dict(), {5: 1}, "qm9", {"source": "test"}, default_steps_cpu=2)
    save_conditional_release(tmp_path / "rel")
    for args, message in [
        (["generate", "--model", str(tmp_path / "plain"), "--condition-guidance", "2"], "needs a conditional model"),
        (["generate", "--model", str(tmp_path / "rel"), "--condition-guidance", "-1"], ">= 0"),
        (["train", "--condition-dropout", "0.1"], "needs --condition"),
        (["train", "--condition", "alpha", "--condition-dropout", "1"], "[0, 1)"),
    ]:
        out = ["--out", str(tmp_path / ("x.sdf" if args[0] == "generate" else "run"))]
        out += ["--n", "1"] if args[0] == "generate" else []
        code, _, err = run_cli(capsys, *args, *out, "-q" if args[0] == "generate" else "--quiet")
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    config_path = tmp_path / "rel" / "config.json"
    config = json.loads(config_path.read_text())
    config["sampling"]["condition_guidance"] = "strong"
    config_path.write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "rel"), "--n", "1", "--out", str(tmp_path / "y.sdf"))
    assert code == 1 and "condition_guidance must be a number" in err
