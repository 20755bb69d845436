"""PyTorch's default CPU kernels against the ones the networks use (symdiff_cli/model/kernels.py).

    python benchmarks/cpu_kernels.py                        # all three tables, two threads
    python benchmarks/cpu_kernels.py networks --batches 4 32 128 --num-atoms 18
    python benchmarks/cpu_kernels.py products attention --threads 1

`products`: the token-wise linear layers of the release's main network at --batch molecules of
--num-atoms atoms, F.linear (PyTorch's BLAS) against oneDNN's operator. `attention`: the fused
kernel against the written-out one, without gradients (sampling), with gradients in float32 and
under bf16 autocast (training). `networks`: one forward of every network a release samples with
(main and guides) at each batch size, default kernels against ours, with the allocator setting
the CLI makes (engine/memory.py). Each figure is the median of --repeats timings, the two
variants alternating so that a drift of the machine's speed hits both. Nothing else should run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from symdiff_cli.engine.memory import keep_freed_memory
from symdiff_cli.engine.release import load_release
from symdiff_cli.model import kernels


def paired_medians(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median milliseconds of each, timed in turn after one warm-up call each."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for call, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            call()
            bucket.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def products(release, args) -> None:
    tokens = torch.randn(args.batch * args.num_atoms, release.cfg.hidden)
    print(f"\n| layer, {args.batch} x {args.num_atoms} tokens | shape | F.linear ms | oneDNN ms | ratio |")
    print("|---|---|---|---|---|")
    seen = set()
    for name, layer in release.model.backbone.named_modules():
        if not isinstance(layer, kernels.Linear) or layer.weight.shape in seen:
            continue
        seen.add(layer.weight.shape)
        x = torch.randn(tokens.shape[0], layer.in_features)
        with torch.no_grad():
            default, ours = paired_medians(
                lambda: F.linear(x, layer.weight, layer.bias),
                lambda: torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], ""),
                args.repeats)
        print(f"| {name} | {tuple(x.shape)} x {tuple(layer.weight.T.shape)} | {default:.3f} | {ours:.3f} | "
              f"{default / ours:.2f} |")


def attention(release, args) -> None:
    heads = release.cfg.heads
    dim = release.cfg.hidden // heads
    print(f"\n| attention, {heads} heads of {dim} | fused ms | written out ms | ratio |")
    print("|---|---|---|---|")
    cases = (("no gradients, fp32", args.batch, torch.float32, False),
             ("forward + backward, fp32", args.train_batch, torch.float32, True),
             ("forward + backward, bf16 autocast", args.train_batch, torch.bfloat16, True))
    for label, batch, dtype, grad in cases:
        qkv = [torch.randn(batch, heads, args.num_atoms, dim, requires_grad=grad) for _ in range(3)]

        def run(fused: bool) -> None:
            with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
                q, k, v = (t.to(dtype) for t in qkv)
                out = F.scaled_dot_product_attention(q, k, v) if fused else kernels.written_out_attention(q, k, v)
                if grad:
                    out.float().sum().backward()

        fused, written = paired_medians(lambda: run(True), lambda: run(False), args.repeats)
        print(f"| {label}, {batch} x {args.num_atoms} | {fused:.3f} | {written:.3f} | {fused / written:.2f} |")


def networks(release, args) -> None:
    nets = [("main", release.model)]
    if release.guide is not None:
        nets += [(f"guide {i + 1}", net) for i, net in enumerate(getattr(release.guide, "members", [release.guide]))]
    print(f"\n| network, {args.num_atoms} atoms | molecules | default kernels ms | ours ms | ratio |")
    print("|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    for batch in args.batches:
        x = torch.randn(batch, args.num_atoms, 3, generator=generator)
        x = x - x.mean(dim=1, keepdim=True)
        h = torch.randn(batch, args.num_atoms, release.cfg.feature_dim, generator=generator)
        t = torch.full((batch,), 300.0)
        for label, net in nets:
            def forward(defaults: bool) -> None:
                with torch.inference_mode(), (kernels.pytorch_default_kernels() if defaults else contextlib.nullcontext()):
                    net(x, h, t, generator=generator)

            default, ours = paired_medians(lambda: forward(True), lambda: forward(False), args.repeats)
            print(f"| {label} (hidden {net.cfg.hidden}, depth {net.cfg.depth}) | {batch} | {default:.2f} | "
                  f"{ours:.2f} | {default / ours:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", metavar="TABLE", help="products, attention, networks (default: all)")
    parser.add_argument("--model", default="qm9")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="molecules for products and attention")
    parser.add_argument("--train-batch", type=int, default=64, help="molecules for attention with gradients")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 32, 128, 256], help="molecules for networks")
    parser.add_argument("--num-atoms", type=int, default=18)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    tables = {"products": products, "attention": attention, "networks": networks}
    for table in args.tables:
        if table not in tables:
            parser.error(f"unknown table {table!r}: choose from {', '.join(tables)}")
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    release = load_release(args.model, show_progress=False)
    print(f"torch {torch.__version__}, {args.threads} threads, oneDNN linear: {kernels.onednn_linear_available()}")
    for table in args.tables or list(tables):
        tables[table](release, args)


if __name__ == "__main__":
    main()
