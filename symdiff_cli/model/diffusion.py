"""Variance-preserving diffusion in discrete time (EDM's formulation, Hoogeboom et al. 2022).

z_t = alpha_t (x, h) + sigma_t eps with alpha_t^2 + sigma_t^2 = 1, tabulated through
gamma_t = -log(alpha_t^2 / sigma_t^2) for t = 0..T. The networks live elsewhere: this module
only needs a callable `denoiser(x, h, t, mask) -> (eps_x, eps_h)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from symdiff_cli.model.config import DEFAULT_SPACING, SPACING_CHOICES, SPACING_POWERS
from symdiff_cli.model.geometry import remove_mean, sample_com_free_noise

Denoiser = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def polynomial_2_alphas2(timesteps: int, precision: float = 1e-5, clip_value: float = 1e-3) -> np.ndarray:
    """alpha_t^2 for t = 0..T of the polynomial_2 schedule (Hoogeboom et al. 2022).

    (1 - (t/T)^2)^2, with each step ratio alpha_t^2 / alpha_{t-1}^2 clipped to >= clip_value so
    the last steps do not destroy all signal at once, then squeezed into [s, 1 - s].
    """
    t = np.arange(timesteps + 1, dtype=np.float64)
    alphas2 = (1.0 - (t / timesteps) ** 2) ** 2
    padded = np.concatenate([[1.0], alphas2])
    step_ratios = np.clip(padded[1:] / padded[:-1], clip_value, 1.0)
    alphas2 = np.cumprod(step_ratios)
    return (1.0 - 2.0 * precision) * alphas2 + precision


class NoiseSchedule:
    """Lookup of gamma_t, alpha_t, sigma_t for integer timesteps on any device."""

    def __init__(self, timesteps: int = 1000, precision: float = 1e-5):
        self.timesteps = timesteps
        alphas2 = polynomial_2_alphas2(timesteps, precision)
        sigmas2 = 1.0 - alphas2
        self.gamma_table = torch.from_numpy(-(np.log(alphas2) - np.log(sigmas2))).float()
        self._tables: dict[torch.device, torch.Tensor] = {self.gamma_table.device: self.gamma_table}

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        # One copy of the table per device, kept: a copy from pageable host memory on every call
        # would block the host until the GPU caught up, once per training step.
        table = self._tables.get(t.device)
        if table is None:
            table = self._tables[t.device] = self.gamma_table.to(t.device)
        return table[t.long()]

    @staticmethod
    def alpha(gamma: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.sigmoid(-gamma))

    @staticmethod
    def sigma(gamma: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.sigmoid(gamma))


@dataclass
class Batch:
    """A padded batch in model units: positions (B, N, 3), features (B, N, F), mask (B, N) or None,
    and for a conditional model the raw property values (B, K)."""

    x: torch.Tensor
    h: torch.Tensor
    mask: torch.Tensor | None
    condition: torch.Tensor | None = None


def _expand(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1)


@dataclass(frozen=True)
class RestartRule:
    """Restart sampling (Xu et al. 2023, "Restart sampling for improving generative processes")
    for the chains a check rejects.

    When the chain first steps to a timestep <= `check_t`, `reject(x0_hat, h0_hat, mask)` marks
    the molecules whose latest clean estimate (from the last network call) fails; those are noised
    forward to the grid timestep nearest `restart_t` and run down the grid again to where they were,
    then checked again, at most `rounds` times. Molecules that pass are not touched, and a check
    that rejects none leaves the chain exactly as without the rule. The check must be invariant
    (read the atom types, not the frame) for sampling to stay equivariant in distribution.
    """

    reject: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    rounds: int
    check_t: int
    restart_t: int


class EstimateTracker:
    """A denoiser that remembers the clean estimate of its latest call (`estimate`) and, with
    `feed`, hands the previous one back to the network as `self_cond` (self-conditioning).

    One object per sampling chain: the estimate of step t is read at the next step.
    """

    def __init__(self, denoiser: Denoiser, diffusion: "VPDiffusion", feed: bool):
        self.denoiser = denoiser
        self.diffusion = diffusion
        self.feed = feed
        self.estimate: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x, h, t, mask=None, **kwargs):
        if self.feed:
            kwargs["self_cond"] = self.estimate
        eps_x, eps_h = self.denoiser(x, h, t, mask, **kwargs)
        self.estimate = self.diffusion.clean_estimate(x, h, t, eps_x, eps_h, mask)
        return eps_x, eps_h


class SelfConditioning(EstimateTracker):
    """A denoiser that feeds its previous call's clean estimate back in as `self_cond`."""

    def __init__(self, denoiser: Denoiser, diffusion: "VPDiffusion"):
        super().__init__(denoiser, diffusion, feed=True)


