"""The networks of SymDiff: a Diffusion Transformer backbone and the learned orientation kernel.

Neither network is equivariant. `SymmetrisedDenoiser` makes the pair O(3)-equivariant in
distribution by stochastic symmetrisation (Zhang et al. 2025, SymDiff):

    eps_hat(z) = R . f(R^-1 . z, t),   R = g . Q_phi(g^-1 . z),   g ~ Haar(O(3)).

The backbone follows DiT (Peebles & Xie 2023): adaLN-Zero blocks conditioned on a sinusoidal
timestep embedding, zero-initialised output layer. There are no positional encodings, so the
network is permutation-equivariant over atoms; attention is masked to real atoms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from symdiff_cli.model.config import ModelConfig
from symdiff_cli.model.geometry import (
    orthogonalise, radial_basis_features, remove_mean, rotate, rotate_inverse, sample_haar_orthogonal,
)
from symdiff_cli.model.kernels import Linear, attend


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # One fused kernel for shift + x * (1 + scale): elementwise passes dominate on CPU at these widths.
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the (continuous) timestep followed by a two-layer MLP."""

    def __init__(self, hidden: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        half = frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float().unsqueeze(-1) * self.freqs
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = Linear(hidden, 3 * hidden)
        self.proj = Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(attend(q, k, v, attn_mask).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """GELU MLP, or SwiGLU with the hidden width scaled by 2/3 to keep the parameter count."""

    def __init__(self, hidden: int, ratio: float, swiglu: bool):
        super().__init__()
        self.swiglu = swiglu
        inner = int(hidden * ratio)
        if swiglu:
            inner = int(2 * inner / 3)
            self.fc1 = Linear(hidden, 2 * inner)
        else:
            self.fc1 = Linear(hidden, inner)
        self.fc2 = Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            a, b = self.fc1(x).chunk(2, dim=-1)
            return self.fc2(F.silu(a) * b)
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Self-attention + MLP, each with adaLN-Zero modulation from the conditioning vector."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, swiglu: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, mlp_ratio, swiglu)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = torch.addcmul(x, gate_msa.unsqueeze(1), self.attn(modulate(self.norm1(x), shift_msa, scale_msa), attn_mask))
        return torch.addcmul(x, gate_mlp.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def attention_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, 1, 1, N) key mask for SDPA, or None when no atom is padding (the fast path)."""
    if mask is None or bool(mask.all()):
        return None
    return mask[:, None, None, :]


class Transformer(nn.Module):
    """Token embedding -> adaLN-Zero DiT blocks conditioned on t. Shared by the backbone and the orientation kernel."""

    def __init__(self, in_dim: int, hidden: int, depth: int, heads: int, mlp_ratio: float, swiglu: bool):
        super().__init__()
        self.embed = Linear(in_dim, hidden)
        self.t_embed = TimestepEmbedder(hidden)
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads, mlp_ratio, swiglu) for _ in range(depth)])

    def forward(self, tokens: torch.Tensor, t: torch.Tensor, attn_mask: torch.Tensor | None,
                extra: torch.Tensor | None = None, c_extra: torch.Tensor | None = None):
        x = self.embed(tokens)
        if extra is not None:  # an embedding added to the tokens' (self-conditioning)
            x = x + extra
        c = self.t_embed(t)
        if c_extra is not None:  # an embedding added to the conditioning vector (properties)
            c = c + c_extra
        for block in self.blocks:
            x = block(x, c, attn_mask)
        return x, c

    def zero_init_modulation(self) -> None:
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)


def _init_linear_layers(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# The parameters a self-conditioned model has beyond the same model without it: a release
# without self-conditioning lacks only these (and starts them at zero) under --init-from.
SELF_COND_PREFIX = "backbone.self_cond_embed."
# Likewise the property embedding of a conditional model (cfg.conditions).
CONDITION_PREFIX = "backbone.condition_embed."


class DiTBackbone(nn.Module):
    """f(x, h, t): per-atom eps for positions (3) and features (F), in the frame it is given.

    With cfg.self_condition it also reads a clean-molecule estimate (x0_hat, h0_hat), in the same
    frame as x, through `self_cond_embed`: zero-initialised and without bias, so at
    initialisation, or with zero inputs, it adds nothing to the token embedding.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        in_dim = 3 + cfg.feature_dim + cfg.num_rbf
        self.transformer = Transformer(in_dim, cfg.hidden, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.swiglu)
        self.final = FinalLayer(cfg.hidden, 3 + cfg.feature_dim)
        self.self_cond_embed = (Linear(3 + cfg.feature_dim, cfg.hidden, bias=False)
                                if cfg.self_condition else None)
        self.condition_embed = nn.Linear(len(cfg.conditions), cfg.hidden) if cfg.conditions else None
        if cfg.conditions:
            self.register_buffer("condition_mean", torch.tensor(cfg.condition_mean), persistent=False)
            self.register_buffer("condition_std", torch.tensor(cfg.condition_std), persistent=False)
        _init_linear_layers(self)
        if self.self_cond_embed is not None:
            nn.init.zeros_(self.self_cond_embed.weight)
        if self.condition_embed is not None:
            nn.init.zeros_(self.condition_embed.weight)
            nn.init.zeros_(self.condition_embed.bias)
        nn.init.normal_(self.transformer.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.transformer.t_embed.mlp[2].weight, std=0.02)
        self.transformer.zero_init_modulation()
        for layer in (self.final.adaLN_modulation[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, h, t, mask, attn_mask, rbf, self_cond=None, condition=None, drop_condition=None):
        tokens = torch.cat([x, h, rbf], dim=-1)
        extra = None
        if self.self_cond_embed is not None and self_cond is not None:
            extra = self.self_cond_embed(torch.cat(self_cond, dim=-1))
        c_extra = None
        if self.condition_embed is not None:
            normalised = (condition.to(self.condition_mean.dtype) - self.condition_mean) / self.condition_std
            c_extra = self.condition_embed(normalised.to(self.condition_embed.weight.dtype))
            if drop_condition is not None:  # rows without a condition: the zero embedding, as at initialisation
                c_extra = c_extra * (~drop_condition).to(c_extra.dtype).view(-1, 1)
        y, c = self.transformer(tokens, t, attn_mask, extra, c_extra)
        out = self.final(y, c)
        return out[..., :3], out[..., 3:]


class OrientationNet(nn.Module):
    """phi of the learned orientation kernel (the paper's gamma): reads g^-1 . x (+ noise, features,
    distances), outputs a 3x3 matrix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        in_dim = 3 + cfg.feature_dim + cfg.orientation_noise_channels + cfg.num_rbf
        self.transformer = Transformer(
            in_dim, cfg.orientation_hidden, cfg.orientation_depth, cfg.orientation_heads, cfg.mlp_ratio, cfg.swiglu
        )
        self.norm = nn.LayerNorm(cfg.orientation_hidden)
        self.head = nn.Sequential(
            nn.Linear(cfg.orientation_hidden, cfg.orientation_mlp_hidden), nn.SiLU(), nn.Linear(cfg.orientation_mlp_hidden, 9)
        )
        _init_linear_layers(self)
        self.transformer.zero_init_modulation()
        # Start near the identity so early training sees the Haar frame g itself (DiT-Aug),
        # rather than the QR of a random matrix.
        nn.init.normal_(self.head[-1].weight, std=1e-3)
        with torch.no_grad():
            self.head[-1].bias.copy_(torch.eye(3).flatten())

    def forward(self, u, h, t, mask, attn_mask, rbf, noise) -> torch.Tensor:
        tokens = torch.cat([u, h, noise, rbf], dim=-1)
        y, _ = self.transformer(tokens, t, attn_mask)
        if mask is None:
            pooled = y.mean(dim=1)
        else:
            m = mask.unsqueeze(-1).to(y.dtype)
            pooled = (y * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return self.head(self.norm(pooled)).view(-1, 3, 3)


class SymmetrisedDenoiser(nn.Module):
    """eps_hat(z_t, t) = R f(R^-1 z_t, t) with R drawn from the orientation kernel at z_t (the paper's gamma).

    Inputs are normalised, CoM-free positions x (B, N, 3), features h (B, N, F), integer or
    float timesteps t (B,), and the real-atom mask (B, N) or None for an unpadded batch.
    `haar` and `orientation_noise` may be passed to couple draws (equivariance tests); otherwise they
    are drawn from `generator`.

    Self-conditioning (cfg.self_condition): `self_cond` = (x0_hat, h0_hat), the previous estimate
    of the clean molecule, (B, N, 3) and (B, N, F); None stands for zeros. x0_hat is a position:
    it is made CoM-free and masked like x and rotated into the backbone's frame, R^-1 x0_hat, so
    the denoiser stays equivariant. The orientation kernel does not read it. A model without
    the flag ignores `self_cond`, so wrappers may pass it to every network they hold.

    Property conditioning (cfg.conditions): `condition` holds the requested raw property values
    (B, K), in the units of data/properties.py; the model normalises them with its own mean and
    spread. They are invariant scalars, so equivariance is unaffected; the orientation kernel does
    not read them. A conditional model refuses to run without them; an unconditional one (a guide,
    say) ignores them. `drop_condition` (B,) bool: rows whose condition is left out (the embedding
    adds nothing, as for the release a conditional model was grown from): trained with
    --condition-dropout, the "unconditional" prediction of condition guidance.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.backbone = DiTBackbone(cfg)
        self.orientation = OrientationNet(cfg) if cfg.orientation_kernel == "learned" else None

    def sample_frame(
        self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None,
        attn_mask: torch.Tensor | None, rbf: torch.Tensor, haar: torch.Tensor | None = None,
        orientation_noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
    ) -> torch.Tensor | None:
        """Draw R from the orientation kernel at x: (B, 3, 3), or None for the plain (unsymmetrised) DiT."""
        if self.cfg.orientation_kernel == "none":
            return None
        b, n, _ = x.shape
        if haar is None:
            haar = sample_haar_orthogonal(b, generator=generator, device=x.device, dtype=x.dtype)
        if self.orientation is None:
            return haar
        if orientation_noise is None:
            orientation_noise = torch.randn(
                b, n, self.cfg.orientation_noise_channels, generator=generator, device=x.device, dtype=x.dtype
            )
        if mask is not None:
            orientation_noise = orientation_noise * mask.unsqueeze(-1).to(x.dtype)
        u = rotate_inverse(x, haar)
        q_phi = orthogonalise(self.orientation(u, h, t, mask, attn_mask, rbf, orientation_noise))
        return haar @ q_phi.to(haar.dtype)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
        haar: torch.Tensor | None = None, orientation_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        self_cond: tuple[torch.Tensor, torch.Tensor] | None = None,
        condition: torch.Tensor | None = None,
        drop_condition: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.conditions and (condition is None or condition.shape != (x.shape[0], len(self.cfg.conditions))):
            raise ValueError(f"this model is conditioned on {', '.join(self.cfg.conditions)}: pass `condition` "
                             f"of shape ({x.shape[0]}, {len(self.cfg.conditions)})")
        attn_mask = attention_mask(mask)
        if attn_mask is None:
            mask = None
        rbf = radial_basis_features(x, mask, self.cfg.num_rbf, self.cfg.rbf_cutoff)
        frame = self.sample_frame(x, h, t, mask, attn_mask, rbf, haar, orientation_noise, generator)
        x_in = x if frame is None else rotate_inverse(x, frame)
        cond = self._self_cond_input(x, h, mask, frame, self_cond) if self.cfg.self_condition else None
        eps_x, eps_h = self.backbone(x_in, h, t, mask, attn_mask, rbf, cond, condition, drop_condition)
        if frame is not None:
            eps_x = rotate(eps_x, frame.to(eps_x.dtype))
        eps_x = remove_mean(eps_x, mask)
        if mask is not None:
            eps_h = eps_h * mask.unsqueeze(-1).to(eps_h.dtype)
        return eps_x, eps_h


    @staticmethod
    def _self_cond_input(x, h, mask, frame, self_cond):
        """(R^-1 x0_hat, h0_hat), CoM-free and masked; zeros when there is no estimate yet."""
        if self_cond is None:
            return torch.zeros_like(x), torch.zeros_like(h)
        x0, h0 = self_cond
        x0 = remove_mean(x0.to(x.dtype), mask)  # zero on padding too
        h0 = h0.to(h.dtype)
        if mask is not None:
            h0 = h0 * mask.unsqueeze(-1).to(h.dtype)
        if frame is not None:
            x0 = rotate_inverse(x0, frame)
        return x0, h0


def uses_self_condition(model: nn.Module) -> bool:
    """Whether any network in `model` (a denoiser, or a guidance wrapper around some) reads a
    self-conditioning estimate: the sampler then feeds one back."""
    return any(isinstance(m, SymmetrisedDenoiser) and m.cfg.self_condition for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
