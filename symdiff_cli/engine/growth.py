"""Growing a released model: more transformer blocks, self-conditioning or property conditioning,
that start as no-ops."""

from __future__ import annotations

import dataclasses
from typing import Collection

import torch

from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.config import ModelConfig
from symdiff_cli.model.dit import CONDITION_PREFIX, SELF_COND_PREFIX


GROWABLE_DEPTHS = ("depth", "orientation_depth")


def model_config_from_release(release_cfg: ModelConfig, requested: ModelConfig,
                              explicit: Collection[str] | None = None) -> ModelConfig:
    """The model a run started from a release trains: the release's own, or a deeper one.

    `explicit` names the model settings the user set (`--set model.depth=8`). Only those of
    `depth` / `orientation_depth` can change the model, and only upwards: the release's blocks keep
    their weights and the extra blocks are appended. Everything else, the preset's defaults
    included, is the release's, so continuing a depth-8 release needs no --set; another value
    the user set for it, or another dataset's elements, is refused. Without
    `explicit` (library callers), a request that differs from the release only in depths is
    taken as the growth it asks for.
    """
    if tuple(release_cfg.atom_types) != tuple(requested.atom_types):
        # Its input and output layers are sized for its own elements; a forward would fail later.
        raise SymdiffError(
            f"--init-from: the release models {release_cfg.dataset} ({' '.join(release_cfg.atom_types)}), this run "
            f"trains on {requested.dataset} ({' '.join(requested.atom_types)}): start from a release of the same "
            f"dataset, or pass --dataset {release_cfg.dataset}")
    conditioning = ("conditions", "condition_mean", "condition_std")
    if requested.conditions and not release_cfg.conditions:
        # Property conditioning can be added (its embedding starts at zero), with the new data's
        # normalisation.
        release_cfg = dataclasses.replace(release_cfg, **{k: getattr(requested, k) for k in conditioning})
    elif requested.conditions != release_cfg.conditions and requested.conditions:
        raise SymdiffError(f"--init-from cannot change the properties a model is conditioned on: the release "
                           f"reads {', '.join(release_cfg.conditions)}")
    elif release_cfg.conditions:
        requested = dataclasses.replace(requested, **{k: getattr(release_cfg, k) for k in conditioning})
    release, wanted = dataclasses.asdict(release_cfg), dataclasses.asdict(requested)
    differing = {k for k in release if release[k] != wanted.get(k)}
    if explicit is None:
        explicit = differing if differing <= {*GROWABLE_DEPTHS, "self_condition"} else set()
    if "self_condition" in explicit and "self_condition" in differing:
        # Self-conditioning can be added (its embedding starts at zero), not removed.
        if not requested.self_condition:
            raise SymdiffError("--init-from can add self-conditioning, not remove it: the release reads "
                               "its own estimates (model.self_condition=true)")
        release_cfg = dataclasses.replace(release_cfg, self_condition=True)
    fixed = sorted(k for k in differing & set(explicit) if k not in (*GROWABLE_DEPTHS, "self_condition", *conditioning))
    if fixed:
        raise SymdiffError(
            "--init-from keeps the release's model, which only grows in depth: "
            + ", ".join(f"model.{k}={wanted[k]} differs from its {release[k]}" for k in fixed))
    grow = sorted(k for k in GROWABLE_DEPTHS if k in explicit and k in differing)
    for key in grow:
        if wanted[key] < release[key]:
            raise SymdiffError(
                f"--init-from can add blocks, not remove them: model.{key}={wanted[key]} is below "
                f"the release's {release[key]}")
    return dataclasses.replace(release_cfg, **{k: wanted[k] for k in grow})


def load_release_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a release into `model`, which may have more transformer blocks; returns new keys.

    Blocks are adaLN-Zero: a fresh block's gates are zero, so it adds nothing to the residual
    stream, and the grown model starts as exactly the function the release computed.
    """
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise SymdiffError(f"release weights do not fit the model: {result.unexpected_keys[:3]}")
    # A self-conditioning embedding is zero-initialised too: added to a release, it changes nothing.
    not_block = [k for k in result.missing_keys if ".transformer.blocks." not in k
                 and not k.startswith((SELF_COND_PREFIX, CONDITION_PREFIX))]
    if not_block:
        raise SymdiffError(f"release weights lack tensors of the model: {not_block[:3]}")
    return list(result.missing_keys)
