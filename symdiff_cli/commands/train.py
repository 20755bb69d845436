"""`symdiff train`: parse options into a TrainConfig/ModelConfig and run the training engine."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, List, Optional

import typer

from symdiff_cli.commands.progress import progress_bar
from symdiff_cli.errors import SymdiffError, UsageError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms]?)", re.IGNORECASE)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}


def parse_duration(text: str) -> float:
    """'2h', '90m', '1h30m', '45s' or plain seconds -> seconds."""
    text = "".join(text.split())  # "1h 30m" as "1h30m"
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos or (match.group(2) == "" and match.end() != len(text)):
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        pos = match.end()
    if pos != len(text) or not text:
        raise UsageError(f"cannot read duration {text!r} (examples: 90s, 30m, 2h, 1h30m)")
    if total <= 0:
        raise UsageError(f"a duration must be positive, not {text!r}")
    return total


def _read_config_file(config: Path) -> dict[str, dict]:
    """The {"model": {...}, "train": {...}} of a --config file; any other content is one line."""
    if not config.is_file():
        raise SymdiffError(f"config file {config} does not exist")
    try:
        loaded = json.loads(config.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise SymdiffError(f"config file {config} is not a text file (expected JSON)") from None
    except json.JSONDecodeError as err:
        raise SymdiffError(f"config file {config} is not valid JSON: {err}") from None
    except OSError as err:
        raise SymdiffError(f"cannot read config file {config}: {err.strerror or err}") from None
    expected = 'a JSON object {"model": {...}, "train": {...}}'
    if not isinstance(loaded, dict):
        raise SymdiffError(f"config file {config} must hold {expected}, not a JSON {type(loaded).__name__}")
    loaded.pop("world_size", None)  # a run's own config.json records it; the processes decide it
    unknown = sorted(set(loaded) - {"model", "train"})
    if unknown:
        raise SymdiffError(f"config file {config}: unknown section(s) {', '.join(map(repr, unknown))}; expected {expected}")
    for section in ("model", "train"):
        if not isinstance(loaded.get(section, {}), dict):
            raise SymdiffError(f"config file {config}: {section!r} must be a JSON object of settings")
    return {"model": dict(loaded.get("model", {})), "train": dict(loaded.get("train", {}))}


def _with_settings(obj: Any, overrides: dict[str, Any], scope: str) -> Any:
    """apply_overrides one setting at a time, so that a value of the wrong type is named."""
    from symdiff_cli.model.config import apply_overrides

    for key, value in overrides.items():
        try:
            obj = apply_overrides(obj, {key: value})
        except (TypeError, ValueError, OverflowError):
            kind = type(getattr(obj, key)).__name__
            raise UsageError(f"{scope}.{key}={value!r}: expected a value of type {kind}") from None
        changed = getattr(obj, key)
        if isinstance(changed, float) and not math.isfinite(changed):
            option = f"--{key.replace('_', '-')} ({scope}.{key})" if scope == "train" else f"{scope}.{key}"
            raise UsageError(f"{option} must be a finite number, not {changed}")
    return obj


def _refuse_model_changes_on_resume(train_config: Any, model_over: dict[str, Any],
                                    explicit_train_keys: set[str], recorded: dict[str, Any]) -> None:
    """A resumed run keeps its model: a different model setting, preset or --init-from given with
    --resume would be silently ignored, so it is refused (`recorded`, the run's config.json, says
    what it is)."""
    if not recorded:
        return  # the checkpoint alone decides; the engine reads it
    from symdiff_cli.engine.train_config import recorded_train_settings
    from symdiff_cli.model.config import ModelConfig

    train = recorded_train_settings(recorded)
    try:  # every field, those a config.json leaves out at their default (self_condition) included
        fields = asdict(ModelConfig.from_dict(recorded.get("model", {})))
    except (SymdiffError, TypeError, ValueError, AttributeError):
        return
    model = {key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()}
    differing = [f"model.{key}={value!r} (the run has {model[key]!r})" for key, value in model_over.items()
                 if key in model and model[key] != (list(value) if isinstance(value, tuple) else value)]
    for key, option in (("preset", "--preset"), ("init_from", "--init-from")):
        if key in explicit_train_keys and getattr(train_config, key) != train.get(key):
            differing.append(f"{option} {getattr(train_config, key)} (the run has {train.get(key)})")
    if differing:
        raise UsageError("--resume continues the run's own model; it cannot take " + ", ".join(differing)
                         + ": start a new run (--init-from an export of this one keeps its weights)")


# TrainConfig keys whose option has another name.
_OPTION_OF = {"conditions": "condition", "distill_from": "distill"}


def _given(ctx: typer.Context, option: str) -> bool:
    """Whether the option named `option` (its parameter name) was given, not left at its default."""
    source = ctx.get_parameter_source(option)
    return source is not None and source.name != "DEFAULT"


def train_command(
    ctx: typer.Context,
    out: Path = typer.Option(Path("runs/default"), "--out", "-o", help="Run directory: checkpoint, metrics.jsonl, config.json."),
    dataset: str = typer.Option("qm9", help="Dataset configuration (atom types): qm9 or geom."),
    data: Optional[List[str]] = typer.Option(None, "--data", help="Train on these XYZ/SDF/npz files or directories instead of the QM9 train split (repeatable)."),
    data_format: str = typer.Option("auto", help="auto, or geom for the GEOM-Drugs processed .npy (conformer id, Z, x, y, z) layout."),
    preset: str = typer.Option("small", help="Model size: tiny (tests), small (CPU), paper (~35M parameters)."),
    orientation_kernel: Optional[str] = typer.Option(None, "--orientation-kernel", "--gamma", help="Orientation kernel (the paper's gamma): learned (SymDiff), haar (DiT-Aug baseline), none (plain DiT)."),
    batch_size: Optional[int] = typer.Option(None, help="Molecules per optimiser step and process (default: 256)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of AMSGrad Adam (default: 2e-4)."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear learning-rate warm-up steps (default: 500)."),
    lr_schedule: Optional[str] = typer.Option(None, help="constant, or cosine: decay from --lr to --min-lr over the run's budget (--max-time, --max-steps or --epochs; default: constant)."),
    min_lr: Optional[float] = typer.Option(None, help="Final learning rate of the cosine schedule (default: 0)."),
    low_noise_fraction: Optional[float] = typer.Option(None, help="Share of each batch whose timestep is drawn from the lowest tenth of noise levels, where bond lengths are refined (default: 0, uniform timesteps as in the paper)."),
    self_condition: bool = typer.Option(False, "--self-condition", help="Self-conditioning (Chen et al. 2022): the network also reads its own previous estimate of the clean molecule. In training half the batches first predict it without gradients and then learn from a second pass that reads it (about 1.5x the compute per step); in sampling each step reads the previous step's estimate. Same as --set model.self_condition=true; with --init-from the new input starts at zero, so the run starts from exactly the release's model."),
    condition: Optional[List[str]] = typer.Option(None, "--condition", help="Train a conditional model on this QM9 property (alpha, gap, homo, lumo, mu, Cv; repeatable). The run trains on the second half of the QM9 train split, as EDM's benchmark does (the first half is for the property predictor). With --init-from an unconditional release, the new input starts at zero, so the run starts from exactly the release's model."),
    condition_dropout: Optional[float] = typer.Option(None, help="Share of molecules whose condition is left out in a conditional run, so the network also learns its prediction without it: what --condition-guidance in `symdiff generate` extrapolates from (default: 0)."),
    predictor: Optional[str] = typer.Option(None, "--predictor", help="Train a property predictor instead of a generator: an invariant regressor of this QM9 property on the first half of the train split, the judge of `symdiff evaluate --property`. --out receives a predictor release (written at the end, also after Ctrl-C, from the weights of the best validation error). Reads --max-time (default 30m), --max-steps, --batch-size (64), --lr (5e-4), --seed, --threads and --preset (tiny or small)."),
    distill: Optional[str] = typer.Option(None, "--distill", help="Guidance distillation (Meng et al. 2023): train a student to predict this release's guided output (its main network autoguided by its guides, at its weight and guided interval) in one network call, so the exported release samples with one network per step instead of three. The student starts from the release (or --init-from); timesteps are drawn mostly inside the guided interval. A resumed run keeps its teacher."),
    ema_decay: Optional[float] = typer.Option(None, help="EMA decay of the weights that are evaluated and released (default: 0.9999)."),
    grad_clip: Optional[float] = typer.Option(None, help="Gradient norm clip (default: 2.0)."),
    epochs: Optional[int] = typer.Option(None, help="Stop after this many epochs (counted over the whole run)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimiser steps (counted over the whole run)."),
    max_time: Optional[str] = typer.Option(None, help="Stop after this much training time, e.g. 45m, 2h, 1h30m (counted over the whole run)."),
    checkpoint_every: str = typer.Option("10m", help="Write a checkpoint this often (wall clock), and always at the end."),
    eval_every: int = typer.Option(0, help="Sample and evaluate every N steps (0: only at the end, if --eval-samples > 0)."),
    eval_samples: int = typer.Option(0, help="Molecules sampled for each evaluation (0: no evaluation)."),
    eval_steps: int = typer.Option(100, help="Denoising steps used when sampling for evaluation."),
    log_every: int = typer.Option(50, help="Write a metrics line every N steps."),
    seed: int = typer.Option(0, help="Seed for data order, noise and frames: a run is reproducible on the same machine."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (under torchrun each process takes its LOCAL_RANK GPU)."),
    precision: str = typer.Option("auto", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16 (bf16 autocast; on a CPU with AMX about 1.2-1.8x faster than fp32, on CPUs without native bf16 slower)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    init_from: Optional[str] = typer.Option(None, help="Start from the weights of a released model (name in weights/, directory, or hub id). With --set model.depth=N (or model.orientation_depth=N) above the release's, the model grows: extra blocks are appended, starting as the identity. Other model settings, and depths not set, are the release's."),
    config: Optional[Path] = typer.Option(None, help='JSON file {"model": {...}, "train": {...}} of settings; options given here win.'),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any setting: model.hidden=256, train.weight_decay=0 (repeatable)."),
    threads: int = typer.Option(0, help="CPU threads per process (0: torch's default)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Train a SymDiff model (or resume a run). Works under torchrun for multi-GPU / multi-node DDP.

    One run at a time per --out: the run holds the lock file train.lock there, and a second run
    on the same directory is refused with the pid and host of the first. Ctrl-C, SIGTERM
    (timeout, Slurm) and SIGHUP end the run after the current step with a checkpoint of that
    step (continue it with --resume) and exit with code 130, 143 and 129.
    """
    if predictor is not None:
        from symdiff_cli.commands.train_predictor import train_predictor_command

        return train_predictor_command(
            predictor, out, preset, batch_size, lr,
            parse_duration(max_time) if max_time else None, max_steps, seed, threads, quiet,
            {"--condition": condition, "--init-from": init_from, "--resume": resume, "--data": data,
             "--config": config, "--set": set_, "--epochs": epochs, "--self-condition": self_condition,
             "--condition-dropout": condition_dropout, "--distill": distill})

    from symdiff_cli.engine.stop_signals import exit_code_for
    from symdiff_cli.engine.train import train
    from symdiff_cli.engine.train_config import (
        TrainConfig, check_train_config, recorded_run_config, recorded_train_settings, with_run_settings,
    )
    from symdiff_cli.model.config import ModelConfig, model_config_from_preset, parse_override, with_current_model_keys

    model_over: dict = {}
    train_over: dict = {}
    if config is not None:
        loaded = _read_config_file(config)
        model_over.update(loaded["model"])
        train_over.update(loaded["train"])
    for item in set_ or []:
        key, value = parse_override(item)
        scope, _, name = key.partition(".")
        if scope == "model" and name:
            model_over[name] = value
        elif scope == "train" and name:
            train_over[name] = value
        else:
            raise UsageError(f"--set {item!r}: keys start with model. or train.")
    model_over = with_current_model_keys(model_over)  # a config file or --set from before the rename
    if orientation_kernel is not None:
        model_over["orientation_kernel"] = orientation_kernel
    if self_condition:
        model_over["self_condition"] = True

    given = dict(out=str(out), dataset=dataset, data=list(data or []), data_format=data_format, preset=preset,
                 batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, lr_schedule=lr_schedule,
                 min_lr=min_lr, low_noise_fraction=low_noise_fraction, ema_decay=ema_decay,
                 grad_clip=grad_clip, epochs=epochs, max_steps=max_steps,
                 max_time=parse_duration(max_time) if max_time else None,
                 checkpoint_every=parse_duration(checkpoint_every), eval_every=eval_every,
                 eval_samples=eval_samples, eval_steps=eval_steps, log_every=log_every, seed=seed,
                 device=device, precision=precision, init_from=init_from, threads=threads,
                 conditions=list(condition) if condition else None, condition_dropout=condition_dropout,
                 distill_from=distill)
    # What the user set: a resumed run keeps its own data, optimiser settings and seed otherwise.
    explicit_train_keys = set(train_over) | {key for key in given if _given(ctx, _OPTION_OF.get(key, key))}
    # An option given on the command line wins over --set and --config; an option left at its
    # default only fills in what they did not set (their seed or --out must not become the default's).
    train_over.update({k: v for k, v in given.items()
                       if v is not None and (k not in train_over or _given(ctx, _OPTION_OF.get(k, k)))})
    train_config = _with_settings(TrainConfig(), train_over, "train")
    if train_config.data and "data" in explicit_train_keys:
        # Recorded as absolute paths: a resume from another directory (a SLURM requeue) finds them.
        train_config = replace(train_config, data=[os.path.abspath(p) if p.strip() else p for p in train_config.data])
    check_train_config(train_config)

    has_checkpoint = (Path(train_config.out) / "checkpoint.pt").exists()
    if has_checkpoint and not resume:
        raise SymdiffError(f"{train_config.out} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and not has_checkpoint:
        raise SymdiffError(f"--resume: no checkpoint in {train_config.out}")
    from symdiff_cli.engine.release_config import is_release_directory

    if is_release_directory(Path(train_config.out)):
        # A run writes its own config.json, which would replace the release's.
        raise UsageError(f"--out {train_config.out} is a release directory, not a run directory: choose another --out")
    from symdiff_cli.engine.run_directory import check_run_directory

    check_run_directory(Path(train_config.out))  # before QM9 is processed: a refusal should not wait
    model_cfg: ModelConfig | None = None
    if not has_checkpoint:
        model_cfg = model_config_from_preset(train_config.preset)
        if model_over:
            model_cfg = _with_settings(model_cfg, model_over, "model")
            try:  # types, positive sizes and their relations (model/config.py)
                model_cfg = model_cfg.validate()
            except SymdiffError as err:
                raise UsageError(str(err)) from None

    run_data = train_config
    if resume:
        recorded = recorded_run_config(train_config.out)
        _refuse_model_changes_on_resume(train_config, model_over, explicit_train_keys, recorded)
        run_data = with_run_settings(train_config, recorded_train_settings(recorded), explicit_train_keys)
    if not run_data.data and run_data.dataset == "qm9":
        # Parsed here, where the bar is drawn, the first time; the run then finds it in memory.
        from symdiff_cli.data.qm9 import qm9_split

        with progress_bar("processing QM9 (once)", show_elapsed=True) as on_progress:
            qm9_split("train", on_progress)

    is_main = int(os.environ.get("RANK", "0")) == 0
    from rich.console import Console

    console = Console(stderr=True, quiet=quiet or not is_main)
    explicit_model_keys = set(model_over)  # what --init-from may grow: only depths the user asked for
    if quiet or not is_main:
        summary = train(train_config, model_cfg, console_print=console.print, explicit_model_keys=explicit_model_keys,
                        explicit_train_keys=explicit_train_keys)
    else:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(
            TextColumn("[bold]step {task.fields[step]}"), BarColumn(), TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} mol/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        ) as progress:
            total = train_config.max_time or train_config.max_steps or None
            task = progress.add_task("train", total=total, step=0, loss="-", speed="-")

            def on_progress(rec: dict) -> None:
                done = rec["time"] if train_config.max_time else rec["step"]
                if rec.get("total_steps") and not train_config.max_time:
                    progress.update(task, total=rec["total_steps"])
                progress.update(task, completed=done, step=rec["step"], loss=f"{rec['loss']:.4f}",
                                speed=f"{rec['mol_per_s']:.0f}")

            summary = train(train_config, model_cfg, on_progress=on_progress, console_print=console.print,
                            explicit_model_keys=explicit_model_keys, explicit_train_keys=explicit_train_keys)
    if is_main:
        line = (f"Stopped ({summary['stop_reason']}) at step {summary['step']}, epoch {summary['epoch']}, "
                f"{summary['time']:.0f} s of training; checkpoint in {summary['out']}/checkpoint.pt")
        if "signal" in summary:
            line += " (continue with --resume)"
        console.print(line)
        if "eval" in summary:
            e = summary["eval"]
            console.print(f"Evaluation on {e['num_molecules']} samples: " + ", ".join(
                f"{k} {100 * e[k]:.1f} %" for k in ("atom_stability", "molecule_stability", "validity") if k in e))
    if "signal" in summary:
        raise typer.Exit(exit_code_for(summary["signal"]))
