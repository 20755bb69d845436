"""Screen autoguidance variants on a release: a weight per channel and a noise interval.

The default sampler extrapolates both outputs of the main network away from the guide with one
weight w at every step. Two published refinements are screened here:

- a separate weight for the atom-type channels (`--type-weight`) and the positions
  (`--position-weight`): composition failures (wrong atom types) dominate the default's
  unstable molecules (docs/quality.md), so the type channels may want a different push than
  bond lengths;
- Langevin corrector steps (Song et al. 2021, predictor-corrector sampling) after the
  ancestral steps whose target timestep lies in [--corrector-t-min, --corrector-t-max]: the
  types are decided between t = 400 and t = 100, so extra score steps there may settle them
  better at a known cost in network calls;
- guidance in a limited noise interval (Kynkaanniemi et al. 2024, "Applying guidance in a
  limited interval improves sample and distribution quality"): only for timesteps in
  [--t-min, --t-max]; outside it the main network alone (the guide is not called, which also
  saves time).

Two changes of the sampler itself are screened too:

- `--solver sde-dpm2m` or `dpm2m`: DPM-Solver++(2M) (Lu et al. 2022), a second-order multistep
  solver, stochastic or deterministic, in place of the ancestral sampler;
- `--restart-rounds N`: restart sampling of radicals (engine/restart.py; `symdiff generate
  --restart-rounds`), with the check at `--restart-t-low` and the restart point `--restart-t-high`;
  a second line counts the molecules checked and rejected.

Samples `--n` molecules the way `symdiff generate` plans them (seed, atom counts, batches) and
prints one JSON line: stability, validity, the composition/geometry split and the time.

    python benchmarks/guidance_screen.py --n 500 --seed 0                        # the default
    python benchmarks/guidance_screen.py --n 500 --seed 0 --type-weight 8
    python benchmarks/guidance_screen.py --n 500 --seed 0 --t-min 50 --t-max 700
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch
from torch import nn

from symdiff_cli.engine.denoiser import autoguided_denoiser
from symdiff_cli.engine.restart import RestartSettings, restart_rule
from symdiff_cli.engine.release import load_release
from symdiff_cli.engine.sampling import Sampler
from symdiff_cli.model.diffusion import VPDiffusion
from symdiff_cli.model.geometry import remove_mean, sample_com_free_noise

from screen_run import run_screen  # benchmarks/, beside this script


class ChannelIntervalGuidance(nn.Module):
    """eps = eps_guide + w (eps_main - eps_guide) with w per channel, inside a timestep interval.

    Equivariance in distribution holds as for the plain autoguided denoiser: positions and
    features are each a fixed linear combination of two independent equivariant draws, and the
    choice of weights depends on the timestep alone.
    """

    def __init__(self, main: nn.Module, guide: nn.Module, position_weight: float, type_weight: float,
                 t_min: int, t_max: int):
        super().__init__()
        self.main, self.guide = main, guide
        self.position_weight, self.type_weight = float(position_weight), float(type_weight)
        self.t_min, self.t_max = int(t_min), int(t_max)

    def forward(self, x, h, t, mask=None, **kwargs):
        eps_x, eps_h = self.main(x, h, t, mask, **kwargs)
        step = int(t[0])
        if not self.t_min <= step <= self.t_max:
            return eps_x, eps_h
        guide_x, guide_h = self.guide(x, h, t, mask, **kwargs)
        return torch.lerp(guide_x, eps_x, self.position_weight), torch.lerp(guide_h, eps_h, self.type_weight)


class LangevinCorrected(VPDiffusion):
    """Ancestral steps followed by `steps` Langevin steps at the new noise level when it lies in
    [t_min, t_max]. Step size from the signal-to-noise ratio r of Song et al. (2021, Algorithm 5):
    delta = 2 alpha_s (r |noise| / |score|)^2 per molecule, the score being -eps / sigma_s."""

    def __init__(self, base: VPDiffusion, steps: int, t_min: int, t_max: int, snr: float):
        super().__init__(base.schedule)
        self.corrector_steps, self.t_min, self.t_max, self.snr = steps, t_min, t_max, snr

    def ancestral_step(self, denoiser, x_t, h_t, t, s, mask, generator=None):
        x, h = super().ancestral_step(denoiser, x_t, h_t, t, s, mask, generator)
        if s == 0 or not self.t_min <= s <= self.t_max:
            return x, h
        gamma_s = self.schedule.gamma_table[s]
        alpha_s, sigma_s = self.schedule.alpha(gamma_s), self.schedule.sigma(gamma_s)
        s_vec = torch.full((x.shape[0],), s, dtype=torch.long)
        for _ in range(self.corrector_steps):
            eps_x, eps_h = denoiser(x, h, s_vec, mask, generator=generator)
            noise_x = sample_com_free_noise(x.shape, mask, generator, x.device, x.dtype)
            noise_h = torch.randn(h.shape, generator=generator, dtype=h.dtype)
            score_norm = torch.sqrt((eps_x ** 2).sum((1, 2)) + (eps_h ** 2).sum((1, 2))) / sigma_s
            noise_norm = torch.sqrt((noise_x ** 2).sum((1, 2)) + (noise_h ** 2).sum((1, 2)))
            delta = (2 * alpha_s * (self.snr * noise_norm / score_norm) ** 2).view(-1, 1, 1)
            x = remove_mean(x - delta * eps_x / sigma_s + torch.sqrt(2 * delta) * noise_x, mask)
            h = h - delta * eps_h / sigma_s + torch.sqrt(2 * delta) * noise_h
        return x, h


class MultistepSolver(VPDiffusion):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++") in place of the ancestral sampler, in
    data-prediction form over lambda = log(alpha / sigma) = -gamma / 2; `stochastic` takes the
    SDE variant of the same paper, whose first-order form is exactly the ancestral step."""

    def __init__(self, base: VPDiffusion, stochastic: bool):
        super().__init__(base.schedule)
        self.stochastic = stochastic

    def multistep_step(
        self, denoiser: Denoiser, x_t: torch.Tensor, h_t: torch.Tensor, t: int, s: int,
        mask: torch.Tensor | None, generator: torch.Generator | None, previous: tuple | None,
        stochastic: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """One step t -> s of DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++"), in data
        prediction form over lambda = log(alpha / sigma) = -gamma / 2.

        The clean estimate m0 at t is extrapolated with the previous step's estimate m1 (at the
        timestep before t): D = m0 + (m0 - m1) / (2 r), r = h_prev / h. `stochastic` takes the
        SDE variant (SDE-DPM-Solver++(2M), same paper): its first-order form is exactly
        `ancestral_step`, so with stochastic=True the only change against the default chain is
        the second-order correction. Returns (x_s, h_s) and the state the next step reads.
        """
        b = x_t.shape[0]
        t_vec = torch.full((b,), t, device=x_t.device, dtype=torch.long)
        gamma_t, gamma_s = self.schedule.gamma_table[t], self.schedule.gamma_table[s]
        alpha_s, sigma_t, sigma_s = self.schedule.alpha(gamma_s), self.schedule.sigma(gamma_t), self.schedule.sigma(gamma_s)
        lam_t, lam_s = -0.5 * gamma_t, -0.5 * gamma_s
        step = lam_s - lam_t
        eps_x, eps_h = denoiser(x_t, h_t, t_vec, mask, generator=generator)
        m0 = self.clean_estimate(x_t, h_t, t_vec, eps_x, eps_h, mask)
        d_x, d_h = m0
        if previous is not None:
            (m1_x, m1_h), step_prev = previous
            half_over_r = 0.5 * step / step_prev
            d_x = m0[0] + half_over_r * (m0[0] - m1_x)
            d_h = m0[1] + half_over_r * (m0[1] - m1_h)
        if stochastic:
            decay = torch.exp(-step)
            keep = 1.0 - decay ** 2
            noise_x = sample_com_free_noise(x_t.shape, mask, generator, x_t.device, x_t.dtype)
            noise_h = torch.randn(h_t.shape, generator=generator, device=x_t.device, dtype=h_t.dtype)
            std = sigma_s * torch.sqrt(keep)
            x_s = (sigma_s / sigma_t) * decay * x_t + alpha_s * keep * d_x + std * noise_x
            h_s = (sigma_s / sigma_t) * decay * h_t + alpha_s * keep * d_h + std * noise_h
        else:
            keep = -torch.expm1(-step)
            x_s = (sigma_s / sigma_t) * x_t + alpha_s * keep * d_x
            h_s = (sigma_s / sigma_t) * h_t + alpha_s * keep * d_h
        x_s = remove_mean(x_s, mask)
        if mask is not None:
            h_s = h_s * mask.unsqueeze(-1)
        return x_s.to(x_t.dtype), h_s.to(h_t.dtype), (m0, step)


    @torch.no_grad()
    def sample(self, denoiser, batch_size, num_atoms, feature_dim, steps, generator=None, device="cpu",
               mask=None, progress=None, spacing="cubic", self_condition=False, restart=None, row_kwargs=None):
        if restart is not None or self_condition or row_kwargs:
            raise ValueError("the multistep screen takes no restart, self-conditioning or condition")
        x = sample_com_free_noise((batch_size, num_atoms, 3), mask, generator, device)
        h = torch.randn(batch_size, num_atoms, feature_dim, generator=generator, device=device)
        if mask is not None:
            h = h * mask.unsqueeze(-1)
        previous = None
        ts = self.sampling_timesteps(steps, spacing)
        for t, s in zip(ts[:-1], ts[1:]):
            x, h, previous = self.multistep_step(denoiser, x, h, t, s, mask, generator, previous, self.stochastic)
            if progress is not None:
                progress()
        return self.final_estimate(denoiser, x, h, mask, generator)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="release (default: the shipped qm9)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="default: the release's CPU default")
    ap.add_argument("--position-weight", type=float, default=None, help="default: the release's weight")
    ap.add_argument("--type-weight", type=float, default=None, help="default: the release's weight")
    ap.add_argument("--t-min", type=int, default=0, help="lowest timestep (of 1000) that is guided")
    ap.add_argument("--t-max", type=int, default=None,
                    help="highest timestep (of 1000) that is guided (default: the release's own, else every step)")
    ap.add_argument("--corrector-steps", type=int, default=0, help="Langevin steps after each step in range")
    ap.add_argument("--corrector-t-min", type=int, default=100)
    ap.add_argument("--corrector-t-max", type=int, default=400)
    ap.add_argument("--corrector-snr", type=float, default=0.1)
    ap.add_argument("--solver", default="ancestral", choices=("ancestral", "sde-dpm2m", "dpm2m"),
                    help="reverse-chain solver (model/diffusion.py)")
    ap.add_argument("--restart-rounds", type=int, default=0,
                    help="restart chains whose clean estimate has an odd electron count, up to this many times")
    ap.add_argument("--restart-t-low", type=int, default=50, help="the check's timestep (engine/restart.py)")
    ap.add_argument("--restart-t-high", type=int, default=400, help="the timestep restarts go back to")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the molecules (SDF)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    release = load_release(args.model, torch.device("cpu"), show_progress=False)
    guided, weight = autoguided_denoiser(release, None, None, show_progress=False)
    position_weight = weight if args.position_weight is None else args.position_weight
    type_weight = weight if args.type_weight is None else args.type_weight
    if args.t_max is None:  # the release's own interval (sampling.guidance_max_t), else every step
        args.t_max = guided.max_t if guided.max_t is not None else release.cfg.timesteps
    denoiser = ChannelIntervalGuidance(guided.main, guided.guide, position_weight, type_weight,
                                       args.t_min, args.t_max)
    sampler = Sampler(denoiser, release.cfg)
    if args.solver != "ancestral":
        sampler.diffusion = MultistepSolver(sampler.diffusion, stochastic=args.solver == "sde-dpm2m")
    if args.corrector_steps:
        sampler.diffusion = LangevinCorrected(sampler.diffusion, args.corrector_steps, args.corrector_t_min,
                                              args.corrector_t_max, args.corrector_snr)
    counts = {"checked": 0, "rejected": 0}
    if args.restart_rounds:
        settings = RestartSettings(args.restart_rounds, args.restart_t_low, args.restart_t_high)
        rule = restart_rule(settings, release.cfg.atom_types)

        def counted(x0, h0, mask):
            rejected = rule.reject(x0, h0, mask)
            counts["checked"] += len(rejected)
            counts["rejected"] += int(rejected.sum())
            return rejected

        sampler.restart = replace(rule, reject=counted)
    run_screen(sampler, release, args.n, args.seed, args.steps, args.out,
               {**vars(args), "position_weight": position_weight, "type_weight": type_weight})
    if args.restart_rounds:  # checks of whole batches and of restarted ones, and how many each rejected
        print(json.dumps(counts))

if __name__ == "__main__":
    main()
