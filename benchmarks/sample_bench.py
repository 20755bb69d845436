"""Sampling throughput: molecules per second over batch sizes and step counts, CPU and CUDA.

    python benchmarks/sample_bench.py                       # shipped model (or untrained "small")
    python benchmarks/sample_bench.py --model weights/qm9 --devices cuda --batch-sizes 256,1024 --steps 100,1000

Throughput does not depend on the weights, so without a shipped model an untrained network of
the `small` preset (or --preset) is timed. Each configuration samples one batch of molecules
with --num-atoms atoms (default 18, about the QM9 mean) after a warm-up batch; the rate is
batch size / wall time, and "ms/step" is the time of one denoising step of the whole batch.
Metrics are not computed: this times the network and the diffusion loop only.
"""

from __future__ import annotations

import argparse
import time

import torch


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _load(model_spec: str | None, preset: str, device: torch.device):
    """(model, cfg, description): a release, else an untrained preset network."""
    from symdiff_cli.engine.release import load_release
    from symdiff_cli.errors import SymdiffError
    from symdiff_cli.model.config import model_config_from_preset
    from symdiff_cli.model.dit import SymmetrisedDenoiser

    try:
        release = load_release(model_spec, device, show_progress=False)
        return release.model, release.cfg, f"release {release.path}"
    except SymdiffError as err:
        if model_spec is not None:
            raise SystemExit(f"Error: {err}") from None
    torch.manual_seed(0)
    cfg = model_config_from_preset(preset)
    return SymmetrisedDenoiser(cfg).to(device).eval(), cfg, f"untrained '{preset}' preset (no shipped model)"


def _time_batch(sampler, num_atoms: int, batch_size: int, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    sampler.sample_batch(num_atoms, batch_size, steps, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="release name, directory or Hub id (default: shipped qm9)")
    parser.add_argument("--preset", default="small", help="untrained preset when no model is shipped")
    parser.add_argument("--devices", default=None, help="comma list of cpu,cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--batch-sizes", default=None, help="comma list (default CPU 32,128; CUDA 256,1024)")
    parser.add_argument("--steps", default=None, help="comma list (default CPU 10,50; CUDA 100,1000)")
    parser.add_argument("--num-atoms", type=int, default=18)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the network (CUDA, or a CPU with AMX / AVX-512 BF16)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from symdiff_cli.engine.sampling import Sampler
    from symdiff_cli.model.dit import count_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    console = Console()
    table = Table(title=f"symdiff sampling throughput ({args.num_atoms} atoms per molecule)")
    for column in ("device", "batch", "steps", "seconds", "molecules/s", "ms/step"):
        table.add_column(column, justify="right")
    for device_name in devices:
        device = torch.device(device_name)
        if device.type == "cuda" and not torch.cuda.is_available():
            console.print("[yellow]CUDA not available: skipped[/]")
            continue
        model, cfg, description = _load(args.model, args.preset, device)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        console.print(f"{label}: {description}, {count_parameters(model):,} parameters")
        sampler = Sampler(model, cfg, device, autocast_bf16=args.bf16)
        cuda = device.type == "cuda"
        batch_sizes = _int_list(args.batch_sizes) if args.batch_sizes else ([256, 1024] if cuda else [32, 128])
        step_counts = _int_list(args.steps) if args.steps else ([100, 1000] if cuda else [10, 50])
        _time_batch(sampler, args.num_atoms, min(batch_sizes), 2, device)  # warm-up: allocator, kernels
        for batch_size in batch_sizes:
            for steps in step_counts:
                seconds = _time_batch(sampler, args.num_atoms, batch_size, steps, device)
                table.add_row(label, str(batch_size), str(steps), f"{seconds:.2f}", f"{batch_size / seconds:.1f}",
                              f"{1000 * seconds / (steps + 1):.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
