"""The symmetrised denoiser: O(3) equivariance (coupled and in law), permutations, masks, CoM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.diffusion import NoiseSchedule, VPDiffusion, polynomial_2_alphas2
from symdiff_cli.model.dit import SymmetrisedDenoiser
from symdiff_cli.engine.sampling import Sampler, plan_batches
from symdiff_cli.model.geometry import orthogonalise, remove_mean, rotate, sample_haar_orthogonal
from symdiff_cli.model.guidance import AutoGuidedDenoiser, MeanDenoiser, mean_of


def perturbed_model(kernel: str, seed: int = 0, dtype=torch.float64) -> SymmetrisedDenoiser:
    """A tiny model with its zero-initialised layers perturbed, so outputs depend on everything."""
    torch.manual_seed(seed)
    model = SymmetrisedDenoiser(model_config_from_preset("tiny", orientation_kernel=kernel)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def random_inputs(b=4, n=9, f=6, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = remove_mean(torch.randn(b, n, 3, generator=g, dtype=dtype))
    h = torch.randn(b, n, f, generator=g, dtype=dtype)
    t = torch.randint(0, 1001, (b,), generator=g)
    return x, h, t


def fixed_draws(b: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A Haar frame g per molecule and the orientation kernel's noise channels, fixed so calls can be coupled."""
    g = sample_haar_orthogonal(b, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    noise = torch.randn(b, n, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return g, noise


def reflection_and_rotation(b: int) -> torch.Tensor:
    """Half proper rotations, half improper (det -1) orthogonal matrices."""
    q = sample_haar_orthogonal(b, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    det = torch.det(q)
    want = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(b)], dtype=torch.float64)
    flip = torch.diag_embed(torch.stack([det * want, torch.ones(b, dtype=torch.float64),
                                         torch.ones(b, dtype=torch.float64)], -1))
    return q @ flip


@pytest.mark.parametrize("kernel", ["learned", "haar"])
def test_coupled_draws_make_output_rotate_exactly(kernel):
    model = perturbed_model(kernel)
    x, h, t = random_inputs()
    b, n = x.shape[:2]
    g, noise = fixed_draws(b, n)
    q = reflection_and_rotation(b)
    assert torch.allclose(torch.det(q), torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64))
    eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise)
    eps_x_q, eps_h_q = model(rotate(x, q), h, t, None, haar=q @ g, orientation_noise=noise)
    assert eps_x.abs().mean() > 1e-3  # not trivially zero
    assert torch.allclose(rotate(eps_x, q), eps_x_q, atol=1e-5)
    assert torch.allclose(eps_h, eps_h_q, atol=1e-5)


def test_plain_dit_is_not_equivariant():
    """Sanity check of the test above: without symmetrisation the output does not rotate."""
    model = perturbed_model("none")
    x, h, t = random_inputs()
    q = reflection_and_rotation(x.shape[0])
    eps_x, _ = model(x, h, t, None)
    eps_x_q, _ = model(rotate(x, q), h, t, None)
    assert not torch.allclose(rotate(eps_x, q), eps_x_q, atol=1e-3)


@pytest.mark.parametrize("kernel", ["learned", "haar"])
def test_output_law_is_rotation_invariant(kernel):
    """With free draws, eps(Qx) and Q eps(x) have the same distribution: compare moments of an
    invariant-free statistic (first output coordinate) over many draws with a two-sample test."""
    model = perturbed_model(kernel).float()
    x, h, t = random_inputs(b=1, n=6, dtype=torch.float32)
    q = reflection_and_rotation(2)[1:].float()  # a reflection
    draws = 4000
    xs = x.expand(draws, -1, -1).contiguous()
    hs, ts = h.expand(draws, -1, -1).contiguous(), t.expand(draws)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        a = rotate(model(xs, hs, ts, None, generator=gen)[0], q.expand(draws, -1, -1))
        b = model(rotate(xs, q.expand(draws, -1, -1)), hs, ts, None, generator=gen)[0]
    sa, sb = a[:, 0, :].numpy(), b[:, 0, :].numpy()
    # Means and second moments of each coordinate agree within ~5 standard errors.
    for k in range(3):
        se = np.sqrt(sa[:, k].var() / draws + sb[:, k].var() / draws)
        assert abs(sa[:, k].mean() - sb[:, k].mean()) < 5 * se + 1e-6
        se2 = np.sqrt((sa[:, k] ** 2).var() / draws + (sb[:, k] ** 2).var() / draws)
        assert abs((sa[:, k] ** 2).mean() - (sb[:, k] ** 2).mean()) < 5 * se2 + 1e-6
    # And the draws really are random frames, not a fixed output.
    assert sa[:, 0].std() > 1e-3


