"""The two operators of the networks whose fastest kernel depends on where they run.

A molecule is a few dozen tokens of width 32-384, a shape PyTorch's default CPU kernels are not
tuned for. Measured on two threads of an AMD EPYC (AVX-512), torch 2.13, 2026-12-04
(`python benchmarks/cpu_kernels.py`); on CUDA, and wherever gradients flow in float32, the
default kernels stay.

- Token-wise linear layers (`Linear`): PyTorch's float32 product goes to MKL, which ran a
  (2,304 x 128) by (128 x 682) product in 2.2 ms; oneDNN, the library PyTorch itself uses for
  its bf16 and compiled CPU paths, in 1.1 ms (and 1.3 -> 0.6 ms at width 384). oneDNN's
  float32 product is exact float32 arithmetic summed in another order. Its PyTorch operator has
  no backward, so only sampling (no gradients) uses it.
- Attention (`attend`): the fused CPU kernel costs more than it saves at 18 tokens. Without
  gradients, 128 molecules of 18 atoms: 0.53 ms written out (two products and a softmax)
  against 1.5 ms fused. With gradients in float32 the fused one wins (64 x 18, forward and
  backward, 2.5 against 3.4 ms); under bf16 autocast the written-out form wins by far (1.1 ms,
  softmax in float32, against 9.6 ms for the fused bf16 kernel and 2.5 for the fused float32).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


_use_defaults = False
# oneDNN's operator costs about 15 us a call against 5 for F.linear: below about 2 million
# multiply-adds the default is as fast or faster (benchmarks/cpu_kernels.py products, --batch 1 to 8).
ONEDNN_MIN_MACS = 1 << 21


@contextlib.contextmanager
def pytorch_default_kernels() -> Iterator[None]:
    """Within it the networks use PyTorch's default kernels (benchmarks and tests compare both)."""
    global _use_defaults
    before, _use_defaults = _use_defaults, True
    try:
        yield
    finally:
        _use_defaults = before


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b by oneDNN (no backward)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@functools.lru_cache(maxsize=1)
def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear operator and it agrees with F.linear.

    The operator is one of PyTorch's internal ones (its compiler emits it): a build without
    oneDNN, or a version that renamed or changed it, falls back to F.linear.
    """
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(3, 5, 16, generator=generator)
        weight = torch.randn(8, 16, generator=generator)
        bias = torch.randn(8, generator=generator)
        with torch.no_grad():
            got = onednn_linear(x, weight, bias)
            return got.shape == (3, 5, 8) and torch.allclose(got, F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return False


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) whose product runs in oneDNN when
    nothing needs its gradient on a CPU in float32 (see the module's docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not _use_defaults
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not _cpu_autocast_enabled()
            and not torch.is_grad_enabled()
            and x.numel() * self.out_features >= ONEDNN_MIN_MACS
            and onednn_linear_available()
        ):
            return onednn_linear(x, self.weight, self.bias)
        return super().forward(x)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d), keys masked by `attn_mask` (B, 1, 1, N)."""
    if _use_defaults or q.device.type != "cpu" or (q.dtype == torch.float32 and torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return written_out_attention(q, k, v, attn_mask)


def written_out_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`attend` as two products and a softmax (the CPU's choice where the fused kernel loses)."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    # Under bf16 autocast the softmax runs in float32; the product with v is bf16 again.
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v
