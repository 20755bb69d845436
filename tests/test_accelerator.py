"""The CUDA path: equivariance, masks, the shipped network's numbers, sampling and training on a GPU.

These run on the device SYMDIFF_TEST_DEVICE names (default "cuda") and are skipped where it is
absent, as in CI. `scripts/gpu_check.sh` runs them first on a GPU machine; to check the tests
themselves on a CPU: `SYMDIFF_TEST_DEVICE=cpu pytest tests/test_accelerator.py`. They import
nothing of RDKit (GPU images often lack it): chemistry is judged on the molecules the benchmark
brings back (benchmarks/device_sampling.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.dit import SymmetrisedDenoiser
from symdiff_cli.model.geometry import remove_mean, rotate, sample_haar_orthogonal

DEVICE = torch.device(os.environ.get("SYMDIFF_TEST_DEVICE", "cuda"))
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "weights" / "qm9"

pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(),
    reason="no CUDA device (SYMDIFF_TEST_DEVICE=cpu runs these on the CPU)",
)


def perturbed_tiny_model(seed: int = 0) -> SymmetrisedDenoiser:
    """The tiny preset with its zero-initialised layers perturbed, so outputs depend on every layer."""
    torch.manual_seed(seed)
    model = SymmetrisedDenoiser(model_config_from_preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def inputs(b: int, n: int, f: int, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = remove_mean(torch.randn(b, n, 3, generator=g, dtype=dtype))
    h = torch.randn(b, n, f, generator=g, dtype=dtype)
    t = torch.randint(0, 1001, (b,), generator=g)
    haar = sample_haar_orthogonal(b, generator=g, dtype=dtype)
    noise = torch.randn(b, n, 3, generator=g, dtype=dtype)
    return x, h, t, haar, noise


def on_device(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(DEVICE) for t in tensors]


def test_coupled_draws_rotate_the_output_exactly_on_the_device():
    model = perturbed_tiny_model().to(DEVICE)
    x, h, t, g, noise = on_device(*inputs(4, 9, model.cfg.feature_dim))
    q = sample_haar_orthogonal(4, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    q[1::2, :, 0] *= -1  # half of them reflections
    with torch.no_grad():
        eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise)
        eps_x_q, eps_h_q = model(rotate(x, q), h, t, None, haar=q @ g, orientation_noise=noise)
    assert eps_x.device.type == DEVICE.type and eps_x.abs().mean() > 1e-3
    assert torch.allclose(rotate(eps_x, q), eps_x_q, atol=1e-4)
    assert torch.allclose(eps_h, eps_h_q, atol=1e-4)


def test_padding_is_ignored_and_positions_stay_com_free_on_the_device():
    model = perturbed_tiny_model().to(DEVICE)
    x, h, t, g, noise = on_device(*inputs(2, 7, model.cfg.feature_dim))
    pad = 4
    mask = torch.zeros(2, 7 + pad, dtype=torch.bool, device=DEVICE)
    mask[:, :7] = True
    big = lambda a: torch.cat([a, 100 * torch.randn(2, pad, a.shape[-1], device=DEVICE)], 1)
    with torch.no_grad():
        eps_x, eps_h = model(x, h, t, None, haar=g, orientation_noise=noise)
        eps_xp, eps_hp = model(big(x), big(h), t, mask, haar=g, orientation_noise=big(noise))
    assert torch.allclose(eps_xp[:, :7], eps_x, atol=1e-4) and torch.allclose(eps_hp[:, :7], eps_h, atol=1e-4)
    assert torch.all(eps_xp[:, 7:] == 0) and torch.all(eps_hp[:, 7:] == 0)
    assert eps_x.sum(dim=1).abs().max() < 1e-4


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped model")
def test_the_shipped_network_computes_on_the_device_what_it_computes_on_the_cpu():
    # The same draws on both: differences are the device's arithmetic alone (TF32 is off by
    # default in torch for matrix products; bf16 autocast is what `generate` uses on CUDA).
    from symdiff_cli.engine.release import load_release

    release = load_release(str(SHIPPED), "cpu", show_progress=False, load_guide=False)
    reference_model = release.model.double()
    x, h, t, g, noise = inputs(16, 18, release.cfg.feature_dim, dtype=torch.float64)
    with torch.no_grad():
        ref_x, ref_h = reference_model(x, h, t, None, haar=g, orientation_noise=noise)
        model = reference_model.float().to(DEVICE)
        args = on_device(x.float(), h.float(), t, g.float(), noise.float())
        fp32_x, fp32_h = model(*args[:3], None, haar=args[3], orientation_noise=args[4])
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            bf16_x, bf16_h = model(*args[:3], None, haar=args[3], orientation_noise=args[4])

    def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double().cpu() - b).norm() / b.norm())

    assert relative_error(fp32_x, ref_x) < 1e-4 and relative_error(fp32_h, ref_h) < 1e-4
    assert relative_error(bf16_x, ref_x) < 0.05 and relative_error(bf16_h, ref_h) < 0.05


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped model")
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_default_sampler_runs_on_the_device_reproducibly(precision):
    # The release's own sampler (both guides, restart sampling) as `symdiff generate` builds it.
    from symdiff_cli.engine.generate import GenerateOptions, release_sampler
    from symdiff_cli.engine.release import load_release

    release = load_release(str(SHIPPED), DEVICE, show_progress=False)
    opts = GenerateOptions(n=24, out="unused.npz", steps=20, precision=precision, quiet=True)
    sampler, sample_config, _ = release_sampler(opts, release, DEVICE)
    assert sample_config.autocast_bf16 == (precision == "bf16") and sample_config.restart.rounds > 0
    first = sampler.sample_batch(16, 24, 20, seed=3)
    again = sampler.sample_batch(16, 24, 20, seed=3)
    other = sampler.sample_batch(16, 24, 20, seed=4)
    positions = np.stack([m.positions for m in first])
    assert positions.shape == (24, 16, 3) and np.isfinite(positions).all()
    assert np.abs(positions.mean(axis=1)).max() < 1e-3  # centred
    assert all(np.array_equal(a.positions, b.positions) and np.array_equal(a.atomic_numbers, b.atomic_numbers)
               for a, b in zip(first, again))
    assert not np.array_equal(positions, np.stack([m.positions for m in other]))
    # Chemistry is judged elsewhere; a sampler gone wrong shows as absurd distances already.
    nearest = [np.sort(np.linalg.norm(p[:, None] - p[None], axis=-1), axis=1)[:, 1].max() for p in positions]
    assert float(np.median(nearest)) < 2.0  # every atom has a neighbour within bonding reach


def tiny_training_data(path: Path) -> Path:
    """32 small molecules (water, ammonia, methane, hydrogen cyanide, formaldehyde), written out
    by hand and turned at random: training data without RDKit or QM9."""
    shapes = {
        (8, 1, 1): [[0, 0, 0.117], [0, 0.757, -0.469], [0, -0.757, -0.469]],
        (7, 1, 1, 1): [[0, 0, 0.112], [0, 0.939, -0.261], [0.813, -0.470, -0.261], [-0.813, -0.470, -0.261]],
        (6, 1, 1, 1, 1): [[0, 0, 0], [0.629, 0.629, 0.629], [-0.629, -0.629, 0.629], [-0.629, 0.629, -0.629],
                          [0.629, -0.629, -0.629]],
        (1, 6, 7): [[0, 0, -1.066], [0, 0, 0], [0, 0, 1.156]],
        (6, 8, 1, 1): [[0, 0, 0], [0, 0, 1.205], [0, 0.943, -0.587], [0, -0.943, -0.587]],
    }
    rng = np.random.default_rng(0)
    positions, numbers, counts = [], [], []
    for k in range(32):
        z, xyz = list(shapes.items())[k % len(shapes)]
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        positions.append(np.asarray(xyz) @ q.T)
        numbers.extend(z)
        counts.append(len(z))
    np.savez(path, positions=np.concatenate(positions), atomic_numbers=np.asarray(numbers),
             num_atoms=np.asarray(counts))
    return path


def test_training_on_the_device_learns_resumes_and_keeps_fp32_weights(tmp_path):
    # --precision auto: bf16 autocast on CUDA (fp32 on CPUs), the fused optimiser on both.
    from symdiff_cli.engine.metrics_log import read_metrics
    from symdiff_cli.engine.train import train
    from symdiff_cli.engine.train_config import TrainConfig

    data = tiny_training_data(tmp_path / "tiny.npz")

    def run(out: str, steps: int) -> None:
        config = TrainConfig(out=str(tmp_path / out), data=[str(data)], batch_size=16, lr=3e-3, warmup_steps=0,
                             log_every=5, ema_decay=0.99, seed=0, threads=1, device=str(DEVICE), max_steps=steps)
        fresh = not (tmp_path / out).exists()
        train(config, model_config_from_preset("tiny") if fresh else None, console_print=lambda s: None)

    run("a", 60)
    run("b", 30)
    run("b", 60)
    loss = lambda out: {r["step"]: r["loss"] for r in read_metrics(tmp_path / out / "metrics.jsonl")
                        if "loss" in r and "event" not in r}
    a, b = loss("a"), loss("b")
    steps = sorted(a)
    assert all(math.isfinite(v) for v in a.values())
    assert sum(a[s] for s in steps[-3:]) < sum(a[s] for s in steps[:3]), a  # it learns
    later = [s for s in steps if s > 30]
    assert later and all(s in b for s in later)  # the resumed run logs the same steps
    ck_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    ck_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ck_a["state"]["step"] == ck_b["state"]["step"] == 60
    assert all(v.dtype == torch.float32 for v in ck_a["ema"].values())
    # A resume restores weights, optimiser state, data order and random streams: on a CPU the two
    # runs are equal to the bit; GPU kernels (attention's backward) may add rounding differences.
    tolerance = 0.0 if DEVICE.type == "cpu" else 1e-2
    for key, value in ck_a["ema"].items():
        difference = float((value - ck_b["ema"][key]).norm())
        assert difference <= tolerance * max(float(value.norm()), 1e-6), key
