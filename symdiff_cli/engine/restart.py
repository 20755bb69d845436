"""Restart sampling for radicals: the sampler setting that runs chains heading for an odd
electron count through the middle of the chain again.

Most unstable samples of the shipped QM9 model have a composition no geometry can make stable:
an odd number of electrons (docs/quality.md). The atom types are settled along the chain, before
the bond lengths are, so the chain can tell such a molecule from its own clean estimate late in
sampling. Those molecules are noised back to a middle timestep and sampled again from there
(Restart sampling, Xu et al. 2023, "Restart sampling for improving generative processes", with
the restart triggered per molecule by the check). Every molecule still comes out of the network's
own reverse chain; none is dropped, edited or relaxed afterwards. A release states the setting in
config.json `sampling.restart`; older symdiff versions read past it and sample without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from symdiff_cli.chem.elements import SYMBOL_TO_Z
from symdiff_cli.model.diffusion import RestartRule

RESTART_KEY = "restart"
# The only check so far: a neutral molecule with an odd sum of atomic numbers is a radical.
ODD_ELECTRONS = "odd_electrons"


@dataclass(frozen=True)
class RestartSettings:
    """rounds: how many times a molecule may be restarted (0: off); check_t: the check runs when
    the chain first reaches a timestep <= check_t; restart_t: the timestep it is noised back to.

    The defaults were chosen on the shipped QM9 model (docs/quality.md): at t <= 50 the types are
    all but final, and from t = 400 the chain can still change its skeleton.
    """

    rounds: int = 0
    check_t: int = 50
    restart_t: int = 400

    @classmethod
    def off_for(cls, timesteps: int) -> RestartSettings:
        """Off, with the default timesteps scaled to a model of `timesteps` diffusion steps (50 and
        400 of 1000), so that turning it on from the command line fits any model."""
        return cls(rounds=0, check_t=round(timesteps * 0.05), restart_t=max(1, round(timesteps * 0.4)))

    @property
    def enabled(self) -> bool:
        return self.rounds > 0

    def to_dict(self) -> dict[str, Any]:
        return {"check": ODD_ELECTRONS, "rounds": self.rounds, "check_t": self.check_t, "restart_t": self.restart_t}

    @classmethod
    def from_dict(cls, raw: Any, timesteps: int) -> RestartSettings:
        """Settings from config.json `sampling.restart`; ValueError says what is wrong."""
        if not isinstance(raw, dict):
            raise ValueError("it must be an object")
        if raw.get("check", ODD_ELECTRONS) != ODD_ELECTRONS:
            raise ValueError(f"check must be {ODD_ELECTRONS!r}, not {raw.get('check')!r}")
        unknown = set(raw) - {"check", "rounds", "check_t", "restart_t"}
        if unknown:
            raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
        defaults = cls()
        values = {key: raw.get(key, getattr(defaults, key)) for key in ("rounds", "check_t", "restart_t")}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be an integer >= 0, not {value!r}")
        settings = cls(**values)
        settings.check_against(timesteps)
        return settings

    def check_against(self, timesteps: int) -> None:
        """ValueError unless the timesteps fit a model of `timesteps` diffusion steps."""
        if not 0 <= self.check_t < self.restart_t <= timesteps:
            raise ValueError(f"need 0 <= check_t < restart_t <= {timesteps}, not check_t {self.check_t} "
                             f"and restart_t {self.restart_t}")


def odd_electron_check(atom_types: Sequence[str]) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None],
                                                              torch.Tensor]:
    """reject(x0_hat, h0_hat, mask) -> (B,) bool: the molecules whose atom types, read as `decode`
    reads them (argmax of the one-hot part), sum to an odd number of electrons. Invariant: it
    reads the types alone, never the positions."""
    atomic_numbers = torch.tensor([SYMBOL_TO_Z[symbol] for symbol in atom_types])

    def reject(x0: torch.Tensor, h0: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        types = h0[..., : len(atomic_numbers)].argmax(dim=-1)
        electrons = atomic_numbers.to(types.device)[types]
        if mask is not None:
            electrons = electrons * mask.long()
        return electrons.sum(dim=-1) % 2 == 1

    return reject


def restart_rule(settings: RestartSettings, atom_types: Sequence[str]) -> RestartRule | None:
    """The diffusion sampler's rule for `settings` (None when off)."""
    if not settings.enabled:
        return None
    return RestartRule(odd_electron_check(atom_types), settings.rounds, settings.check_t, settings.restart_t)
