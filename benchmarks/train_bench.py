"""Training throughput (QM9 molecules per second) per preset on this machine.

Uses the real QM9 train split when its cache exists (or --qm9), otherwise random molecules with
QM9's atom-count distribution (throughput depends on sizes, not on coordinates). Prints a table.

    python benchmarks/train_bench.py --presets small paper --batch-size 64 --steps 30
    python benchmarks/train_bench.py --presets small paper --precisions fp32 bf16 --optimizers fused foreach

--precisions: bf16 runs the step under bfloat16 autocast, as `symdiff train --precision bf16`.
--optimizers: fused is the trainer's AMSGrad Adam (engine/optim.py); foreach is the same update
as one multi-tensor call per operation, what the trainer used before.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from symdiff_cli.chem.elements import QM9
from symdiff_cli.data.batching import MoleculeTensors, SizeGroupedBatches
from symdiff_cli.engine.optim import make_optimizer
from symdiff_cli.io.molecule import PackedMolecules
from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.diffusion import Batch, NoiseSchedule, VPDiffusion
from symdiff_cli.model.dit import SymmetrisedDenoiser, count_parameters

# QM9 train split atom-count histogram shape (sizes 18-20 dominate); only used without the cache.
_QM9_SIZES = np.array([12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27])
_QM9_WEIGHTS = np.array([1, 2, 4, 6, 9, 13, 17, 15, 12, 8, 5, 3, 2, 1, 1, 1], dtype=float)


def random_qm9_like(n: int, seed: int = 0) -> PackedMolecules:
    rng = np.random.default_rng(seed)
    sizes = rng.choice(_QM9_SIZES, n, p=_QM9_WEIGHTS / _QM9_WEIGHTS.sum())
    total = int(sizes.sum())
    z = rng.choice([1, 6, 7, 8, 9], total, p=[0.5, 0.35, 0.06, 0.08, 0.01])
    return PackedMolecules(rng.normal(size=(total, 3)) * 1.5, z, sizes)


def load_data(use_qm9: bool) -> tuple[PackedMolecules, str]:
    if use_qm9:
        from symdiff_cli.data.qm9 import qm9_split

        return qm9_split("train"), "QM9 train split"
    return random_qm9_like(20000), "random QM9-sized molecules"


def bench(preset: str, orientation_kernel: str, packed: PackedMolecules, batch_size: int, steps: int, warmup: int,
          precision: str = "fp32", optimizer: str = "fused") -> dict:
    torch.manual_seed(0)
    cfg = model_config_from_preset(preset, orientation_kernel=orientation_kernel)
    model = SymmetrisedDenoiser(cfg)
    if optimizer == "fused":
        opt = make_optimizer(model, lr=1e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, amsgrad=True, foreach=True)
    diffusion = VPDiffusion(NoiseSchedule(cfg.timesteps, cfg.noise_precision))
    data = MoleculeTensors(packed, QM9)
    batches = SizeGroupedBatches(packed.num_atoms, batch_size, seed=0).epoch(0)
    # Full batches only, so every preset sees the same molecule sizes.
    batches = [b for b in batches if len(b) == batch_size]
    mols, seconds = 0, 0.0
    for i in range(warmup + steps):
        idx = batches[i % len(batches)]
        x, h = data.gather(idx, cfg.norm_one_hot, cfg.norm_charge)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = diffusion.loss(model, Batch(x, h, None))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        if i >= warmup:
            seconds += time.perf_counter() - start
            mols += len(idx)
    return {"preset": preset, "orientation_kernel": orientation_kernel, "params": count_parameters(model),
            "precision": precision, "optimizer": optimizer, "mol_per_s": mols / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--orientation-kernel", default="learned")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--qm9", action="store_true", help="use the real QM9 train split (builds the cache if needed)")
    ap.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    ap.add_argument("--optimizers", nargs="+", choices=("fused", "foreach"), default=["fused"])
    args = ap.parse_args()
    packed, source = load_data(args.qm9)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {source}")
    print(f"{'preset':8} {'kernel':8} {'params':>12} {'precision':>9} {'optimizer':>9} {'mol/s':>10}")
    for preset in args.presets:
        for precision in args.precisions:
            for optimizer in args.optimizers:
                r = bench(preset, args.orientation_kernel, packed, args.batch_size, args.steps, args.warmup,
                          precision, optimizer)
                print(f"{r['preset']:8} {r['orientation_kernel']:8} {r['params']:>12,} {precision:>9} {optimizer:>9} "
                      f"{r['mol_per_s']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
