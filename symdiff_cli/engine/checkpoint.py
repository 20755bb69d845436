"""Training checkpoints: one torch file with everything needed to continue a run exactly.

Saved with torch.save and loaded only with `weights_only=True`, so a checkpoint cannot run
code when opened. Writes go to a temporary file that is renamed into place: a crash or a
SIGKILL leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.atomic import atomic_output

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to `path` atomically (fsynced, renamed into place), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise SymdiffError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable, truncated, or needs unpickling of arbitrary objects
        raise SymdiffError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "ema" not in ckpt:
        raise SymdiffError(f"{path} is not a symdiff training checkpoint")
    return ckpt
