"""The settings of a training run, and the checks on them that the training loop relies on."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from symdiff_cli.errors import UsageError


@dataclass
class TrainConfig:
    out: str = "runs/default"
    dataset: str = "qm9"
    data: list[str] = field(default_factory=list)  # user files instead of the QM9 train split
    data_format: str = "auto"  # auto | geom (GEOM-Drugs processed .npy)
    preset: str = "small"
    # Optimiser: the paper's settings (AMSGrad Adam, lr 2e-4, clip 2.0, EMA 0.9999).
    batch_size: int = 256
    lr: float = 2e-4
    warmup_steps: int = 500
    lr_schedule: str = "constant"  # constant | cosine (decays to min_lr over the run's step/time budget)
    min_lr: float = 0.0
    low_noise_fraction: float = 0.0  # share of each batch with t from the lowest tenth (0: uniform t)
    weight_decay: float = 1e-12
    grad_clip: float = 2.0
    ema_decay: float = 0.9999
    # Budgets: whichever ends first. None = unlimited.
    epochs: int | None = None
    max_steps: int | None = None
    max_time: float | None = None  # seconds
    checkpoint_every: float = 600.0  # seconds of wall clock
    eval_every: int = 0  # steps; 0 = only at the end if eval_samples > 0
    eval_samples: int = 0
    eval_steps: int = 100
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 autocast on CUDA) | fp32 | bf16
    init_from: str | None = None  # release model (name, directory) whose weights start the run
    threads: int = 0  # CPU threads; 0 = torch's default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_train_config(cfg: TrainConfig) -> None:
    """The checks on a TrainConfig that the engine relies on, each a one-line UsageError."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{f.name.replace('_', '-')} must be a finite number, not {value}")
    if cfg.data_format not in ("auto", "geom"):
        raise UsageError(f"--data-format must be auto or geom, not {cfg.data_format!r}")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"--precision must be auto, fp32 or bf16, not {cfg.precision!r}")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise UsageError(f"--lr-schedule must be constant or cosine, not {cfg.lr_schedule!r}")
    if cfg.lr_schedule == "cosine" and not (cfg.max_time or cfg.max_steps or cfg.epochs):
        raise UsageError("--lr-schedule cosine needs a budget to decay over: --max-time, --max-steps or --epochs")
    if cfg.batch_size < 1 or cfg.lr <= 0 or cfg.log_every < 1:
        raise UsageError("--batch-size, --lr and --log-every must be positive")
    if cfg.min_lr < 0 or cfg.min_lr > cfg.lr:
        raise UsageError("--min-lr must lie between 0 and --lr")
    if not 0.0 <= cfg.low_noise_fraction <= 1.0:
        raise UsageError("--low-noise-fraction must lie between 0 and 1")
    # 1 would freeze the released weights at initialisation; above 1 they diverge.
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise UsageError(f"--ema-decay must be in [0, 1), not {cfg.ema_decay}")
    if cfg.grad_clip <= 0 or cfg.weight_decay < 0:
        raise UsageError("--grad-clip must be positive and train.weight_decay not negative")
    for name in ("warmup_steps", "eval_every", "eval_samples", "threads"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    # Settings whose default is None are not coerced by apply_overrides: check their type here.
    for name in ("epochs", "max_steps"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"--{name.replace('_', '-')} must be a whole number of at least 1, not {value!r}")
    if cfg.max_time is not None and (isinstance(cfg.max_time, bool) or not isinstance(cfg.max_time, (int, float))
                                     or not math.isfinite(cfg.max_time) or cfg.max_time <= 0):
        raise UsageError(f"train.max_time must be a positive number of seconds, not {cfg.max_time!r}")
    if cfg.eval_steps < 1:
        raise UsageError("--eval-steps must be at least 1")
