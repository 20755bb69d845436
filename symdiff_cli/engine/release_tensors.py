"""The weights of a release: checked against the network its config builds, and digested.

Loading checks every tensor name and shape against a freshly built network and names what
does not match, so a wrong or truncated download fails with one clear line instead of a shape
error deep inside PyTorch; a file whose SHA-256 no longer matches the one config.json records
(a flipped byte, which still parses and would sample garbage) is refused by name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from symdiff_cli.engine.release_layout import CONFIG_FILE, expected_tensor_shapes
from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.config import ModelConfig

# How many shape mismatches an error message lists before summarising the rest.
_MISMATCHES_SHOWN = 3


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as lowercase hex (read in chunks: weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _name_list(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def state_dict_mismatch(
    actual: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> str | None:
    """A one-line description of how tensor shapes `actual` differ from `expected`, or None."""
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    wrong_shape = [
        f"{name}: file {tuple(actual[name])} vs config {tuple(expected[name])}"
        for name in expected
        if name in actual and tuple(actual[name]) != tuple(expected[name])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s) ({_name_list(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) ({_name_list(unexpected)})")
    if wrong_shape:
        shown = "; ".join(wrong_shape[:_MISMATCHES_SHOWN])
        more = len(wrong_shape) - _MISMATCHES_SHOWN
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {shown}" + (f"; ... ({more} more)" if more > 0 else ""))
    return "; ".join(problems) if problems else None


def checked_tensors(state_dict: dict[str, torch.Tensor], cfg: ModelConfig, problem: str) -> dict[str, torch.Tensor]:
    """The tensors to write for `cfg`, named as the network names them; `problem` leads the error
    when their names or shapes do not fit it."""
    state_dict = _strip_wrapper_prefixes(dict(state_dict))
    mismatch = state_dict_mismatch({k: tuple(v.shape) for k, v in state_dict.items()}, expected_tensor_shapes(cfg))
    if mismatch:
        raise SymdiffError(f"{problem}: {mismatch}")
    # Contiguous private copies: safetensors refuses views and tensors that share storage.
    return {name: t.detach().to("cpu").contiguous().clone() for name, t in sorted(state_dict.items())}


def _strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DDP ("module.") and torch.compile ("_orig_mod.") wrap the network and prefix every name.
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(name.startswith(prefix) for name in state_dict):
            state_dict = {name[len(prefix):]: t for name, t in state_dict.items()}
    return state_dict


def read_weights(weights_path: Path, model_cfg: ModelConfig, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load the safetensors weights after checking every name and shape against the config and,
    when the release records one, the file's digest.

    The names and shapes come first: a weights file that does not fit its config is the more
    telling message. The digest then catches what still parses: flipped bytes in the data.
    """
    from safetensors import safe_open

    if not weights_path.is_file():
        raise SymdiffError(f"{weights_path.parent} is not a symdiff release: {weights_path.name} is missing")
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
            mismatch = state_dict_mismatch(shapes, expected_tensor_shapes(model_cfg))
            if mismatch:
                raise SymdiffError(f"the weights in {weights_path} do not match its {CONFIG_FILE}: {mismatch}")
            if expected_sha256 is not None and file_sha256(weights_path) != expected_sha256:
                raise SymdiffError(f"{weights_path} is damaged: its SHA-256 does not match the one in {CONFIG_FILE} "
                                   "(copy, download or export the release again)")
            tensors = {name: handle.get_tensor(name) for name in shapes}
    except SymdiffError:
        raise
    except Exception as err:  # safetensors raises its own error class, OSError or ValueError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SymdiffError(f"{weights_path} is not a readable safetensors file ({reason})") from None
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise SymdiffError(f"{weights_path}: tensor {name} has dtype {tensor.dtype}, expected floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise SymdiffError(f"{weights_path}: tensor {name} holds NaN or infinite values")
    return tensors


# One metadata key: safetensors writes the metadata map in a random order, so with two keys the
# same tensors could come out as two different files.
WEIGHTS_METADATA = {"format": "pt"}


def write_weights(path: Path, tensors: dict[str, torch.Tensor], previous: Path | None = None) -> None:
    """Write `tensors` as a safetensors file at `path`. When `previous` (the file this one
    replaces) holds exactly these tensors, its bytes are copied instead: rewriting a release to
    change a setting then leaves its weights files as they were, byte for byte (a changed file
    would add another copy of it to every clone of a repository that tracks it)."""
    if previous is not None and _holds_exactly(previous, tensors):
        shutil.copyfile(previous, path)
        return
    write_safetensors(path, tensors, WEIGHTS_METADATA)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file, written by Python: safetensors' own file writer reports a full disk
    as a SafetensorError, which would reach the user as a traceback, not a one-line OSError."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    with open(path, "wb") as handle:
        handle.write(data)


def _holds_exactly(path: Path, tensors: dict[str, torch.Tensor]) -> bool:
    from safetensors.torch import load_file

    if not path.is_file():
        return False
    try:
        stored = load_file(str(path))
    except Exception:  # an unreadable file is replaced, not reused
        return False
    return stored.keys() == tensors.keys() and all(
        stored[k].dtype == t.dtype and stored[k].shape == t.shape and torch.equal(stored[k], t.cpu())
        for k, t in tensors.items())
