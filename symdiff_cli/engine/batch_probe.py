"""The largest training batch that fits in a GPU's memory, found by trying."""

from __future__ import annotations

import torch

from symdiff_cli.model.config import ModelConfig
from symdiff_cli.model.diffusion import Batch, NoiseSchedule, VPDiffusion
from symdiff_cli.model.dit import SymmetrisedDenoiser


def largest_fitting_batch(model_cfg: ModelConfig, device: torch.device, cap: int = 2048, start: int = 64) -> int:
    """The largest power-of-two batch (<= cap) of max-size molecules whose training step fits in memory.

    On CPU memory is rarely the limit and big batches only slow learning per second: returns start.
    """
    if device.type != "cuda":
        return start
    model = SymmetrisedDenoiser(model_cfg).to(device)
    diffusion = VPDiffusion(NoiseSchedule(model_cfg.timesteps, model_cfg.noise_precision))
    best, b = start, start
    while b <= cap:
        try:
            x = torch.randn(b, model_cfg.max_atoms, 3, device=device)
            h = torch.randn(b, model_cfg.max_atoms, model_cfg.feature_dim, device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = diffusion.loss(model, Batch(x - x.mean(1, keepdim=True), h, None),
                                      self_condition=model_cfg.self_condition)
            loss.backward()
            model.zero_grad(set_to_none=True)
            best = b
            b *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return best
