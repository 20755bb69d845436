"""Training checkpoints: one torch file with everything needed to continue a run exactly.

Saved with torch.save and loaded only with `weights_only=True`, so a checkpoint cannot run
code when opened. Writes go to a temporary file that is renamed into place: a crash or a
SIGKILL leaves the previous checkpoint intact.

`save_checkpoint` stores a SHA-256 of the checkpoint's content (every tensor's bytes, dtype and
shape, and every other value) under `sha256`; `load_checkpoint` recomputes it. A flipped byte in
the weights still unpickles into plausible numbers, so without it a damaged checkpoint would
resume or export without complaint. Checkpoints written before the digest have none and load
as before.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.atomic import atomic_output

CHECKPOINT_NAME = "checkpoint.pt"
CHECKSUM_KEY = "sha256"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to `path` atomically (fsynced, renamed into place), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb") as f:
        torch.save(obj, f)


def _feed(digest: Any, obj: Any) -> None:
    # Type tags and lengths keep distinct structures from hashing alike (["ab"] vs ["a", "b"]).
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(b"D%d" % len(obj))
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(b"L%d" % len(obj))
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(b"V" + repr(obj).encode() + b"\0")


def content_sha256(ckpt: dict[str, Any]) -> str:
    """The SHA-256 of a checkpoint's content, its own `sha256` entry left out."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in ckpt.items() if key != CHECKSUM_KEY})
    return digest.hexdigest()


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a training checkpoint atomically, with the digest `load_checkpoint` verifies."""
    atomic_torch_save({**ckpt, CHECKSUM_KEY: content_sha256(ckpt)}, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checked training checkpoint (a file, or the run directory holding checkpoint.pt)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise SymdiffError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise SymdiffError(f"checkpoint {path} is empty (0 bytes): it was never written completely")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable, truncated, or needs unpickling of arbitrary objects
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"
        if not is_zip:  # torch's own message for these is a bare number ("101": the byte it found)
            raise SymdiffError(f"{path} is not a PyTorch checkpoint (a training run's checkpoint.pt is a zip "
                               "archive)") from None
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        # torch's long explanations would be cut mid-sentence; its short ones name the damage.
        reason = f" ({first_line})" if first_line and len(first_line) <= 120 else ""
        raise SymdiffError(f"cannot read checkpoint {path}: it is truncated or damaged{reason}") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "ema" not in ckpt:
        raise SymdiffError(f"{path} is not a symdiff training checkpoint")
    if CHECKSUM_KEY in ckpt and content_sha256(ckpt) != ckpt[CHECKSUM_KEY]:
        raise SymdiffError(f"checkpoint {path} is damaged: its content does not match its SHA-256")
    return ckpt
