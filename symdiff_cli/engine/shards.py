"""Shards and batch plans of `symdiff generate`.

Shard I of K derives its own seed from (seed, I, K), so shards of a job array never share a
random stream, and it generates its own share of n (n split as evenly as possible). Every batch
of the plan carries its own seed, so the file is the same however the run is scheduled.
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping

import numpy as np

from symdiff_cli.errors import UsageError


def parse_shard(text: str | None, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(index, count) from "I/K", else from a Slurm job array, else (0, 1).

    Slurm numbers array tasks from SLURM_ARRAY_TASK_MIN (often 0 or 1), so the index is the
    task id minus that minimum; SLURM_ARRAY_TASK_COUNT is the number of tasks.
    """
    environ = os.environ if environ is None else environ
    if text is None or not text.strip():
        task_id, task_count = environ.get("SLURM_ARRAY_TASK_ID"), environ.get("SLURM_ARRAY_TASK_COUNT")
        if task_id is None or task_count is None:
            return 0, 1
        try:
            index = int(task_id) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = int(task_count)
        except ValueError:
            raise UsageError(
                f"cannot read the Slurm job array (SLURM_ARRAY_TASK_ID={task_id!r}, "
                f"SLURM_ARRAY_TASK_COUNT={task_count!r}); pass --shard I/K"
            ) from None
        source = f"the Slurm job array (task {task_id} of {task_count})"
    else:
        parts = text.strip().split("/")
        try:
            index, count = (int(p) for p in parts)
        except ValueError:
            raise UsageError(f"--shard must look like I/K (e.g. 0/4), not {text!r}") from None
        source = f"--shard {text}"
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"{source}: shard index must be in 0..K-1 with K >= 1, got {index}/{count}")
    return index, count


def shard_share(n: int, index: int, count: int) -> int:
    """Molecules shard `index` of `count` generates: n split as evenly as possible."""
    return n // count + (1 if index < n % count else 0)


def shard_seed_sequence(seed: int, index: int, count: int) -> np.random.SeedSequence:
    """The root of all randomness of one shard; distinct (seed, I, K) give independent streams."""
    return np.random.SeedSequence([int(seed), int(index), int(count)])


# Molecules planned at a time. A shard of up to this many molecules gets the plan it always had
# (every atom count drawn, then grouped by size); a larger one is planned chunk by chunk, so that
# memory follows the chunk and the first batch starts at once: planning --n 10^9 up front took
# 20 GB and 40 s before a single molecule.
PLAN_CHUNK = 1 << 20


def iter_plan_for_shard(histogram: dict[int, int], n: int, num_atoms: int | None, batch_size: int,
                        seed: int, shard: tuple[int, int],
                        chunk: int = PLAN_CHUNK) -> Iterator[tuple[int, int, int]]:
    """The batches (atom count, batch size, seed) of one shard, planned `chunk` molecules at a
    time: atom counts fixed or drawn from the histogram, grouped by size within each chunk."""
    from symdiff_cli.engine.sampling import draw_atom_counts, plan_batches

    counts_seq, batches_seq = shard_seed_sequence(seed, *shard).spawn(2)
    counts_rng = np.random.default_rng(counts_seq)
    plan_seed = int(batches_seq.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)
    for index, start in enumerate(range(0, n, chunk)):
        size = min(chunk, n - start)
        if num_atoms is not None:
            counts = np.full(size, int(num_atoms), dtype=np.int64)
        else:
            counts = draw_atom_counts(histogram, size, counts_rng)
        # The first chunk keeps the seed of the whole-run plan; later ones get their own streams.
        chunk_seed = plan_seed if index == 0 else int(
            np.random.SeedSequence(plan_seed, spawn_key=(index,)).generate_state(1, dtype=np.uint64)[0]
            & 0x7FFFFFFFFFFFFFFF)
        yield from plan_batches(counts, batch_size, chunk_seed).batches


def plan_for_shard(histogram: dict[int, int], n: int, num_atoms: int | None, batch_size: int,
                   seed: int, shard: tuple[int, int]):
    """The whole SamplePlan of one shard (see iter_plan_for_shard; for small n and tests)."""
    from symdiff_cli.engine.sampling import SamplePlan

    return SamplePlan(list(iter_plan_for_shard(histogram, n, num_atoms, batch_size, seed, shard)))
