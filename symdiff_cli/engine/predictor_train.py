"""`symdiff train --predictor PROPERTY`: fit a property predictor on the first half of the QM9 train
split, keep the weights of its best validation error, measure EDM's references on the second
half and write the predictor release (engine/predictor.py).

A plain loop: size-grouped batches in a random order each epoch, L1 loss on the normalised
target (the metric is a mean absolute error), AdamW with a linear warm-up and a cosine decay to
zero over the budget, a validation pass after every epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from symdiff_cli.engine.predictor import (
    VALIDATION_SIZE, TypedMolecules, is_predictor_directory, predict, qm9_half_typed, reference_maes, save_predictor,
    subset,
)
from symdiff_cli.errors import UsageError
from symdiff_cli.model.predictor import PREDICTOR_PRESETS, PredictorConfig, PropertyPredictor


@dataclass
class PredictorTraining:
    """The settings of `symdiff train --predictor PROPERTY`."""

    prop: str
    out: str
    preset: str = "small"
    max_time: float | None = 1800.0  # seconds
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 200
    seed: int = 0
    threads: int = 0


def check_predictor_training(settings: PredictorTraining) -> None:
    """The checks that need no data, each a one-line UsageError."""
    if settings.preset not in PREDICTOR_PRESETS:
        raise UsageError(f"--preset for a predictor must be one of {', '.join(PREDICTOR_PRESETS)}, not {settings.preset!r}")
    if settings.batch_size < 1 or not settings.lr > 0:
        raise UsageError("--batch-size and --lr must be positive")
    if settings.max_time is None and settings.max_steps is None:
        raise UsageError("a predictor needs a budget: --max-time or --max-steps")
    out = Path(settings.out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or is_predictor_directory(out))):
        raise UsageError(f"--out {out} exists and is not an empty directory or a predictor release")


@dataclass
class _Run:
    settings: PredictorTraining
    model: PropertyPredictor
    optimizer: torch.optim.Optimizer
    train: TypedMolecules
    valid: TypedMolecules
    rng: np.random.Generator
    on_progress: Callable[[dict[str, Any]], None] | None
    step: int = 0
    epoch: int = 0
    started: float = field(default_factory=time.perf_counter)
    elapsed: float = 0.0
    best_mae: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def fraction(self) -> float:
        """How much of the budget is spent (0..1): the further of the time and step budgets."""
        s = self.settings
        parts = ([self.elapsed / s.max_time] if s.max_time else []) + ([self.step / s.max_steps] if s.max_steps else [])
        return min(1.0, max(parts))

    def learning_rate(self) -> float:
        s = self.settings
        return s.lr * 0.5 * (1 + math.cos(math.pi * self.fraction())) * min(1.0, (self.step + 1) / max(s.warmup_steps, 1))

    def optimiser_step(self, idx: np.ndarray) -> None:
        cfg = self.model.cfg
        types, positions = self.train.tensors(idx)
        target = (torch.from_numpy(self.train.values[idx]).float() - cfg.target_mean) / cfg.target_std
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        loss = (self.model.normalised(types, positions) - target).abs().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.optimizer.step()
        self.step += 1
        self.elapsed = time.perf_counter() - self.started

    def validate(self) -> None:
        """Validation MAE now; the weights are kept when it is the best so far."""
        mae = float(np.abs(predict(self.model, self.valid) - self.valid.values).mean())
        self.model.train()
        self.history.append({"step": self.step, "epoch": self.epoch, "validation_mae": round(mae, 5),
                             "time": round(self.elapsed, 1)})
        if self.on_progress is not None:
            self.on_progress(self.history[-1] | {"fraction": self.fraction()})
        if mae < self.best_mae:
            self.best_mae = mae
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def _set_up(settings: PredictorTraining, on_progress) -> _Run:
    from symdiff_cli.data.properties import qm9_property

    prop = qm9_property(settings.prop)
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    atom_types = PredictorConfig().atom_types
    first = qm9_half_typed("first", prop.name, atom_types)
    cut = len(first) - VALIDATION_SIZE
    train, valid = subset(first, np.arange(cut)), subset(first, np.arange(cut, len(first)))
    cfg = PredictorConfig(property=prop.name, atom_types=atom_types, **PREDICTOR_PRESETS[settings.preset],
                          target_mean=round(float(train.values.mean()), 6),
                          target_std=round(float(train.values.std()), 6))
    model = PropertyPredictor(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    return _Run(settings, model, optimizer, train, valid, np.random.default_rng(settings.seed), on_progress)


def train_predictor(settings: PredictorTraining, console_print: Callable[[str], None] = print,
                    on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train, measure the references and write the release; returns a summary. A stop signal
    (SIGINT, SIGTERM, SIGHUP) ends training early: the release is still written from the best
    weights so far, and the summary's "signal" says which signal it was."""
    from symdiff_cli.data.properties import qm9_property
    from symdiff_cli.engine.stop_signals import StopSignals

    check_predictor_training(settings)
    prop = qm9_property(settings.prop)
    run = _set_up(settings, on_progress)
    console_print(f"Training a {prop.name} predictor ({sum(p.numel() for p in run.model.parameters()):,} parameters) "
                  f"on {len(run.train):,} molecules of the first half of the QM9 train split")
    with StopSignals() as stops:
        stops.defer()
        run.model.train()
        while run.fraction() < 1.0 and stops.received is None:
            batches = run.train.by_size(settings.batch_size)
            for i in run.rng.permutation(len(batches)):
                run.optimiser_step(batches[i])
                if run.fraction() >= 1.0 or stops.received is not None:
                    break
            run.epoch += 1
            run.validate()
        stop_signal = stops.received
        run.model.load_state_dict(run.best_state)
        console_print(f"Measuring the references on the second half ({run.step} steps, best validation MAE "
                      f"{run.best_mae:.4g} {prop.unit})")
        second = qm9_half_typed("second", prop.name, run.model.cfg.atom_types)
        references = reference_maes(run.model, run.train, second)
        provenance = {"source": "symdiff train --predictor", "steps": run.step, "epochs": run.epoch,
                      "train_seconds": round(run.elapsed, 1), "preset": settings.preset,
                      "batch_size": settings.batch_size, "lr": settings.lr, "seed": settings.seed,
                      "data": f"QM9 train split, first half less its last {VALIDATION_SIZE:,} (validation)"}
        save_predictor(settings.out, run.model, prop.name, prop.unit, references, round(run.best_mae, 6), provenance,
                       run.history)
    summary = {"out": settings.out, "steps": run.step, "validation_mae": run.best_mae, "references": references,
               "unit": prop.unit, "property": prop.name}
    if stop_signal is not None:
        summary["signal"] = stop_signal
    return summary


__all__ = ["PredictorTraining", "check_predictor_training", "train_predictor"]