@pytest.mark.parametrize("kernel", ["learned", "haar", "none"])
def test_permuting_atoms_permutes_outputs(kernel):
    model = perturbed_model(kernel)
    x, h, t = random_inputs()
    b, n = x.shape[:2]
    g, noise = fixed_draws(b, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise)
    eps_x_p, eps_h_p = model(x[:, perm], h[:, perm], t, None, haar=g, orientation_noise=noise[:, perm])
    assert torch.allclose(eps_x[:, perm], eps_x_p, atol=1e-8)
    assert torch.allclose(eps_h[:, perm], eps_h_p, atol=1e-8)


@pytest.mark.parametrize("kernel", ["learned", "haar", "none"])
def test_padding_does_not_change_real_atoms_and_outputs_are_com_free(kernel):
    model = perturbed_model(kernel)
    x, h, t = random_inputs(b=2, n=7)
    b, n = x.shape[:2]
    g, noise = fixed_draws(b, n)
    eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise)
    pad = 4
    xp = torch.cat([x, 100 * torch.randn(b, pad, 3, dtype=x.dtype)], 1)
    hp = torch.cat([h, 100 * torch.randn(b, pad, h.shape[-1], dtype=h.dtype)], 1)
    noise_p = torch.cat([noise, torch.randn(b, pad, 3, dtype=noise.dtype)], 1)
    mask = torch.zeros(b, n + pad, dtype=torch.bool)
    mask[:, :n] = True
    eps_xp, eps_hp = model(xp, hp, t, mask, haar=g, orientation_noise=noise_p)
    assert torch.allclose(eps_xp[:, :n], eps_x, atol=1e-8)
    assert torch.allclose(eps_hp[:, :n], eps_h, atol=1e-8)
    assert torch.all(eps_xp[:, n:] == 0) and torch.all(eps_hp[:, n:] == 0)
    assert eps_x.sum(dim=1).abs().max() < 1e-10


def test_sign_fixed_qr_is_orthogonal_and_equivariant():
    m = torch.randn(16, 3, 3, dtype=torch.float64)
    q = orthogonalise(m)
    eye = torch.eye(3, dtype=torch.float64).expand(16, 3, 3)
    assert torch.allclose(q.transpose(-1, -2) @ q, eye, atol=1e-12)
    a = sample_haar_orthogonal(16, dtype=torch.float64)
    assert torch.allclose(orthogonalise(a @ m), a @ q, atol=1e-10)


