"""From a trained denoiser to molecules: plan atom counts, sample in size-grouped batches, decode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from symdiff_cli.chem.elements import SYMBOL_TO_Z
from symdiff_cli.engine.sample_config import SampleConfig
from symdiff_cli.io.molecule import Molecule
from symdiff_cli.model.config import DEFAULT_SPACING, ModelConfig
from symdiff_cli.model.diffusion import NoiseSchedule, VPDiffusion
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


class Sampler:
    """Runs the reverse diffusion of a SymmetrisedDenoiser batch by batch."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, device: torch.device | str = "cpu",
                 autocast_bf16: bool = False, spacing: str = DEFAULT_SPACING):
        self.model = model.eval()
        self.cfg = cfg
        self.device = torch.device(device)
        self.diffusion = VPDiffusion(NoiseSchedule(cfg.timesteps, cfg.noise_precision))
        self.autocast_bf16 = autocast_bf16
        self.spacing = spacing
        self.self_condition = uses_self_condition(model)

    @classmethod
    def from_config(cls, model: torch.nn.Module, cfg: ModelConfig, device: torch.device | str,
                    sample_config: SampleConfig) -> Sampler:
        """A sampler of `model` at the precision and step spacing of `sample_config`; the network
        passed in already carries its guidance (engine/denoiser.py)."""
        return cls(model, cfg, device, autocast_bf16=sample_config.autocast_bf16, spacing=sample_config.spacing)

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
        x, h = self.diffusion.sample(
            self._denoise, batch_size, num_atoms, self.cfg.feature_dim, steps,
            generator=generator, device=self.device, progress=on_step, spacing=self.spacing,
            self_condition=self.self_condition,
        )
        return decode(x, h, self.cfg)

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
