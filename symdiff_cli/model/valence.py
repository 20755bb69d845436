"""Valence guidance: steer each denoising step towards molecules whose atoms have their valence.

Following EEGSDE (Bao et al. 2023), which guides with the gradient of an energy of the predicted
clean molecule, each step at t <= max_t

1. predicts the clean molecule x0, h0 = (z_t - sigma_t eps) / alpha_t from the network's eps;
2. computes a smooth valence energy E(x0, h0): type probabilities p_i = softmax(h0 / tau), soft
   bond orders o_ij summed over the benchmark's single/double/triple distance thresholds
   (sigmoids of width `width` Angstrom), and per atom sum_a p_ia c(sum_j o_ij - valence_a), where
   c costs a missing bond 1 per squared unit and a bond too many `over_weight` per squared unit;
3. moves x0 down the energy's position gradient by `scale` (Angstrom^2 per unit of energy), which
   is eps_x <- eps_x + scale (alpha_t / sigma_t) dE/dx0; optionally moves the type scores by
   `type_scale` along -dE/dp (centred over types).

No gradient goes through the network, so a step costs one small N^2 computation beside it.
E depends only on distances and types, so its position gradient is rotation-equivariant and
sums to zero over atoms: the guided denoiser stays equivariant (in distribution) and CoM-free.

Measured on the shipped QM9 model (docs/experiments.csv, area sampler): the position step
fixes bond lengths; it cannot fix a composition no geometry can make stable (an odd electron
count), and the type step did not either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from symdiff_cli.model.geometry import remove_mean

@dataclass(frozen=True)
class ValenceGuidanceSettings:
    """How strongly and where valence guidance acts; scale 0 is off.

    scale: step size in clean-space units (Angstrom^2 per unit of energy for positions);
    max_t: guidance acts at timesteps t <= max_t (of T = 1000), where atom types are still
    being decided and bonds formed; width: the sigmoid width (Angstrom) of the soft bond
    thresholds; temperature: of the softmax turning one-hot scores into type probabilities.
    """

    scale: float = 0.0
    max_t: int = 400
    width: float = 0.05
    temperature: float = 0.1
    type_scale: float = 0.0  # step size for the type scores (dE/dp); 0: positions only
    over_weight: float = 4.0  # cost of a bond beyond the valence against a missing one (valence_energy)
    decisiveness: float = 0.0  # weight of the term keeping bond lengths off the thresholds (valence_energy)

    def with_scale(self, scale: float) -> "ValenceGuidanceSettings":
        return replace(self, scale=float(scale))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ValenceGuidanceSettings":
        known = {"scale", "max_t", "width", "temperature", "type_scale", "over_weight", "decisiveness"}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown valence guidance setting(s): {', '.join(sorted(unknown))}")
        settings = cls(**{k: (int(v) if k == "max_t" else float(v)) for k, v in raw.items()})
        if min(settings.scale, settings.type_scale) < 0 or min(settings.width, settings.temperature) <= 0 \
                or settings.over_weight < 1:
            raise ValueError("valence guidance needs scales >= 0, width > 0, temperature > 0, over_weight >= 1")
        return settings


def valence_energy(x0: torch.Tensor, types: torch.Tensor, mask: torch.Tensor | None,
                   thresholds: torch.Tensor, valences: torch.Tensor, width: float,
                   over_weight: float = 1.0, decisiveness: float = 0.0) -> torch.Tensor:
    """Per-molecule energy (B,) of positions x0 (B, N, 3, Angstrom) and type probabilities (B, N, K).

    Bonds beyond an atom's valence cost `over_weight` times as much as missing ones: an
    over-bonded atom makes the molecule invalid as well as unstable, while an under-bonded one
    (a radical) still sanitises, so with a weight above 1 the guidance never trades one radical
    for a hypervalent neighbour by shortening a bond between them.

    `decisiveness` adds, per pair and bond order, s (1 - s) of the soft order s: the valence term
    alone is content with two bonds of order 1.5 at a threshold (an aromatic ring made
    symmetric), which the benchmark's perception, a hard threshold, then reads either way.
    """
    b, n, _ = x0.shape
    diff = x0.unsqueeze(2) - x0.unsqueeze(1)
    # The epsilon keeps the gradient of the distance finite on the diagonal.
    dist = torch.sqrt((diff ** 2).sum(-1) + 1e-8)  # (B, N, N)
    soft = torch.sigmoid((thresholds - dist[..., None, None, None]) / width) * (thresholds > 0)
    orders_by_type = soft.sum(-1)  # (B, N, N, K, K)
    pair = torch.einsum("bia,bjc,bijac->bij", types, types, orders_by_type)
    off_diagonal = 1.0 - torch.eye(n, dtype=x0.dtype, device=x0.device)
    if mask is not None:
        m = mask.to(x0.dtype)
        off_diagonal = off_diagonal * m.unsqueeze(1) * m.unsqueeze(2)
    valence = (pair * off_diagonal).sum(-1)  # (B, N)
    excess = valence.unsqueeze(-1) - valences
    per_atom = (types * (over_weight * torch.relu(excess) ** 2 + torch.relu(-excess) ** 2)).sum(-1)
    if mask is not None:
        per_atom = per_atom * mask.to(x0.dtype)
    energy = per_atom.sum(-1)
    if decisiveness:
        undecided = torch.einsum("bia,bjc,bijac->bij", types, types, (soft * (1 - soft)).sum(-1))
        energy = energy + decisiveness * 0.5 * (undecided * off_diagonal).sum((-1, -2))
    return energy


class ValenceGuidedDenoiser(nn.Module):
    """eps <- eps + scale (alpha_t / sigma_t) grad E(x0_hat, h0_hat) for t <= max_t (module docstring).

    `schedule` maps integer timesteps to gamma (model/diffusion.py NoiseSchedule); `norm_one_hot`
    is the model's one-hot scaling, so that h0 * norm_one_hot is on the one-hot scale before the
    softmax of temperature `temperature`.
    """

    def __init__(self, inner: nn.Module, schedule, thresholds, valences, norm_one_hot: float,
                 scale: float, max_t: int, width: float = 0.05, temperature: float = 0.1,
                 type_scale: float = 0.0, over_weight: float = 1.0, decisiveness: float = 0.0):
        super().__init__()
        self.inner = inner
        self.schedule = schedule
        self.num_types = len(valences)
        self.norm_one_hot = float(norm_one_hot)
        self.scale = float(scale)
        self.max_t = int(max_t)
        self.width = float(width)
        self.temperature = float(temperature)
        self.type_scale = float(type_scale)
        self.over_weight = float(over_weight)
        self.decisiveness = float(decisiveness)
        self.guide_positions = self.scale > 0
        self.guide_types = self.type_scale > 0
        self.register_buffer("thresholds", torch.as_tensor(thresholds, dtype=torch.float32), persistent=False)
        self.register_buffer("valences", torch.as_tensor(valences, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        eps_x, eps_h = self.inner(x, h, t, mask, **kwargs)
        if not (self.guide_positions or self.guide_types) or int(t.max()) > self.max_t:
            return eps_x, eps_h
        gamma = self.schedule.gamma(t).to(x.dtype).view(-1, 1, 1)
        alpha, sigma = self.schedule.alpha(gamma), self.schedule.sigma(gamma)
        # Sampling runs under inference mode; the energy's gradient needs ordinary tensors.
        with torch.inference_mode(False), torch.enable_grad():
            x0 = ((x - sigma * eps_x) / alpha).clone().requires_grad_(self.guide_positions)
            scores = (h[..., : self.num_types] - sigma * eps_h[..., : self.num_types]) / alpha
            probs = torch.softmax(scores.clone() * (self.norm_one_hot / self.temperature), dim=-1)
            # The type step follows dE/dp, not dE/dscores: the softmax of the near one-hot scores is
            # saturated, so its Jacobian would hide which type fits an atom's bonds.
            probs = probs.detach().requires_grad_(self.guide_types)
            energy = valence_energy(x0, probs, mask, self.thresholds.to(x0), self.valences.to(x0), self.width,
                                    self.over_weight, self.decisiveness).sum()
            wanted = [v for v, on in ((x0, self.guide_positions), (probs, self.guide_types)) if on]
            grads = list(torch.autograd.grad(energy, wanted))
        if self.guide_positions:
            eps_x = eps_x + self.scale * alpha / sigma * remove_mean(grads.pop(0).detach().to(eps_x.dtype), mask)
        if self.guide_types:
            g_p = grads.pop(0).detach().to(eps_h.dtype)
            g_h = torch.zeros_like(eps_h)
            # Centred over types: the step moves scores between types, not all of them together.
            g_h[..., : self.num_types] = g_p - g_p.mean(dim=-1, keepdim=True)
            if mask is not None:
                g_h = g_h * mask.unsqueeze(-1).to(g_h.dtype)
            eps_h = eps_h + self.type_scale * alpha / sigma * g_h
        return eps_x, eps_h
