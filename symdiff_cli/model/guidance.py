"""Autoguidance: steer a denoiser away from a weaker version of itself.

Karras et al. 2024 ("Guiding a Diffusion Model with a Bad Version of Itself") extrapolate from
the prediction of a worse model of the same task (smaller, trained less) towards the main one:

    eps_w(z, t) = eps_guide(z, t) + w (eps_main(z, t) - eps_guide(z, t)),

w = 1 being the main model alone. Both models err where the data are hard to fit; the guide errs
more, so the difference points away from those errors. Unlike classifier-free guidance it needs
no conditioning, which suits unconditional molecule generation.

The guide may be the mean of several weak networks (`MeanDenoiser`): their own errors differ, so
averaging leaves mostly the error they share with the main model, which is what guidance should
steer away from.

Equivariance survives: each term is an O(3)-equivariant (in distribution) function of z_t drawn
with its own frames, and a fixed linear combination of independent equivariant draws is
equivariant in distribution too; translations and permutations likewise.
"""

from __future__ import annotations

import torch
from torch import nn


class AutoGuidedDenoiser(nn.Module):
    """eps = eps_guide + weight * (eps_main - eps_guide); the guide is called only if weight != 1.

    Takes and returns what `SymmetrisedDenoiser` does; extra keyword arguments (a generator,
    coupled frame draws) go to both networks.
    """

    def __init__(self, main: nn.Module, guide: nn.Module | None, weight: float):
        super().__init__()
        if weight != 1.0 and guide is None:
            raise ValueError("a guidance weight other than 1 needs a guide model")
        self.main = main
        self.guide = guide
        self.weight = float(weight)

    def forward(self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        eps_x, eps_h = self.main(x, h, t, mask, **kwargs)
        if self.guide is None or self.weight == 1.0:
            return eps_x, eps_h
        guide_x, guide_h = self.guide(x, h, t, mask, **kwargs)
        # lerp(a, b, w) = a + w (b - a): one fused kernel per output.
        return torch.lerp(guide_x, eps_x, self.weight), torch.lerp(guide_h, eps_h, self.weight)


class MeanDenoiser(nn.Module):
    """The mean of several denoisers' predictions (eps_x, eps_h), each called with its own frames.

    A mean of independent equivariant-in-distribution draws is equivariant in distribution, and
    a mean of CoM-free position outputs is CoM-free.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("MeanDenoiser needs at least one denoiser")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        eps_x, eps_h = self.members[0](x, h, t, mask, **kwargs)
        for member in self.members[1:]:
            more_x, more_h = member(x, h, t, mask, **kwargs)
            eps_x, eps_h = eps_x + more_x, eps_h + more_h
        return eps_x / len(self.members), eps_h / len(self.members)


def mean_of(denoisers: list[nn.Module]) -> nn.Module:
    """One denoiser as it is, several as their `MeanDenoiser`."""
    return denoisers[0] if len(denoisers) == 1 else MeanDenoiser(denoisers)