def _masked_mse(pred_x: torch.Tensor, pred_h: torch.Tensor, target_x: torch.Tensor, target_h: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error per coordinate over real atoms' entries (padding excluded)."""
    sq = ((pred_x - target_x) ** 2).sum(-1) + ((pred_h - target_h) ** 2).sum(-1)  # (B, N)
    dims = target_x.shape[-1] + target_h.shape[-1]
    if mask is None:
        return sq.mean() / dims
    m = mask.to(sq.dtype)
    return (sq * m).sum() / (m.sum() * dims)


class VPDiffusion:
    """Forward noising, the l2 training loss, and ancestral sampling over any timestep subsequence."""

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule
        self.T = schedule.timesteps

    def noise(self, batch: Batch, t: torch.Tensor, generator: torch.Generator | None = None):
        """Return z_t = (x_t, h_t) and the noise (eps_x, eps_h) that produced it."""
        gamma = self.schedule.gamma(t)
        alpha, sigma = _expand(self.schedule.alpha(gamma)), _expand(self.schedule.sigma(gamma))
        eps_x = sample_com_free_noise(batch.x.shape, batch.mask, generator, batch.x.device, batch.x.dtype)
        eps_h = torch.randn(batch.h.shape, generator=generator, device=batch.h.device, dtype=batch.h.dtype)
        if batch.mask is not None:
            eps_h = eps_h * batch.mask.unsqueeze(-1)
        return alpha * batch.x + sigma * eps_x, alpha * batch.h + sigma * eps_h, eps_x, eps_h

    def training_timesteps(self, b: int, device: torch.device, generator: torch.Generator | None = None,
                           low_noise_fraction: float = 0.0, low_noise_max_t: int | None = None) -> torch.Tensor:
        """t uniform on {0..T} (the paper's), or with a share of the batch from {0..low_noise_max_t}
        (default the lowest tenth, T // 10).

        The last, low-noise steps of sampling set bond lengths to the precision that bond orders
        need; low_noise_fraction spends more of the training signal there.
        """
        t = torch.randint(0, self.T + 1, (b,), generator=generator, device=device)
        if low_noise_fraction > 0:
            top = self.T // 10 if low_noise_max_t is None else int(low_noise_max_t)
            low = torch.randint(0, top + 1, (b,), generator=generator, device=device)
            pick = torch.rand(b, generator=generator, device=device) < low_noise_fraction
            t = torch.where(pick, low, t)
        return t

    def clean_estimate(self, x_t: torch.Tensor, h_t: torch.Tensor, t: torch.Tensor, eps_x: torch.Tensor,
                       eps_h: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, h0_hat) = (z_t - sigma_t eps) / alpha_t in float32, CoM-free and masked."""
        gamma = self.schedule.gamma(t)
        alpha, sigma = _expand(self.schedule.alpha(gamma)), _expand(self.schedule.sigma(gamma))
        x0 = remove_mean((x_t.float() - sigma * eps_x.float()) / alpha, mask)
        h0 = (h_t.float() - sigma * eps_h.float()) / alpha
        if mask is not None:
            h0 = h0 * mask.unsqueeze(-1)
        return x0, h0

    def loss(self, denoiser: Denoiser, batch: Batch, generator: torch.Generator | None = None,
             low_noise_fraction: float = 0.0, self_condition: bool = False,
             condition_dropout: float = 0.0) -> torch.Tensor:
        """The "l2" objective: MSE between true and predicted noise over real atoms' entries.

        With `self_condition` (a model with cfg.self_condition), half the batches, by a coin
        drawn from `generator` (the global CPU generator when None), first run the denoiser
        without gradients and without an estimate, and the loss is taken on a second pass that
        reads that pass's clean estimate; the other half read zeros (no estimate), as the first
        sampling step does. A DDP wrapper's first pass runs on its module: no collective, so
        ranks whose coins differ stay in step.

        A conditional batch (`batch.condition`) passes its values to the denoiser; with
        `condition_dropout` each molecule's condition is left out (drop_condition) with that chance.
        """
        b = batch.x.shape[0]
        t = self.training_timesteps(b, batch.x.device, generator, low_noise_fraction)
        x_t, h_t, eps_x, eps_h = self.noise(batch, t, generator)
        # Only a conditional model is given the keyword, so any denoiser without it keeps working.
        conditioned = {} if batch.condition is None else {"condition": batch.condition}
        if batch.condition is not None and condition_dropout > 0:
            # Molecules whose condition is left out learn the prediction without it (classifier-free guidance).
            conditioned["drop_condition"] = torch.rand(b, generator=generator, device=batch.x.device) < condition_dropout
        if self_condition:
            # The coin is drawn on the generator's device: a CPU draw costs a GPU run no sync.
            coin_device = generator.device if generator is not None else torch.device("cpu")
            estimate = None
            if bool(torch.rand((), generator=generator, device=coin_device) < 0.5):
                with torch.no_grad():
                    bare = getattr(denoiser, "module", denoiser)
                    first_x, first_h = bare(x_t, h_t, t, batch.mask, generator=generator, **conditioned)
                    estimate = self.clean_estimate(x_t, h_t, t, first_x, first_h, batch.mask)
            pred_x, pred_h = denoiser(x_t, h_t, t, batch.mask, generator=generator, self_cond=estimate,
                                      **conditioned)
        else:
            pred_x, pred_h = denoiser(x_t, h_t, t, batch.mask, generator=generator, **conditioned)
        return _masked_mse(pred_x, pred_h, eps_x, eps_h, batch.mask)

    def distillation_loss(self, student: Denoiser, teacher: Denoiser, batch: Batch,
                          generator: torch.Generator | None = None, focus_max_t: int | None = None,
                          focus_share: float = 0.0) -> torch.Tensor:
        """Guidance distillation (Meng et al. 2023): MSE between the student's prediction and the
        teacher's (a guided sampler's network, called without gradients) at z_t noised from data.

        A share `focus_share` of the molecules draws t uniformly from {0..focus_max_t} (the
        teacher's guided interval, where it differs from the network the student starts as), the
        rest from {0..T}. Each network draws its own frames from `generator`.
        """
        share = focus_share if focus_max_t is not None else 0.0
        t = self.training_timesteps(batch.x.shape[0], batch.x.device, generator, share, focus_max_t)
        x_t, h_t, _, _ = self.noise(batch, t, generator)
        with torch.no_grad():
            target_x, target_h = teacher(x_t, h_t, t, batch.mask, generator=generator)
        pred_x, pred_h = student(x_t, h_t, t, batch.mask, generator=generator)
        return _masked_mse(pred_x, pred_h, target_x.to(pred_x.dtype), target_h.to(pred_h.dtype), batch.mask)

    def sampling_timesteps(self, steps: int, spacing: str = DEFAULT_SPACING) -> list[int]:
        """Decreasing timesteps T = t_0 > ... > t_S = 0, S = steps of them after T.

        Step i sits at t_i = T (1 - i/S)^p with p = SPACING_POWERS[spacing]: p = 1 ("uniform")
        spaces them evenly; p = 2 ("quadratic") is the quadratic subsequence of DDIM (Song et al.
        2021); p = 3 ("cubic") goes further the same way. The higher p, the more steps crowd where
        noise is low, which is where bond lengths are set (sigma_t is about 1.4 t/T Å near t = 0),
        and the fewer remain at high noise, where the molecule is still a cloud. With S = 100 the
        last quadratic step is 1 -> 0, not 10 -> 0.
        """
        if spacing not in SPACING_CHOICES:
            raise ValueError(f"spacing must be one of {SPACING_CHOICES}, not {spacing!r}")
        steps = max(1, min(int(steps), self.T))
        power = SPACING_POWERS[spacing]
        if power == 1:
            # T * linspace(1, 0) would round a few x.5 timesteps differently (--steps 80: 37 for 38).
            ts = np.round(np.linspace(self.T, 0, steps + 1)).astype(int)
        else:
            ts = np.round(self.T * np.linspace(1.0, 0.0, steps + 1) ** power).astype(int)
        # Rounding merges the lowest timesteps of a power grid (0, 0, 0, 1, 2, ...); lifting each to
        # one above its predecessor keeps exactly `steps` steps. With u = 1 - i/S, T u^p - S u is
        # convex in u for p >= 1 and at most T - S at both ends (u = 0, 1), so t_i - (S - i) never
        # exceeds T - S and the lift never pushes the top past T.
        ascending = ts[::-1].copy()
        for i in range(1, len(ascending)):
            ascending[i] = max(ascending[i], ascending[i - 1] + 1)
        return [int(v) for v in ascending[::-1]]

    def _transition(self, s: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_{t|s} and sigma^2_{t|s} = 1 - alpha_t^2 / alpha_s^2 of q(z_t | z_s), s < t, computed
        stably from gamma as in EDM. Per-step scalars stay on the host (0-d CPU tensors act as plain
        numbers in GPU ops), so a sampling step launches no host-to-device copy."""
        gamma_t, gamma_s = self.schedule.gamma_table[t], self.schedule.gamma_table[s]
        sigma2_t_given_s = -torch.expm1(F.softplus(gamma_s) - F.softplus(gamma_t))
        alpha_t_given_s = torch.exp(0.5 * (F.logsigmoid(-gamma_t) - F.logsigmoid(-gamma_s)))
        return alpha_t_given_s, sigma2_t_given_s

    @staticmethod
    def _noise_like(x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor | None,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard normal noise shaped as (x, h): CoM-free for positions (padding left to the caller)."""
        noise_x = sample_com_free_noise(x.shape, mask, generator, x.device, x.dtype)
        noise_h = torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)
        return noise_x, noise_h

    def ancestral_step(
        self, denoiser: Denoiser, x_t: torch.Tensor, h_t: torch.Tensor, t: int, s: int,
        mask: torch.Tensor | None, generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample z_s ~ p(z_s | z_t) for s < t (the Gaussian posterior with predicted eps)."""
        b = x_t.shape[0]
        device = x_t.device
        t_vec = torch.full((b,), t, device=device, dtype=torch.long)
        gamma_t, gamma_s = self.schedule.gamma_table[t], self.schedule.gamma_table[s]
        alpha_t_given_s, sigma2_t_given_s = self._transition(s, t)
        sigma_t = self.schedule.sigma(gamma_t)
        sigma_s = self.schedule.sigma(gamma_s)

        eps_x, eps_h = denoiser(x_t, h_t, t_vec, mask, generator=generator)
        coef = sigma2_t_given_s / alpha_t_given_s / sigma_t
        mu_x = x_t / alpha_t_given_s - coef * eps_x
        mu_h = h_t / alpha_t_given_s - coef * eps_h
        std = torch.sqrt(sigma2_t_given_s) * sigma_s / sigma_t
        noise_x, noise_h = self._noise_like(x_t, h_t, mask, generator)
        x_s = remove_mean(mu_x + std * noise_x, mask)
        h_s = mu_h + std * noise_h
        if mask is not None:
            h_s = h_s * mask.unsqueeze(-1)
        return x_s, h_s

    def final_estimate(
        self, denoiser: Denoiser, x_0: torch.Tensor, h_0: torch.Tensor, mask: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of p(x, h | z_0): undo the last bit of noise with the predicted eps."""
        b = x_0.shape[0]
        t_vec = torch.zeros(b, device=x_0.device, dtype=torch.long)
        gamma_0 = self.schedule.gamma_table[0]
        alpha_0, sigma_0 = self.schedule.alpha(gamma_0), self.schedule.sigma(gamma_0)
        eps_x, eps_h = denoiser(x_0, h_0, t_vec, mask, generator=generator)
        x = remove_mean((x_0 - sigma_0 * eps_x) / alpha_0, mask)
        h = (h_0 - sigma_0 * eps_h) / alpha_0
        return x, h

    def renoise(self, x_s: torch.Tensor, h_s: torch.Tensor, s: int, t: int, mask: torch.Tensor | None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample z_t ~ q(z_t | z_s) for t > s: the forward process from s up to t."""
        alpha_t_given_s, sigma2_t_given_s = self._transition(s, t)
        sigma_t_given_s = torch.sqrt(sigma2_t_given_s)
        noise_x, noise_h = self._noise_like(x_s, h_s, mask, generator)
        x_t = remove_mean(alpha_t_given_s * x_s + sigma_t_given_s * noise_x, mask)
        h_t = alpha_t_given_s * h_s + sigma_t_given_s * noise_h
        if mask is not None:
            h_t = h_t * mask.unsqueeze(-1)
        return x_t, h_t

    def _restart(self, denoiser: Denoiser, tracker: EstimateTracker, rule: RestartRule, x: torch.Tensor,
                 h: torch.Tensor, ts: list[int], here: int, mask: torch.Tensor | None,
                 generator: torch.Generator | None, row_kwargs: dict[str, torch.Tensor],
                 self_condition: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the rejected molecules of z_{ts[here]} again from the grid timestep nearest
        rule.restart_t, up to rule.rounds times; see RestartRule."""
        top = min(range(here + 1), key=lambda i: abs(ts[i] - rule.restart_t))
        if top == here:
            return x, h
        rejected = rule.reject(*tracker.estimate, mask)
        for _ in range(rule.rounds):
            rows = rejected.nonzero().flatten()
            if len(rows) == 0:
                break
            sub_mask = None if mask is None else mask[rows]
            call = partial(denoiser, **{k: v[rows] for k, v in row_kwargs.items()})
            # A restarted chain starts its self-conditioning afresh, as the first step does: the
            # estimate it would read is the rejected one.
            sub = EstimateTracker(call, self, feed=self_condition)
            xr, hr = self.renoise(x[rows], h[rows], ts[here], ts[top], sub_mask, generator)
            for t, s in zip(ts[top:here], ts[top + 1:here + 1]):
                xr, hr = self.ancestral_step(sub, xr, hr, t, s, sub_mask, generator)
            x, h = x.clone(), h.clone()
            x[rows], h[rows] = xr, hr
            # The main chain's next call reads these rows' estimates through self-conditioning.
            if tracker.estimate is not None:
                tracker.estimate = tuple(e.clone() for e in tracker.estimate)
                for e, new in zip(tracker.estimate, sub.estimate):
                    e[rows] = new
            rejected = rejected.clone()
            rejected[rows] = rule.reject(*sub.estimate, sub_mask)
        return x, h

    @torch.no_grad()
    def sample(
        self, denoiser: Denoiser, batch_size: int, num_atoms: int, feature_dim: int, steps: int,
        generator: torch.Generator | None = None, device: torch.device | str = "cpu",
        mask: torch.Tensor | None = None, progress: Callable[[], None] | None = None,
        spacing: str = DEFAULT_SPACING, self_condition: bool = False, restart: RestartRule | None = None,
        row_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the reverse chain from z_T ~ N(0, I) (CoM-free x) and return (x, h) in model units.

        With `self_condition` each denoiser call also gets `self_cond=(x0_hat, h0_hat)`, the clean
        estimate of the previous call (None at the first), computed from the eps the chain used
        (guided, if the denoiser guides). Without it the chain is exactly as before. `restart`:
        see RestartRule (None: off). `row_kwargs`: tensors with one row per molecule (a
        condition) passed to every denoiser call, the rows of restarted molecules to theirs.
        """
        row_kwargs = dict(row_kwargs or {})
        call = partial(denoiser, **row_kwargs) if row_kwargs else denoiser
        checked = restart is None or restart.rounds <= 0
        # The clean estimate is computed per call only where something reads it.
        tracker = EstimateTracker(call, self, feed=self_condition) if self_condition or not checked else call
        x = sample_com_free_noise((batch_size, num_atoms, 3), mask, generator, device)
        h = torch.randn(batch_size, num_atoms, feature_dim, generator=generator, device=device)
        if mask is not None:
            h = h * mask.unsqueeze(-1)
        ts = self.sampling_timesteps(steps, spacing)
        for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
            x, h = self.ancestral_step(tracker, x, h, t, s, mask, generator)
            if not checked and s <= restart.check_t:
                checked = True
                x, h = self._restart(denoiser, tracker, restart, x, h, ts, i + 1, mask, generator, row_kwargs,
                                     self_condition)
            if progress is not None:
                progress()
        return self.final_estimate(tracker, x, h, mask, generator)