def test_gram_schmidt_orthogonalise_equals_sign_fixed_qr_in_value_and_gradient():
    """orthogonalise is written as Gram-Schmidt for speed; it must be the sign-fixed QR it replaces."""
    def sign_fixed_qr(m):
        q, r = torch.linalg.qr(m)
        return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)

    gen = torch.Generator().manual_seed(0)
    m = torch.randn(256, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = torch.randn(256, 3, 3, dtype=torch.float64, generator=gen)
    ours, reference = orthogonalise(m), sign_fixed_qr(m)
    assert torch.allclose(ours, reference, atol=1e-10)
    grad_ours, = torch.autograd.grad((ours * weights).sum(), m)
    grad_reference, = torch.autograd.grad((reference * weights).sum(), m)
    assert torch.allclose(grad_ours, grad_reference, atol=1e-8)
    # float32 input (the network's output) comes back float32 and orthogonal to float32 precision
    q32 = orthogonalise(torch.randn(64, 3, 3, generator=gen))
    assert q32.dtype == torch.float32
    assert torch.allclose(q32.transpose(-1, -2) @ q32, torch.eye(3).expand(64, 3, 3), atol=1e-5)


def test_haar_draws_cover_both_components_and_are_unbiased():
    q = sample_haar_orthogonal(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    det = torch.det(q)
    assert torch.allclose(det.abs(), torch.ones_like(det))
    assert abs(float((det > 0).double().mean()) - 0.5) < 0.02
    assert q.mean(0).abs().max() < 0.03  # E[Q] = 0 under Haar


def test_training_timesteps_uniform_by_default_and_biased_to_low_noise_on_request():
    diffusion = VPDiffusion(NoiseSchedule(1000))
    uniform = diffusion.training_timesteps(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert int(uniform.min()) == 0 and int(uniform.max()) == 1000
    assert abs(float((uniform <= 100).double().mean()) - 101 / 1001) < 0.005
    biased = diffusion.training_timesteps(200_000, torch.device("cpu"), torch.Generator().manual_seed(0), 0.5)
    # half from {0..100}, half uniform on {0..1000} (of which 101/1001 also land there)
    assert abs(float((biased <= 100).double().mean()) - (0.5 + 0.5 * 101 / 1001)) < 0.005
    assert int(biased.max()) == 1000


def test_polynomial_2_schedule_properties():
    a2 = polynomial_2_alphas2(1000, 1e-5)
    assert len(a2) == 1001
    assert np.all(np.diff(a2) <= 0)
    assert a2[0] == pytest.approx(1 - 1e-5, abs=1e-6) and a2[-1] == pytest.approx(1e-5, rel=1e-3)
    # Away from the ends it follows (1 - (t/T)^2)^2.
    assert a2[500] == pytest.approx((1 - 2e-5) * 0.75 ** 2 + 1e-5, rel=1e-6)


def test_sampling_timesteps_subsequence():
    d = VPDiffusion(NoiseSchedule(1000))
    ts = d.sampling_timesteps(100)
    assert ts[0] == 1000 and ts[-1] == 0 and len(ts) == 101 and all(a > b for a, b in zip(ts, ts[1:]))
    assert d.sampling_timesteps(1000) == list(range(1000, -1, -1))


@pytest.mark.parametrize("spacing", ["quadratic", "cubic", "uniform"])
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 50, 100, 250, 500, 999, 1000])
def test_sampling_timesteps_are_exactly_steps_distinct_from_T_to_0(spacing, steps):
    ts = VPDiffusion(NoiseSchedule(1000)).sampling_timesteps(steps, spacing)
    assert ts[0] == 1000 and ts[-1] == 0 and len(ts) == steps + 1
    assert all(a > b for a, b in zip(ts, ts[1:]))


def test_quadratic_spacing_crowds_low_noise_and_uniform_is_even():
    d = VPDiffusion(NoiseSchedule(1000))
    assert d.sampling_timesteps(100, "uniform") == list(range(1000, -1, -10))
    # the timesteps of earlier versions: 1000 * 3/80 = 37.5 rounds to even, 38, not to 37
    assert d.sampling_timesteps(80, "uniform")[-6:] == [62, 50, 38, 25, 12, 0]
    quad = d.sampling_timesteps(100, "quadratic")
    # T (1 - i/S)^2 away from the bottom, where rounding would merge steps
    assert quad[:3] == [1000, 980, 960] and quad[50] == 250 and quad[90] == 10
    # one step per timestep at the bottom, 20 timesteps per step at the top
    assert quad[-4:] == [3, 2, 1, 0]
    assert sum(t <= 100 for t in quad) == 32  # uniform: 11
    with pytest.raises(ValueError, match="spacing"):
        d.sampling_timesteps(100, "cosine")


def test_cubic_spacing_crowds_low_noise_more_than_quadratic():
    d = VPDiffusion(NoiseSchedule(1000))
    cubic = d.sampling_timesteps(100, "cubic")
    assert cubic == d.sampling_timesteps(100)  # the default
    # T (1 - i/S)^3 away from the bottom: 1000 * 0.97^3 = 912.7, 1000 * 0.5^3 = 125
    assert cubic[:4] == [1000, 970, 941, 913] and cubic[50] == 125 and cubic[60] == 64
    # lifted at the bottom (1000 * 0.3^3 = 27 < 30): the last 32 steps are every timestep from 31
    assert cubic[-33:] == [33] + list(range(31, -1, -1))
    assert sum(t <= 100 for t in cubic) == 47  # quadratic: 32, uniform: 11
    # every grid at --steps 1000 is every timestep
    assert d.sampling_timesteps(1000, "cubic") == list(range(1000, -1, -1))


def test_sampling_returns_finite_com_free_positions():
    model = perturbed_model("learned", dtype=torch.float32)
    d = VPDiffusion(NoiseSchedule(1000))
    x, h = d.sample(model, 3, 8, 6, steps=10, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 8, 3) and h.shape == (3, 8, 6)
    assert torch.isfinite(x).all() and x.sum(1).abs().max() < 1e-5 * x.abs().max()


def test_bf16_sampler_runs_the_network_in_bf16_and_stays_close_to_fp32():
    from symdiff_cli.engine.sampling import Sampler

    model = perturbed_model("learned", dtype=torch.float32)
    cfg = model.cfg
    x, h, t = random_inputs(b=2, n=6, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    exact = Sampler(model, cfg)._denoise(x, h, t, None, generator=torch.Generator().manual_seed(0))[0]
    rounded = Sampler(model, cfg, autocast_bf16=True)._denoise(x, h, t, None, generator=g)[0]
    assert rounded.dtype == torch.float32
    diff = (rounded - exact).abs().max() / exact.abs().max()
    assert 0 < diff < 0.1


def test_bf16_training_on_cpu_writes_attention_out_and_stays_close(monkeypatch):
    # The CPU's fused bf16 attention kernel is several times slower than the written-out products
    # at a molecule's few tokens (its backward most): under bf16 autocast attention is written out,
    # its softmax in fp32, and the products stay bf16.
    import torch.nn.functional as F

    from symdiff_cli.model import kernels

    model = perturbed_model("learned", dtype=torch.float32).train()
    x, h, t = random_inputs(b=3, n=7, dtype=torch.float32)
    g, noise = fixed_draws(*x.shape[:2])
    draws = dict(haar=g.float(), orientation_noise=noise.float())
    exact_x, exact_h = model(x, h, t, None, **draws)
    fused = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(kernels.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: fused.append(q.dtype) or real(q, k, v, **kw))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded_x, rounded_h = model(x, h, t, None, **draws)
        assert model.backbone.transformer.embed(torch.cat([x, h, torch.zeros(3, 7, model.cfg.num_rbf)], -1)).dtype \
            == torch.bfloat16  # the linear layers do run in bf16
    assert not fused
    for rounded, exact in ((rounded_x, exact_x), (rounded_h, exact_h)):
        assert 0 < ((rounded.float() - exact).abs().max() / exact.abs().max()) < 0.1
    (rounded_x.float().square().mean() + rounded_h.float().square().mean()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(grad).all() for grad in grads)


def test_written_out_attention_matches_the_fused_kernel_with_padding():
    import torch.nn.functional as F

    from symdiff_cli.model.kernels import attend

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(5, 4, 9, 8, generator=gen) for _ in range(3))
    mask = torch.ones(5, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[4, 2:] = False
    key_mask = mask[:, None, None, :]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    with torch.no_grad():
        got = attend(q, k, v, key_mask)
    assert torch.allclose(got, expected, atol=1e-6)
    # a padded key changes nothing, whatever it holds
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 6:] = 1e3
    v2[1, :, 6:] = -1e3
    with torch.no_grad():
        assert torch.allclose(attend(q, k2, v2, key_mask)[1], got[1], atol=1e-6)


def test_sampling_kernels_give_the_default_kernels_outputs(monkeypatch):
    # Without gradients on a CPU the networks run oneDNN's products and written-out attention
    # (model/kernels.py); the same draws must give the same outputs as PyTorch's default kernels.
    from symdiff_cli.model import kernels

    model = perturbed_model("learned", dtype=torch.float32).eval()
    x, h, t = random_inputs(b=40, n=9, dtype=torch.float32)  # large enough for oneDNN's products
    g, noise = fixed_draws(*x.shape[:2])
    draws = dict(haar=g.float(), orientation_noise=noise.float())
    onednn_calls = []
    real = kernels.onednn_linear
    monkeypatch.setattr(kernels, "onednn_linear", lambda *a: onednn_calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        with kernels.pytorch_default_kernels():
            expected = model(x, h, t, None, **draws)
        assert not onednn_calls
        got = model(x, h, t, None, **draws)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    if kernels.onednn_linear_available():  # PyTorch builds without oneDNN keep F.linear
        assert onednn_calls
    onednn_calls.clear()
    model(x, h, t, None, **draws)  # with gradients: PyTorch's kernels, which have a backward
    assert not onednn_calls


def test_optimizer_is_fused_amsgrad_adam_updating_like_the_reference():
    from symdiff_cli.engine.optim import make_optimizer

    model = perturbed_model("learned", dtype=torch.float32)
    reference = perturbed_model("learned", dtype=torch.float32)
    start = [p.detach().clone() for p in model.parameters()]
    ours = make_optimizer(model, lr=1e-3, weight_decay=1e-4)
    assert ours.param_groups[0]["fused"] and ours.param_groups[0]["amsgrad"]
    plain = torch.optim.Adam(reference.parameters(), lr=1e-3, amsgrad=True, weight_decay=1e-4, foreach=False)
    g = torch.Generator().manual_seed(0)
    for step in range(4):  # the same gradients to both, shrinking so that AMSGrad's maximum matters
        for a, b in zip(model.parameters(), reference.parameters()):
            a.grad = torch.randn(a.shape, generator=g) / (1 + step)
            b.grad = a.grad.clone()
        ours.step()
        plain.step()
    for a, b, s0 in zip(model.parameters(), reference.parameters(), start):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), "fused and per-tensor AMSGrad Adam should take the same steps"
        assert not torch.equal(a, s0)


def test_autoguidance_extrapolates_from_the_guide_and_weight_one_is_the_main_model():
    main, guide = perturbed_model("learned", seed=0), perturbed_model("learned", seed=5)
    x, h, t = random_inputs()
    g, noise = fixed_draws(*x.shape[:2])
    draws = dict(haar=g, orientation_noise=noise)
    main_x, main_h = main(x, h, t, None, **draws)
    guide_x, guide_h = guide(x, h, t, None, **draws)
    assert not torch.allclose(main_x, guide_x, atol=1e-3)  # two different networks

    guided_x, guided_h = AutoGuidedDenoiser(main, guide, 3.0)(x, h, t, None, **draws)
    assert torch.allclose(guided_x, guide_x + 3.0 * (main_x - guide_x), atol=1e-10)
    assert torch.allclose(guided_h, guide_h + 3.0 * (main_h - guide_h), atol=1e-10)
    same_x, same_h = AutoGuidedDenoiser(main, guide, 1.0)(x, h, t, None, **draws)
    assert torch.equal(same_x, main_x) and torch.equal(same_h, main_h)
    only_guide_x, _ = AutoGuidedDenoiser(main, guide, 0.0)(x, h, t, None, **draws)
    assert torch.allclose(only_guide_x, guide_x, atol=1e-12)
    with pytest.raises(ValueError, match="needs a guide"):
        AutoGuidedDenoiser(main, None, 2.0)


def test_autoguided_denoiser_stays_equivariant_and_com_free():
    """Both networks given coupled frames: the guided output rotates exactly with the input, and
    a combination of CoM-free outputs is CoM-free."""
    guided = AutoGuidedDenoiser(perturbed_model("learned", seed=0), perturbed_model("haar", seed=5), 2.5)
    x, h, t = random_inputs()
    b, n = x.shape[:2]
    g, noise = fixed_draws(b, n)
    q = reflection_and_rotation(b)
    eps_x, eps_h = guided(x, h, t, None, haar=g, orientation_noise=noise)
    eps_x_q, eps_h_q = guided(rotate(x, q), h, t, None, haar=q @ g, orientation_noise=noise)
    assert torch.allclose(rotate(eps_x, q), eps_x_q, atol=1e-5)
    assert torch.allclose(eps_h, eps_h_q, atol=1e-5)
    assert eps_x.mean(dim=1).abs().max() < 1e-10


def test_a_mean_guide_averages_its_networks_and_stays_equivariant_and_com_free():
    a, b = perturbed_model("learned", seed=5), perturbed_model("haar", seed=6)
    x, h, t = random_inputs()
    bsz, n = x.shape[:2]
    g, noise = fixed_draws(bsz, n)
    draws = dict(haar=g, orientation_noise=noise)
    (ax, ah), (bx, bh) = a(x, h, t, None, **draws), b(x, h, t, None, **draws)
    mean = MeanDenoiser([a, b])
    mx, mh = mean(x, h, t, None, **draws)
    assert torch.allclose(mx, (ax + bx) / 2, atol=1e-12) and torch.allclose(mh, (ah + bh) / 2, atol=1e-12)
    assert mean_of([a]) is a and isinstance(mean_of([a, b]), MeanDenoiser)
    guided = AutoGuidedDenoiser(perturbed_model("learned", seed=0), mean, 5.0)
    q = reflection_and_rotation(bsz)
    eps_x, eps_h = guided(x, h, t, None, **draws)
    eps_x_q, eps_h_q = guided(rotate(x, q), h, t, None, haar=q @ g, orientation_noise=noise)
    assert torch.allclose(rotate(eps_x, q), eps_x_q, atol=1e-5) and torch.allclose(eps_h, eps_h_q, atol=1e-5)
    assert eps_x.mean(dim=1).abs().max() < 1e-10
    with pytest.raises(ValueError, match="at least one"):
        MeanDenoiser([])


def test_guided_sampling_differs_from_unguided_and_is_reproducible():
    cfg = model_config_from_preset("tiny")
    main, guide = perturbed_model("learned", seed=0).float(), perturbed_model("learned", seed=5).float()
    plan = plan_batches([5, 5, 6], batch_size=2, seed=3)
    def draw(denoiser):
        mols = [m for batch in Sampler(denoiser, cfg).sample(plan, steps=4) for m in batch]
        return np.concatenate([m.positions for m in mols])
    unguided = draw(main)
    guided = draw(AutoGuidedDenoiser(main, guide, 2.0))
    assert np.isfinite(guided).all() and not np.allclose(unguided, guided, atol=1e-4)
    assert np.array_equal(guided, draw(AutoGuidedDenoiser(main, guide, 2.0)))
    assert np.array_equal(unguided, draw(AutoGuidedDenoiser(main, guide, 1.0)))


def test_optimizer_falls_back_to_foreach_where_torch_has_no_fused_update(monkeypatch):
    # torch < 2.4 refuses fused=True for CPU tensors with a RuntimeError.
    from symdiff_cli.engine import optim

    real = torch.optim.Adam

    def adam_without_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kwargs)

    monkeypatch.setattr(optim.torch.optim, "Adam", adam_without_fused)
    opt = optim.make_optimizer(perturbed_model("learned", dtype=torch.float32), lr=1e-3)
    assert opt.param_groups[0]["foreach"] and not opt.param_groups[0]["fused"] and opt.param_groups[0]["amsgrad"]
