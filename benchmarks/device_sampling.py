"""Whole sampling runs of a release on one device, timed, with the molecules kept for evaluation.

    python benchmarks/device_sampling.py --n 1000 10000 --precision bf16 --out-dir runs/gpu
    symdiff evaluate runs/gpu/molecules_1000.npz --dataset qm9        # here, where RDKit is

Each --n is one run of the release's own sampler (its guides, guidance interval, restart sampling
and, unless --steps says otherwise, its default step count on the device) over the batch plan
`symdiff generate --n N --seed S` draws, so the molecules are those `generate` writes with the
same options on that device. It needs neither RDKit nor QM9, so it runs on a bare GPU image; the
molecules are written as npz (positions, atomic_numbers, num_atoms) for `symdiff evaluate` on a
machine that has RDKit. Times: loading the release, one untimed warm-up batch (CUDA's context and
kernel selection), then each run from its first batch to its last molecule on the host.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from symdiff_cli.engine.device import resolve_device
from symdiff_cli.engine.generate import GenerateOptions, release_sampler
from symdiff_cli.engine.release import load_release
from symdiff_cli.engine.shards import plan_for_shard
from symdiff_cli.io.writer import write_molecules


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="release (default: the shipped weights/qm9)")
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000], help="molecules per run")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (default: the release's for the device)")
    parser.add_argument("--batch-size", type=int, default=None, help="as generate's --batch-size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's choice)")
    parser.add_argument("--out-dir", type=Path, required=True, help="molecules_N.npz and sampling.json go here")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)

    start = time.perf_counter()
    release = load_release(args.model, device, show_progress=False)
    synchronise(device)
    load_seconds = time.perf_counter() - start
    summary = {"model": str(release.path), "device": str(device), "precision": args.precision,
               "torch": torch.__version__, "python": platform.python_version(),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
               "load_seconds": round(load_seconds, 2), "runs": []}

    opts = GenerateOptions(n=1, out="unused.npz", steps=args.steps, seed=args.seed, precision=args.precision,
                           batch_size=args.batch_size, quiet=True, model=args.model)
    sampler, sample_config, batch_size = release_sampler(opts, release, device)
    start = time.perf_counter()
    sampler.sample_batch(18, min(batch_size, 64), sample_config.steps, seed=12345)
    synchronise(device)
    summary["warm_up_seconds"] = round(time.perf_counter() - start, 2)
    summary.update(steps=sample_config.steps, batch_size=batch_size, restart_rounds=sample_config.restart.rounds,
                   guidance_weight=sample_config.guidance_weight, autocast_bf16=sample_config.autocast_bf16)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}), flush=True)

    for n in args.n:
        plan = plan_for_shard(release.histogram, n, None, batch_size, args.seed, (0, 1))
        mols: list = []
        start = time.perf_counter()
        for batch in sampler.sample(plan, sample_config.steps):
            mols.extend(batch)
        synchronise(device)
        seconds = time.perf_counter() - start
        path = args.out_dir / f"molecules_{n}.npz"
        finite = [m for m in mols if np.isfinite(m.positions).all()]  # generate leaves the others out too
        write_molecules(str(path), finite, "npz")
        run = {"n": n, "batches": len(plan.batches), "seconds": round(seconds, 2),
               "molecules_per_second": round(n / seconds, 1), "finite": len(finite), "molecules": path.name}
        if device.type == "cuda":
            run["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        summary["runs"].append(run)
        print(json.dumps(run), flush=True)
    (args.out_dir / "sampling.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
