"""Turning a --device option into a torch device, the same way for every command."""

from __future__ import annotations

import re

import torch

from symdiff_cli.errors import SymdiffError, UsageError

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when PyTorch sees a GPU, else CPU), cpu, cuda or cuda:N."""
    if not _DEVICE.fullmatch(name):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SymdiffError(f"--device {name}: no CUDA device is available (PyTorch sees none)")
    return torch.device(name)
