"""Where a sampling run's time goes, and whether another batch layout would save any of it.

    python benchmarks/sampling_profile.py calls --n 1000 --seed 0          # time per network and batch size
    python benchmarks/sampling_profile.py calls --device cuda --precision bf16 --n 1000
    python benchmarks/sampling_profile.py ops --batch 256 --num-atoms 18   # operators of one forward
    python benchmarks/sampling_profile.py layouts --n 1000 --seed 1 --rounds 2

`calls` samples the plan `symdiff generate --n N --seed S` draws with the release's default
sampler and times every network call: per network (main, guides) and per batch-size class, with
the atoms it processed. `ops` runs the torch profiler over forwards of the main network at one
batch shape. `layouts` alternates whole runs of two batch layouts over the same atom counts:
`generate`'s (one atom count per batch, no padding) and mixed batches (adjacent atom counts padded
to the largest and masked, merged while the padding a merge adds is under --pad-tokens atoms,
the measured fixed cost of one call in atoms of work). Mixed batches draw other noise, so their
molecules differ; their stability is printed as a check that masking leaves the sampler intact.
Nothing else should run on the machine while it times. On CUDA every timed call ends with a
synchronisation, so each call is charged its own GPU time (and the run is a little slower than
`generate`'s). None of it needs RDKit; `layouts` counts stable molecules where RDKit is installed.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict

import torch

from device_sampling import synchronise  # benchmarks/device_sampling.py (this script's folder is on sys.path)

from symdiff_cli.engine.device import resolve_device
from symdiff_cli.engine.generate import GenerateOptions, release_sampler
from symdiff_cli.engine.release import load_release
from symdiff_cli.engine.sampling import decode
from symdiff_cli.engine.shards import plan_for_shard
from symdiff_cli.io.molecule import Molecule
from symdiff_cli.model.dit import SymmetrisedDenoiser

SIZE_CLASSES = (4, 16, 64, 160)  # upper bounds of the batch-size classes; larger ones form the last


def _size_class(batch: int) -> str:
    low = 1
    for high in SIZE_CLASSES:
        if batch <= high:
            return f"{low}-{high}"
        low = high + 1
    return f">{SIZE_CLASSES[-1]}"


def _release_sampler(args):
    device = resolve_device(args.device)
    opts = GenerateOptions(n=args.n, out="unused.sdf", seed=args.seed, model=args.model, quiet=True,
                           precision=args.precision)
    release = load_release(args.model, device, show_progress=False)
    sampler, sample_config, batch_size = release_sampler(opts, release, device)
    return release, sampler, args.steps or sample_config.steps, batch_size


def profile_calls(args) -> None:
    release, sampler, steps, batch_size = _release_sampler(args)
    device = sampler.device
    records = []
    original = SymmetrisedDenoiser.forward

    def timed_forward(self, x, h, t, *rest, **kwargs):
        synchronise(device)
        started = time.perf_counter()
        out = original(self, x, h, t, *rest, **kwargs)
        synchronise(device)
        records.append((f"hidden {self.cfg.hidden}, depth {self.cfg.depth}", x.shape[0], x.shape[0] * x.shape[1],
                        time.perf_counter() - started))
        return out

    plan = plan_for_shard(release.histogram, args.n, None, batch_size, args.seed, (0, 1))
    sampler.sample_batch(18, min(batch_size, 64), 2, seed=12345)  # warm-up (CUDA's context, kernel choice)
    SymmetrisedDenoiser.forward = timed_forward
    try:
        started = time.perf_counter()
        for _ in sampler.sample(plan, steps):
            pass
        total = time.perf_counter() - started
    finally:
        SymmetrisedDenoiser.forward = original
    network = sum(r[3] for r in records)
    print(f"{args.n} molecules on {device} ({args.precision}), {len(plan.batches)} batches of at most {batch_size}, "
          f"{steps} steps: {total:.1f} s, "
          f"{network:.1f} s in {len(records)} network calls")
    print("| network | calls | seconds | atoms processed | ms per 1,000 atoms |\n|---|---|---|---|---|")
    by_network = defaultdict(lambda: [0, 0.0, 0])
    for name, _, atoms, seconds in records:
        row = by_network[name]
        row[0], row[1], row[2] = row[0] + 1, row[1] + seconds, row[2] + atoms
    for name, (calls, seconds, atoms) in by_network.items():
        print(f"| {name} | {calls} | {seconds:.1f} | {atoms:,} | {1e6 * seconds / atoms:.1f} |")
    print("\n| molecules per call | calls | seconds | share of network time |\n|---|---|---|---|")
    by_size = defaultdict(lambda: [0, 0.0])
    for _, batch, _, seconds in records:
        row = by_size[_size_class(batch)]
        row[0], row[1] = row[0] + 1, row[1] + seconds
    for label in sorted(by_size, key=lambda s: int(s.strip(">").split("-")[0])):
        calls, seconds = by_size[label]
        print(f"| {label} | {calls} | {seconds:.1f} | {100 * seconds / network:.0f} % |")


def profile_ops(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    release, _, _, _ = _release_sampler(args)
    model = release.model
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.num_atoms, 3, generator=generator)
    x = (x - x.mean(dim=1, keepdim=True)).to(device)
    h = torch.randn(args.batch, args.num_atoms, model.cfg.feature_dim, generator=generator).to(device)
    t = torch.full((args.batch,), 300, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        for _ in range(3):
            model(x, h, t)
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(args.repeats):
                model(x, h, t)
            synchronise(device)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort_by, row_limit=20,
                                                             max_name_column_width=32, max_shapes_column_width=56))


def mixed_batches(counts: list[int], batch_size: int, pad_tokens: float) -> list[list[int]]:
    """Atom counts grouped largest first: the next count joins the current batch while the padding
    that adds (its molecules times the atoms they lack) is under `pad_tokens` and it fits."""
    batches: list[list[int]] = []
    for count, k in sorted(Counter(counts).items(), reverse=True):
        current = batches[-1] if batches else None
        if current and len(current) + k <= batch_size and k * (current[0] - count) < pad_tokens:
            current.extend([count] * k)
            continue
        for start in range(0, k, batch_size):
            batches.append([count] * min(batch_size, k - start))
    return batches


def _run_mixed(release, sampler, steps: int, batches: list[list[int]], seed: int) -> list[Molecule]:
    cfg = release.cfg
    device = sampler.device
    molecules = []
    for index, counts in enumerate(batches):
        sizes = torch.tensor(counts, device=device)
        mask = torch.arange(max(counts), device=device)[None, :] < sizes[:, None]
        generator = torch.Generator(device=device).manual_seed(seed * 1_000 + index)
        with torch.inference_mode():
            x, h = sampler.diffusion.sample(sampler._denoise, len(counts), max(counts), cfg.feature_dim, steps,
                                            generator=generator, device=device, mask=mask,
                                            spacing=sampler.spacing, restart=sampler.restart)
        # Decoded as generate decodes, then cut to each molecule's own atoms (the rest is padding).
        molecules += [Molecule(m.atomic_numbers[:n], m.positions[:n]) for m, n in zip(decode(x, h, cfg), counts)]
    return molecules


def _stable_count(molecules: list[Molecule]) -> str:
    """How many are stable, or '-' where RDKit is missing (a bare GPU image)."""
    try:
        from symdiff_cli.chem.metrics import evaluate_molecule
    except ImportError:
        return "-"
    return str(sum(evaluate_molecule(m).stable for m in molecules))


def compare_layouts(args) -> None:
    release, sampler, steps, batch_size = _release_sampler(args)
    plan = plan_for_shard(release.histogram, args.n, None, batch_size, args.seed, (0, 1))
    counts = [n for n, b, _ in plan.batches for _ in range(b)]
    mixed = mixed_batches(counts, batch_size, args.pad_tokens)
    print(f"{args.n} molecules: {len(plan.batches)} batches of one atom count, {len(mixed)} mixed batches")
    print("| round | layout | batches | seconds | stable molecules |\n|---|---|---|---|---|")
    for round_index in range(args.rounds):
        for layout in ("one atom count", "mixed"):
            synchronise(sampler.device)
            started = time.perf_counter()
            if layout == "mixed":
                molecules = _run_mixed(release, sampler, steps, mixed, args.seed)
            else:
                molecules = [m for batch in sampler.sample(plan, steps) for m in batch]
            seconds = time.perf_counter() - started
            stable = _stable_count(molecules)
            batches = len(mixed) if layout == "mixed" else len(plan.batches)
            print(f"| {round_index + 1} | {layout} | {batches} | {seconds:.1f} | {stable} of {len(molecules)} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("calls", "ops", "layouts"))
    parser.add_argument("--model", default=None, help="release (default: the shipped qm9)")
    parser.add_argument("--n", type=int, default=1000, help="molecules (calls, layouts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the release's)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="as generate's (auto: fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256, help="molecules per forward (ops)")
    parser.add_argument("--num-atoms", type=int, default=18, help="atoms per molecule (ops)")
    parser.add_argument("--repeats", type=int, default=5, help="profiled forwards (ops)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two layouts (layouts)")
    parser.add_argument("--pad-tokens", type=float, default=100.0,
                        help="merge while a merge pads fewer atoms than this (layouts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"calls": profile_calls, "ops": profile_ops, "layouts": compare_layouts}[args.what](args)


if __name__ == "__main__":
    main()
