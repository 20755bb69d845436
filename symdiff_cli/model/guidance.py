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

Guidance may be limited to the less noisy part of the chain (`max_t`): Kynkaanniemi et al. 2024
("Applying guidance in a limited interval improves sample and distribution quality") find that
guiding at high noise levels mostly narrows the distribution and costs network calls, while the
gain comes from the middle and low noise levels. Above `max_t` the main network alone predicts
and the guide is not called. The interval may be closed at the quiet end too (`min_t`): in the
last steps before the clean molecule the two networks nearly agree, and with the sampler's
steps crowded there (cubic spacing), skipping the guide at t <= min_t saves many guide calls.

Equivariance survives: each term is an O(3)-equivariant (in distribution) function of z_t drawn
with its own frames, and a fixed linear combination of independent equivariant draws is
equivariant in distribution too; translations and permutations likewise.
"""

from __future__ import annotations

import torch
from torch import nn


class AutoGuidedDenoiser(nn.Module):
    """eps = eps_guide + weight * (eps_main - eps_guide) for molecules at timesteps
    min_t < t <= max_t, the main network's eps outside; the guide is called only if weight != 1
    and some molecule's t lies in that interval.

    Takes and returns what `SymmetrisedDenoiser` does; extra keyword arguments (a generator,
    coupled frame draws) go to both networks. `max_t` None: no upper end; `min_t` None: no lower
    end (every timestep down to 0 is guided).
    """

    def __init__(self, main: nn.Module, guide: nn.Module | None, weight: float, max_t: int | None = None,
                 min_t: int | None = None):
        super().__init__()
        if weight != 1.0 and guide is None:
            raise ValueError("a guidance weight other than 1 needs a guide model")
        self.main = main
        self.guide = guide
        self.weight = float(weight)
        self.max_t = None if max_t is None else int(max_t)
        self.min_t = None if min_t is None else int(min_t)

    def forward(self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        eps_x, eps_h = self.main(x, h, t, mask, **kwargs)
        if self.guide is None or self.weight == 1.0:
            return eps_x, eps_h
        guided = self._guided_rows(t)
        if guided is not None and not bool(guided.any()):
            return eps_x, eps_h
        guide_x, guide_h = self.guide(x, h, t, mask, **kwargs)
        # lerp(a, b, w) = a + w (b - a): one fused kernel per output.
        out_x, out_h = torch.lerp(guide_x, eps_x, self.weight), torch.lerp(guide_h, eps_h, self.weight)
        if guided is not None and not bool(guided.all()):  # a batch of mixed timesteps (not the sampler's)
            rows = guided.view(-1, 1, 1)
            out_x, out_h = torch.where(rows, out_x, eps_x), torch.where(rows, out_h, eps_h)
        return out_x, out_h

    def _guided_rows(self, t: torch.Tensor) -> torch.Tensor | None:
        """(B,) bool: the molecules whose timestep is in the guided interval; None: all of them."""
        guided = None if self.max_t is None else t <= self.max_t
        if self.min_t is not None:
            above = t > self.min_t
            guided = above if guided is None else guided & above
        return guided


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


class ConditionGuidedDenoiser(nn.Module):
    """Guidance on a property condition (classifier-free guidance, Ho & Salimans 2022):
    eps = eps(z, t) + scale (eps(z, t | c) - eps(z, t)), where eps(z, t) is the same conditional
    network with its condition left out (`drop_condition`: the embedding adds nothing, the function
    of the unconditional release the model was grown from, and what --condition-dropout trains).
    scale 1 is the conditional network alone; above 1 each step calls it twice. A fixed linear
    combination of equivariant draws, so equivariant in distribution like autoguidance.
    """

    def __init__(self, inner: nn.Module, scale: float):
        super().__init__()
        self.inner = inner
        self.scale = float(scale)

    def forward(self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        cond_x, cond_h = self.inner(x, h, t, mask, **kwargs)
        if self.scale == 1.0:
            return cond_x, cond_h
        dropped = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        null_x, null_h = self.inner(x, h, t, mask, **kwargs, drop_condition=dropped)
        return torch.lerp(null_x, cond_x, self.scale), torch.lerp(null_h, cond_h, self.scale)


def mean_of(denoisers: list[nn.Module]) -> nn.Module:
    """One denoiser as it is, several as their `MeanDenoiser`."""
    return denoisers[0] if len(denoisers) == 1 else MeanDenoiser(denoisers)
