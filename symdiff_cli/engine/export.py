"""Training checkpoint -> release: the export `symdiff convert runs/NAME/checkpoint.pt OUT` runs.

It sits above both the release format (engine/release.py) and training (engine/train.py, whose
TrainConfig defaults decide which settings the release's provenance records), so neither of
those two needs the other's export side.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from symdiff_cli.engine.checkpoint import load_checkpoint
from symdiff_cli.engine.release import save_release
from symdiff_cli.engine.release_config import Guide
from symdiff_cli.engine.train_config import TrainConfig
from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.config import ModelConfig


def convert_checkpoint_to_release(
    checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike, card_text: str | None = None,
    weights: str = "ema", guide: Guide | None = None,
) -> Path:
    """Export the EMA weights (or with weights="raw" the last step's own) of a training
    checkpoint (runs/NAME/checkpoint.pt or its directory) as a release directory, with `guide`
    if given; returns its path."""
    if weights not in ("ema", "raw"):
        raise SymdiffError(f"weights must be ema or raw, not {weights!r}")
    ckpt = load_checkpoint(checkpoint_path)
    try:
        model_cfg = ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise SymdiffError(f"{checkpoint_path}: invalid model config ({err})") from None
    histogram = ckpt.get("atom_count_histogram")
    if not histogram:
        raise SymdiffError(f"{checkpoint_path} has no atom-count histogram; cannot make a release from it")
    state = ckpt.get("state") or {}
    train_cfg = ckpt.get("train_config") or {}
    provenance: dict[str, Any] = {
        "source": "symdiff train",
        "step": int(state.get("step", 0)),
        "epoch": int(state.get("epoch", 0)),
        "train_seconds": round(float(state.get("elapsed", 0.0)), 1),
    }
    if "cpu_time" in state:
        provenance["train_cpu_seconds"] = round(float(state["cpu_time"]), 1)
    for key in ("preset", "batch_size", "lr", "ema_decay", "seed"):
        if key in train_cfg:
            provenance[key] = train_cfg[key]
    # Under torchrun batch_size is per process and the CPU time is rank 0's: the process count
    # is what turns them into the run's totals.
    if int(ckpt.get("world_size", 1)) > 1:
        provenance["world_size"] = int(ckpt["world_size"])
    # Settings that only some runs use, recorded when they differ from TrainConfig's defaults:
    # above all, that the run continued an earlier release, whose own training is then part of
    # this model's history.
    defaults = TrainConfig()
    for key in ("init_from", "lr_schedule", "min_lr", "low_noise_fraction", "conditions",
                "condition_dropout", "distill_from"):
        unused = getattr(defaults, key)
        if train_cfg.get(key, unused) != unused:
            provenance[key] = train_cfg[key]
    if train_cfg.get("data"):  # the user's own files, not the dataset whose atom types it uses (names only)
        provenance["data_files"] = [Path(str(path)).name for path in train_cfg["data"]]
    if ckpt.get("distillation"):  # the guided sampler it learned: guides, weight, interval
        provenance["distillation"] = ckpt["distillation"]
    # Recorded only for raw weights, so that every earlier release reads as what it is: EMA.
    if weights == "raw":
        provenance["weights"] = "raw"
    dataset = str(ckpt.get("dataset") or model_cfg.dataset)
    state_dict = ckpt["ema"] if weights == "ema" else ckpt["model"]
    extra = {"conditioning": ckpt["conditioning"]} if ckpt.get("conditioning") else None
    return save_release(out_dir, model_cfg, state_dict, {int(k): int(v) for k, v in histogram.items()},
                        dataset, provenance, card_text, guide=guide, extra_config=extra)


__all__ = ["convert_checkpoint_to_release"]
