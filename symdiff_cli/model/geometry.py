"""Geometry on padded batches: centre-of-mass removal, O(3) draws, invariant distance features.

Conventions: positions are (B, N, 3) row vectors; a rotation R acts on a molecule as
x_i -> R x_i, i.e. X -> X @ R^T. `mask` is (B, N) bool, True for real atoms.
"""

from __future__ import annotations

import torch


def remove_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Subtract the mean over real atoms; padded rows are set to zero."""
    if mask is None:
        return x - x.mean(dim=1, keepdim=True)
    m = mask.unsqueeze(-1).to(x.dtype)
    mean = (x * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1)
    return (x - mean) * m


def sample_com_free_noise(
    shape: tuple[int, int, int], mask: torch.Tensor | None, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian noise for positions projected to the zero-mean subspace of the real atoms."""
    eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return remove_mean(eps, mask)


def orthogonalise(m: torch.Tensor) -> torch.Tensor:
    """Sign-fixed QR of (..., 3, 3) matrices: the Q factor of m with the diagonal of R made positive.

    Fixing the signs makes Q a function of m (plain QR is unique only up to column signs),
    which is what makes the Haar draw below exactly Haar and the map Q(A m) = A Q(m) hold for
    orthogonal A (Mezzadri 2007). The sign-fixed Q is exactly what Gram-Schmidt on the columns
    gives, so it is written out as Gram-Schmidt: a few element-wise kernels. Batched
    torch.linalg.qr of tiny matrices is slow on CUDA; with it a 2,048-molecule training step on an
    H200 took about 290 ms, host-bound (docs/training.md). Done in float64: the backward pass is
    ill-conditioned in float32 for nearly singular inputs.
    """
    dtype = m.dtype
    with torch.autocast(device_type=m.device.type, enabled=False):
        a = m.double()
        q1 = _unit(a[..., :, 0])
        v2 = a[..., :, 1]
        q2 = _unit(v2 - _dot(q1, v2) * q1)
        v3 = a[..., :, 2]
        v3 = v3 - _dot(q1, v3) * q1  # modified Gram-Schmidt: project out one direction at a time
        q3 = _unit(v3 - _dot(q2, v3) * q2)
        q = torch.stack([q1, q2, q3], dim=-1)
    return q.to(dtype)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=-1, keepdim=True)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-30)


def sample_haar_orthogonal(
    batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(batch, 3, 3) matrices drawn from the Haar measure on O(3) (reflections included)."""
    gaussian = torch.randn(batch, 3, 3, generator=generator, device=device, dtype=torch.float64)
    return orthogonalise(gaussian).to(dtype)


def rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Apply a per-molecule linear map: x_i -> R x_i for (B, N, 3) x and (B, 3, 3) R."""
    return x @ rotation.transpose(-1, -2)


def rotate_inverse(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Apply R^-1 = R^T for orthogonal R: x_i -> R^T x_i."""
    return x @ rotation


def radial_basis_features(
    x: torch.Tensor, mask: torch.Tensor | None, num_basis: int, cutoff: float,
) -> torch.Tensor:
    """Per-atom invariant features: Gaussian RBFs of distances to the other real atoms, averaged.

    Returns (B, N, num_basis). Depends on distances only, so it is invariant to O(3) and
    translations, and permutation-equivariant.
    """
    b, n, _ = x.shape
    dist = torch.cdist(x, x)  # (B, N, N)
    centres = torch.linspace(0.0, cutoff, num_basis, device=x.device, dtype=x.dtype)
    width = cutoff / max(num_basis - 1, 1)
    # Capping the exponent keeps exp() out of float32's denormal range (exp(-87) and below),
    # which is many times slower on CPUs; the capped values (< 1e-26) are zero for all purposes.
    rbf = torch.exp(-(((dist.unsqueeze(-1) - centres) / width) ** 2).clamp(max=60.0))  # (B, N, N, K)
    pair = ~torch.eye(n, dtype=torch.bool, device=x.device).unsqueeze(0)
    if mask is not None:
        pair = pair & mask.unsqueeze(1) & mask.unsqueeze(2)
    pair = pair.to(x.dtype).unsqueeze(-1)
    return (rbf * pair).sum(dim=2) / pair.sum(dim=2).clamp(min=1)
