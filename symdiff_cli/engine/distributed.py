"""Data-parallel training under torchrun: which process this is, and what the ranks agree on.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without it a run is one process of rank 0. Every
decision that ends a step differently on one rank (stopping, checkpointing, the learning rate
read from a clock) is taken by all ranks together, or the others would wait in a collective
forever.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from symdiff_cli.engine.device import resolve_device


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs and writes."""
        return self.rank == 0


def ranks_from_environment() -> Ranks:
    """The ranks torchrun set, or a single process."""
    return Ranks(rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                 world_size=int(os.environ.get("WORLD_SIZE", "1")))


def training_device(ranks: Ranks, requested: str) -> torch.device:
    """The device this process trains on; joins the process group when distributed (NCCL on
    GPUs, gloo on CPUs)."""
    if not ranks.distributed:
        return resolve_device(requested)
    device = torch.device(f"cuda:{ranks.local_rank}") if torch.cuda.is_available() and requested != "cpu" \
        else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def agree_with_rank0(ranks: Ranks, device: torch.device, checkpoint_due: bool, elapsed: float) -> tuple[bool, float]:
    """Rank 0's checkpoint decision and clock for all ranks: wall clocks differ, a rank that
    stops or checkpoints alone would leave the others waiting in a collective forever, and a
    cosine learning rate read from each rank's own clock would let the ranks' weights drift apart."""
    if not ranks.distributed:
        return checkpoint_due, elapsed
    t = torch.tensor([float(checkpoint_due), elapsed], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    due, rank0_elapsed = t.tolist()
    return bool(due), rank0_elapsed


def agree_on_signal(ranks: Ranks, device: torch.device, received: int | None) -> int | None:
    """The stop signal any rank received (the largest number if several): every rank stops
    at the same step, or those still training would wait for the others forever."""
    if not ranks.distributed:
        return received
    t = torch.tensor([received or 0], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item()) or None


def rng_states_of_all_ranks(ranks: Ranks, device: torch.device) -> tuple[list[Any], list[Any]]:
    """Every rank's CPU and CUDA random states (the CUDA list empty on CPUs), for a checkpoint
    from which each rank resumes its own stream."""
    rng = [torch.get_rng_state()]
    cuda_rng = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    if ranks.distributed:
        gathered: list[Any] = [None] * ranks.world_size
        dist.all_gather_object(gathered, (rng[0], cuda_rng[0] if cuda_rng else None))
        rng = [g[0] for g in gathered]
        cuda_rng = [g[1] for g in gathered] if cuda_rng else []
    return rng, cuda_rng


def parameter_checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() * (i + 1) for i, p in enumerate(model.parameters())))


def ranks_in_sync(ranks: Ranks, model: torch.nn.Module) -> tuple[bool, list[float]]:
    """Whether every rank ends with the same weights, and each rank's parameter checksum."""
    sums: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(sums, parameter_checksum(model))
    return all(abs(s - sums[0]) <= 1e-6 * max(1.0, abs(sums[0])) for s in sums), sums


def wait_for_all_ranks() -> None:
    dist.barrier()


def leave_process_group() -> None:
    """Leave the process group, after the caller has dropped its DistributedDataParallel wrapper.

    DDP's reducer holds the process group: freed here, destroy_process_group joins the gloo
    threads while Python is alive. Left to interpreter shutdown, a thread outliving it aborted a
    finished run (exit code -6) in about one torchrun launch in twelve.
    """
    gc.collect()
    dist.destroy_process_group()
