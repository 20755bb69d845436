"""From a trained denoiser to molecules: plan atom counts, sample in size-grouped batches, decode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from symdiff_cli.chem.elements import SYMBOL_TO_Z
from symdiff_cli.engine.restart import restart_rule
from symdiff_cli.engine.sample_config import SampleConfig
from symdiff_cli.io.molecule import Molecule
from symdiff_cli.model.config import DEFAULT_SPACING, ModelConfig
from symdiff_cli.model.diffusion import NoiseSchedule, RestartRule, VPDiffusion
from symdiff_cli.model.dit import uses_self_condition


def draw_atom_counts(histogram: dict[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """n atom counts drawn from a histogram {num_atoms: frequency}."""
    sizes = np.array(sorted(histogram), dtype=np.int64)
    freq = np.array([histogram[s] for s in sizes], dtype=np.float64)
    return rng.choice(sizes, size=n, p=freq / freq.sum())


@dataclass
class SamplePlan:
    """Which molecules are sampled in which batch: (atom count, batch size, seed) per batch."""

    batches: list[tuple[int, int, int]]

    @property
    def total(self) -> int:
        return sum(b for _, b, _ in self.batches)


def plan_batches(atom_counts: Sequence[int], batch_size: int, seed: int) -> SamplePlan:
    """Group requested atom counts into batches of equal size; each batch gets its own seed so
    any batch can be reproduced on its own (interrupted runs, shards)."""
    counts = np.asarray(atom_counts, dtype=np.int64)
    batches = []
    # np.unique: sorted sizes and their counts without a Python object per molecule.
    for n, k in zip(*np.unique(counts, return_counts=True)):
        n, k = int(n), int(k)
        for start in range(0, k, batch_size):
            batches.append((n, min(batch_size, k - start)))
    seeds = np.random.SeedSequence(seed).generate_state(len(batches), dtype=np.uint64) if batches else []
    return SamplePlan([(n, b, int(s) & 0x7FFFFFFFFFFFFFFF) for (n, b), s in zip(batches, seeds)])


def decode(x: torch.Tensor, h: torch.Tensor, cfg: ModelConfig) -> list[Molecule]:
    """Model units to molecules: atom type = argmax of the one-hot part, positions in Angstrom."""
    types = h[..., : cfg.num_atom_types].argmax(dim=-1).cpu().numpy()
    z_lookup = np.array([SYMBOL_TO_Z[s] for s in cfg.atom_types])
    pos = x.double().cpu().numpy()
    return [Molecule(z_lookup[types[i]], pos[i]) for i in range(x.shape[0])]


# A conditional model's requested values for a batch: (atom count, batch size, the batch's seed)
# -> (batch size, K) raw property values, in the order of cfg.conditions (engine/conditions.py).
ConditionSource = Callable[[int, int, int], np.ndarray]


def condition_tag(name: str) -> str:
    """The SDF property that records the value of `name` a molecule was generated for."""
    return f"symdiff_condition_{name}"


class Sampler:
    """Runs the reverse diffusion of a SymmetrisedDenoiser batch by batch.

    A conditional model (cfg.conditions) needs `condition_source`, which gives each batch its
    requested property values; each molecule carries its values as condition_tag(name) props.
    """

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, device: torch.device | str = "cpu",
                 autocast_bf16: bool = False, spacing: str = DEFAULT_SPACING,
                 condition_source: ConditionSource | None = None, restart: RestartRule | None = None):
        self.model = model.eval()
        self.cfg = cfg
        self.device = torch.device(device)
        self.diffusion = VPDiffusion(NoiseSchedule(cfg.timesteps, cfg.noise_precision))
        self.autocast_bf16 = autocast_bf16
        self.spacing = spacing
        self.restart = restart
        self.self_condition = uses_self_condition(model)
        if cfg.conditions and condition_source is None:
            raise ValueError(f"a model conditioned on {', '.join(cfg.conditions)} needs a condition source")
        self.condition_source = condition_source if cfg.conditions else None

    @classmethod
    def from_config(cls, model: torch.nn.Module, cfg: ModelConfig, device: torch.device | str,
                    sample_config: SampleConfig, condition_source: ConditionSource | None = None) -> Sampler:
        """A sampler of `model` at the precision, step spacing and restart sampling of
        `sample_config`; the network passed in already carries its guidance (engine/denoiser.py)."""
        return cls(model, cfg, device, autocast_bf16=sample_config.autocast_bf16, spacing=sample_config.spacing,
                   condition_source=condition_source, restart=restart_rule(sample_config.restart, cfg.atom_types))

    def _denoise(self, x, h, t, mask, generator=None, **kwargs):
        # Only the network runs in bf16; the ancestral update stays in float32, so rounding
        # errors enter as a small perturbation of eps rather than accumulating in positions.
        if not self.autocast_bf16:
            return self.model(x, h, t, mask, generator=generator, **kwargs)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            eps_x, eps_h = self.model(x, h, t, mask, generator=generator, **kwargs)
        return eps_x.float(), eps_h.float()

    @torch.inference_mode()
    def sample_batch(self, num_atoms: int, batch_size: int, steps: int, seed: int,
                     on_step: Callable[[], None] | None = None) -> list[Molecule]:
        generator = torch.Generator(device=self.device).manual_seed(seed)
        values, row_kwargs = None, {}
        if self.condition_source is not None:
            values = np.asarray(self.condition_source(num_atoms, batch_size, seed), dtype=np.float64)
            row_kwargs["condition"] = torch.from_numpy(values).float().to(self.device)
        x, h = self.diffusion.sample(
            self._denoise, batch_size, num_atoms, self.cfg.feature_dim, steps,
            generator=generator, device=self.device, progress=on_step, spacing=self.spacing,
            self_condition=self.self_condition, restart=self.restart, row_kwargs=row_kwargs,
        )
        mols = decode(x, h, self.cfg)
        if values is not None:
            for mol, row in zip(mols, values):
                for name, value in zip(self.cfg.conditions, row):
                    mol.props[condition_tag(name)] = f"{value:.6g}"
        return mols

    def sample(self, plan: SamplePlan | Iterable[tuple[int, int, int]], steps: int,
               on_step: Callable[[int], None] | None = None) -> Iterator[list[Molecule]]:
        """Yield the molecules of each planned batch as it finishes.

        `plan` is a SamplePlan or any iterable of (atom count, batch size, seed), which may be
        a generator that plans as it goes. on_step(k) is called after every denoising step with
        the number of molecules it advanced.
        """
        batches = plan.batches if isinstance(plan, SamplePlan) else plan
        for n, b, seed in batches:
            callback = (lambda b=b: on_step(b)) if on_step is not None else None
            yield self.sample_batch(n, b, steps, seed, callback)
