"""Guidance distillation: the teacher a `symdiff train --distill RELEASE` run learns from.

Meng et al. 2023 ("On distillation of guided diffusion models", stage one) train a student to
predict a guided model's output directly, so that one network call per step samples what the
guided sampler does with several. Here the teacher is a release's own default sampler: its main
network autoguided by its guides at its weight on its guided interval (model/guidance.py), and
the student starts as that release's main network. Above the guided interval the teacher is the
main network alone, which the student already is; the distillation loss
(VPDiffusion.distillation_loss) therefore draws most timesteps inside the interval.

The student is an ordinary SymmetrisedDenoiser, so it is equivariant in distribution like any
release, and its export is an ordinary release without a guide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from symdiff_cli.errors import SymdiffError

# The share of a distillation batch whose timesteps are drawn inside the teacher's guided
# interval; the rest are uniform over the whole chain, so that the student keeps matching the
# main network above the interval, where sampling starts.
GUIDED_INTERVAL_SHARE = 0.8


@dataclass
class Teacher:
    """A guided sampler to distil: its network (eval mode, frozen), the noisiest timestep it
    guides (None: all) and the description a distilled release records."""

    denoiser: torch.nn.Module
    guided_max_t: int | None
    description: dict[str, Any]


def load_teacher(spec: str, device: torch.device) -> Teacher:
    """The default sampler of the release `spec` (a name, directory or Hub id) as a teacher; a
    release without a guide, a conditional or a self-conditioned one is refused in one line."""
    from symdiff_cli.engine.denoiser import autoguided_denoiser
    from symdiff_cli.engine.release import load_release
    from symdiff_cli.engine.release_config import guided_interval_max_t
    from symdiff_cli.engine.release_layout import guide_entries

    release = load_release(spec, device=device, show_progress=False)
    if not release.ships_guide or release.guidance_weight == 1.0:
        raise SymdiffError(f"--distill {spec}: the release samples without guidance, so there is nothing to "
                           "distil (distillation learns a guided sampler's output in one network)")
    if release.cfg.conditions or release.cfg.self_condition:
        raise SymdiffError(f"--distill {spec}: distilling a conditional or self-conditioned release is not "
                           "supported")
    denoiser, weight = autoguided_denoiser(release, None, None, show_progress=False)
    denoiser.eval()
    for p in denoiser.parameters():
        p.requires_grad_(False)
    max_t = guided_interval_max_t(None, release.config, release.cfg.timesteps)
    guides = [entry.get("provenance", {}).get("release", entry.get("weights_file"))
              for entry in guide_entries(release.config)]
    description = {"release": str(spec), "weight": weight, "guidance_max_t": max_t, "guides": guides}
    return Teacher(denoiser, max_t, description)


__all__ = ["GUIDED_INTERVAL_SHARE", "Teacher", "load_teacher"]
