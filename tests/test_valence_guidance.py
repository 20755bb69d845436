"""Valence guidance (model/valence.py): the energy, its gradient step, equivariance, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from symdiff_cli.chem.bonds import bond_thresholds_angstrom
from symdiff_cli.model.diffusion import NoiseSchedule
from symdiff_cli.model.geometry import remove_mean, rotate
from symdiff_cli.model.valence import ValenceGuidanceSettings, ValenceGuidedDenoiser, valence_energy

from test_model import fixed_draws, perturbed_model, random_inputs, reflection_and_rotation

TYPES = ("H", "C", "N", "O", "F")
TETRAHEDRON = np.array([[1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]]) / np.sqrt(3)


def rules():
    thresholds, valences = bond_thresholds_angstrom(TYPES)
    return torch.tensor(thresholds), torch.tensor(valences)


def one_hot(indices: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(indices), len(TYPES)).double().unsqueeze(0)


def methane_positions(ch: float = 1.09) -> torch.Tensor:
    return torch.tensor(np.vstack([[0.0, 0.0, 0.0], ch * TETRAHEDRON])).unsqueeze(0)


def guided(scale: float, max_t: int = 1000, **kwargs) -> ValenceGuidedDenoiser:
    thresholds, valences = bond_thresholds_angstrom(TYPES)
    return ValenceGuidedDenoiser(perturbed_model("learned", seed=0), NoiseSchedule(1000), thresholds, valences,
                                 norm_one_hot=4.0, scale=scale, max_t=max_t, **kwargs).double()


def test_energy_is_low_for_methane_and_high_for_a_stretched_bond_or_a_wrong_type():
    thresholds, valences = rules()
    types = one_hot([1, 0, 0, 0, 0])
    relaxed = valence_energy(methane_positions(), types, None, thresholds, valences, 0.02)
    stretched_x = methane_positions().clone()
    stretched_x[0, 1] *= 1.4
    stretched = valence_energy(stretched_x, types, None, thresholds, valences, 0.02)
    # Oxygen in carbon's place: O-H bonds are shorter (0.96 Angstrom) than these 1.09 Angstrom.
    oxygen = valence_energy(methane_positions(), one_hot([3, 0, 0, 0, 0]), None, thresholds, valences, 0.02)
    assert relaxed.item() < 0.05
    assert stretched.item() > 0.5 and oxygen.item() > 0.5


def test_padding_atoms_do_not_change_the_energy():
    thresholds, valences = rules()
    x = torch.cat([methane_positions(), torch.zeros(1, 2, 3)], dim=1)
    types = torch.cat([one_hot([1, 0, 0, 0, 0]), one_hot([0, 0])], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 2])
    padded = valence_energy(x, types, mask, thresholds, valences, 0.02)
    plain = valence_energy(methane_positions(), one_hot([1, 0, 0, 0, 0]), None, thresholds, valences, 0.02)
    assert torch.allclose(padded, plain, atol=1e-10)


def test_scale_zero_and_noise_above_the_window_leave_the_network_alone():
    x, h, t = random_inputs()
    g, noise = fixed_draws(*x.shape[:2])
    draws = dict(haar=g, orientation_noise=noise)
    plain = perturbed_model("learned", seed=0)(x, h, t, None, **draws)
    for off in (guided(0.0), guided(0.01, max_t=-1)):
        out = off(x, h, t, None, **draws)
        assert torch.equal(out[0], plain[0]) and torch.equal(out[1], plain[1])
    on = guided(0.01)(x, h, t, None, **draws)
    assert not torch.allclose(on[0], plain[0])


def test_guided_step_stays_equivariant_and_com_free():
    model = guided(0.01, width=0.1)
    x, h, t = random_inputs()
    b, n = x.shape[:2]
    g, noise = fixed_draws(b, n)
    q = reflection_and_rotation(b)
    eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise)
    eps_x_q, eps_h_q = model(rotate(x, q), h, t, None, haar=q @ g, orientation_noise=noise)
    assert torch.allclose(rotate(eps_x, q), eps_x_q, atol=1e-5)
    assert torch.allclose(eps_h, eps_h_q, atol=1e-5)
    assert eps_x.mean(dim=1).abs().max() < 1e-10


def test_padding_does_not_change_real_atoms_under_guidance():
    model = guided(0.01, width=0.1)
    x, h, t = random_inputs(b=2, n=6)
    g, _ = fixed_draws(2, 6)
    noise = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise[:, :6])
    xp = torch.cat([x, torch.randn(2, 2, 3, dtype=torch.float64)], dim=1)
    hp = torch.cat([h, torch.randn(2, 2, h.shape[-1], dtype=torch.float64)], dim=1)
    mask = torch.tensor([[True] * 6 + [False] * 2] * 2)
    xp = remove_mean(xp, mask)
    eps_xp, eps_hp = model(xp, hp, t, mask, haar=g, orientation_noise=noise)
    assert torch.allclose(eps_xp[:, :6], eps_x, atol=1e-6) and torch.allclose(eps_hp[:, :6], eps_h, atol=1e-6)
    assert eps_hp[:, 6:].abs().max() == 0


def test_one_guided_step_moves_the_clean_estimate_downhill():
    """With the network's eps fixed, the step moves x0_hat against the energy's gradient."""
    thresholds, valences = rules()
    schedule = NoiseSchedule(1000)

    class Fixed(torch.nn.Module):
        def forward(self, x, h, t, mask=None, **kwargs):
            return torch.zeros_like(x), torch.zeros_like(h)

    model = ValenceGuidedDenoiser(Fixed(), schedule, thresholds.numpy(), valences.numpy(), 4.0, scale=1e-3,
                                  max_t=1000, width=0.05).double()
    x = methane_positions().clone()
    x[0, 1] *= 1.15  # one C-H bond beyond the threshold
    x = remove_mean(x)
    h = torch.cat([one_hot([1, 0, 0, 0, 0]) / 4, torch.zeros(1, 5, 1, dtype=torch.float64)], dim=-1)
    t = torch.tensor([50])
    gamma = schedule.gamma(t).double().view(-1, 1, 1)
    alpha, sigma = schedule.alpha(gamma), schedule.sigma(gamma)
    z_x, z_h = alpha * x, alpha * h  # eps = 0 means z_t = alpha x0
    eps_x, _ = model(z_x, z_h, t, None)
    x0_after = (z_x - sigma * eps_x) / alpha
    before = valence_energy(x, one_hot([1, 0, 0, 0, 0]), None, thresholds, valences, 0.05)
    after = valence_energy(x0_after, one_hot([1, 0, 0, 0, 0]), None, thresholds, valences, 0.05)
    assert after.item() < before.item()


def test_a_bond_too_many_costs_over_weight_times_a_missing_one():
    thresholds, valences = rules()
    # Methane with nitrogen in carbon's place and N-H bonds well inside the threshold: one bond too many.
    over = methane_positions(1.0)
    as_nitrogen = one_hot([2, 0, 0, 0, 0])
    # The methyl radical: carbon one bond short.
    under = methane_positions()[:, :4]
    as_methyl = one_hot([1, 0, 0, 0])
    for weight in (1.0, 4.0):
        e_over = valence_energy(over, as_nitrogen, None, thresholds, valences, 0.01, over_weight=weight)
        e_under = valence_energy(under, as_methyl, None, thresholds, valences, 0.01, over_weight=weight)
        assert e_over.item() == pytest.approx(weight, rel=0.02)
        assert e_under.item() == pytest.approx(1.0, rel=0.02)


def test_settings_round_trip_and_reject_nonsense():
    settings = ValenceGuidanceSettings(scale=0.003, max_t=300, over_weight=4.0)
    assert ValenceGuidanceSettings.from_dict(settings.to_dict()) == settings
    assert settings.with_scale(0.01).max_t == 300
    for bad in ({"scale": -1}, {"width": 0}, {"over_weight": 0.5}, {"strength": 1}):
        with pytest.raises(ValueError):
            ValenceGuidanceSettings.from_dict(bad)
