"""The settings of a training run, and the checks on them that the training loop relies on."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Collection

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
    # QM9 properties to condition on (data/properties.py): the run trains on the second half of
    # the train split with their values (EDM's protocol; the first half is the predictor's).
    conditions: list[str] = field(default_factory=list)
    # Share of molecules whose condition is left out in training (the "unconditional" prediction
    # that --condition-guidance extrapolates from).
    condition_dropout: float = 0.0
    # A release whose guided sampler the run distils into one network (engine/distillation.py);
    # the student starts from that release unless init_from names another.
    distill_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# What a run trains on and how: a resumed run keeps its own values of these unless they are given
# again. Checkpoint, evaluation and log intervals, device, precision and threads come from the
# command line, as for a new run.
RUN_SETTINGS = ("dataset", "data", "data_format", "preset", "batch_size", "lr", "warmup_steps", "lr_schedule",
                "min_lr", "low_noise_fraction", "weight_decay", "grad_clip", "ema_decay", "seed",
                "condition_dropout")
# A budget is counted over the whole run. A resume that names none keeps the run's own (a run
# stopped by Ctrl-C then finishes what it was started for, instead of training until stopped);
# naming any one replaces them all.
BUDGETS = ("max_steps", "max_time", "epochs")


def with_run_settings(train_config: TrainConfig, recorded: dict[str, Any],
                      explicit: Collection[str] | None) -> TrainConfig:
    """`train_config` with a resumed run's own RUN_SETTINGS (`recorded`: the train config its
    checkpoint holds) in place of each setting not in `explicit`, the settings the user gave, and
    its BUDGETS when the user gave none; None: every setting was given (the engine's callers pass
    whole configs)."""
    if explicit is None:
        return train_config
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kept = {key: recorded[key] for key in RUN_SETTINGS if key in recorded and key in fields and key not in explicit}
    if not set(BUDGETS) & set(explicit):
        kept.update({key: recorded[key] for key in BUDGETS if key in recorded})
    return dataclasses.replace(train_config, **kept)


def recorded_run_config(run_dir: str) -> dict[str, Any]:
    """A run directory's config.json ({} when it has none to read)."""
    import json
    from pathlib import Path

    try:
        recorded = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def recorded_train_settings(recorded: dict[str, Any]) -> dict[str, Any]:
    """The train settings a run's config.json (`recorded_run_config`) records ({} when none)."""
    train = recorded.get("train", {})
    return train if isinstance(train, dict) else {}


def check_train_config(train_config: TrainConfig) -> None:
    """The checks on a TrainConfig that the engine relies on, each a one-line UsageError."""
    for f in dataclasses.fields(train_config):
        value = getattr(train_config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{f.name.replace('_', '-')} must be a finite number, not {value}")
    for name, option in (("init_from", "--init-from"), ("distill_from", "--distill")):
        value = getattr(train_config, name)
        if value is not None and not str(value).strip():  # an unset shell variable, most often
            raise UsageError(f"{option} is empty: give a release name, directory or Hub id")
    if train_config.data_format not in ("auto", "geom"):
        raise UsageError(f"--data-format must be auto or geom, not {train_config.data_format!r}")
    if train_config.seed < 0:
        raise UsageError(f"--seed must not be negative, not {train_config.seed}")
    if train_config.precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"--precision must be auto, fp32 or bf16, not {train_config.precision!r}")
    if train_config.lr_schedule not in ("constant", "cosine"):
        raise UsageError(f"--lr-schedule must be constant or cosine, not {train_config.lr_schedule!r}")
    has_budget = train_config.max_time or train_config.max_steps or train_config.epochs
    if train_config.lr_schedule == "cosine" and not has_budget:
        raise UsageError("--lr-schedule cosine needs a budget to decay over: --max-time, --max-steps or --epochs")
    if train_config.batch_size < 1 or train_config.lr <= 0 or train_config.log_every < 1:
        raise UsageError("--batch-size, --lr and --log-every must be positive")
    if train_config.min_lr < 0 or train_config.min_lr > train_config.lr:
        raise UsageError("--min-lr must lie between 0 and --lr")
    if not 0.0 <= train_config.low_noise_fraction <= 1.0:
        raise UsageError("--low-noise-fraction must lie between 0 and 1")
    # 1 would freeze the released weights at initialisation; above 1 they diverge.
    if not 0.0 <= train_config.ema_decay < 1.0:
        raise UsageError(f"--ema-decay must be in [0, 1), not {train_config.ema_decay}")
    if train_config.grad_clip <= 0 or train_config.weight_decay < 0:
        raise UsageError("--grad-clip must be positive and train.weight_decay not negative")
    for name in ("warmup_steps", "eval_every", "eval_samples", "threads"):
        if getattr(train_config, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    # Settings whose default is None are not coerced by apply_overrides: check their type here.
    for name in ("epochs", "max_steps"):
        value = getattr(train_config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"--{name.replace('_', '-')} must be a whole number of at least 1, not {value!r}")
    max_time = train_config.max_time
    if max_time is not None and (isinstance(max_time, bool) or not isinstance(max_time, (int, float))
                                 or not math.isfinite(max_time) or max_time <= 0):
        raise UsageError(f"train.max_time must be a positive number of seconds, not {train_config.max_time!r}")
    if not 0.0 <= train_config.condition_dropout < 1.0:
        raise UsageError("--condition-dropout must lie in [0, 1)")
    if train_config.condition_dropout and not train_config.conditions and not train_config.init_from:
        raise UsageError("--condition-dropout needs --condition")
    if train_config.conditions:
        from symdiff_cli.data.properties import qm9_property

        names = [qm9_property(name).name for name in train_config.conditions]  # unknown: one line
        if len(set(names)) != len(names):
            raise UsageError("--condition names a property twice")
        if train_config.data or train_config.dataset != "qm9":
            raise UsageError("--condition reads the properties of QM9: it cannot be combined with --data "
                             "or another --dataset")
    if train_config.distill_from is not None:
        if train_config.conditions or train_config.condition_dropout:
            raise UsageError("--distill cannot be combined with --condition or --condition-dropout")
        if train_config.low_noise_fraction:
            raise UsageError("--distill draws its own timesteps (mostly inside the teacher's guided interval): "
                             "drop --low-noise-fraction")
    if train_config.eval_steps < 1:
        raise UsageError("--eval-steps must be at least 1")
