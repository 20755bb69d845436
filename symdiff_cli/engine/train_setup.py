"""Setting up a training run: device and ranks, data, model (fresh, grown or resumed), EMA,
optimiser and log; and what the loop asks of the run it set up (checkpoints, evaluations)."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
import torch

from symdiff_cli.chem.elements import DatasetInfo, dataset_info
from symdiff_cli.data.batching import MoleculeTensors, SizeGroupedBatches
from symdiff_cli.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from symdiff_cli.engine.checkpoint import save_checkpoint as write_checkpoint
from symdiff_cli.engine.distillation import Teacher, load_teacher
from symdiff_cli.engine.distributed import Ranks, ranks_from_environment, rng_states_of_all_ranks, training_device
from symdiff_cli.engine.growth import load_release_weights, model_config_from_release
from symdiff_cli.engine.metrics_log import MetricsLog
from symdiff_cli.engine.optim import make_optimizer
from symdiff_cli.engine.stop_signals import Interrupted, StopSignals
from symdiff_cli.engine.train_config import TrainConfig, check_train_config, with_run_settings
from symdiff_cli.errors import SymdiffError, write_error
from symdiff_cli.io.molecule import PackedMolecules
from symdiff_cli.model.config import ModelConfig, model_config_from_preset
from symdiff_cli.model.diffusion import NoiseSchedule, VPDiffusion
from symdiff_cli.model.dit import SymmetrisedDenoiser, count_parameters


def load_training_data(train_config: TrainConfig, info: DatasetInfo,
                       report: Callable[[str], None] | None = None) -> tuple[PackedMolecules, str]:
    """The molecules to train on and a short description of where they came from (an unconditional
    run: a conditional one reads load_conditional_data)."""
    if train_config.data:
        if train_config.data_format == "geom":
            from symdiff_cli.data.user_data import load_geom_processed

            paths = list(train_config.data)
            return load_geom_processed(paths[0], paths[1] if len(paths) > 1 else None), f"GEOM file {paths[0]}"
        from symdiff_cli.data.user_data import load_user_molecules

        return (load_user_molecules(list(train_config.data), info, report=report),
                f"{len(train_config.data)} user path(s)")
    if info.name != "qm9":
        raise SymdiffError(f"the {info.name} dataset is not shipped: pass its files with --data")
    from symdiff_cli.data.qm9 import qm9_split

    return qm9_split("train"), "QM9 train split (100,000 molecules)"


CONDITIONAL_DATA = "QM9 train split, second half (50,000 molecules)"


def load_conditional_data(train_config: TrainConfig) -> tuple[PackedMolecules, np.ndarray, tuple[str, ...]]:
    """A conditional run's molecules (the second half of the QM9 train split), their property
    values (M, K) and the properties' names."""
    from symdiff_cli.data.properties import qm9_half_with_properties

    data = qm9_half_with_properties("second", train_config.conditions)
    return data.molecules, data.values, data.names


def _conditions_of_run(train_config: TrainConfig, resume_ckpt: dict[str, Any] | None) -> TrainConfig:
    """The run's conditions: a resumed run's, or a conditional release's under --init-from, when
    the options name none; a different list is refused."""
    from symdiff_cli.data.properties import qm9_property

    given = [qm9_property(name).name for name in train_config.conditions]
    if resume_ckpt is not None:
        have, what = list(ModelConfig.from_dict(resume_ckpt["model_config"]).conditions), "the run"
    elif train_config.init_from:
        from symdiff_cli.engine.registry import resolve_model
        from symdiff_cli.engine.release_config import read_release_config

        have = list(read_release_config(resolve_model(train_config.init_from))[1].conditions)
        what = f"the release {train_config.init_from}"
        if not have:
            return dataclasses.replace(train_config, conditions=given)
    else:
        return dataclasses.replace(train_config, conditions=given)
    if given and given != have:
        raise SymdiffError(f"{what} is conditioned on {', '.join(have) or 'nothing'}, not {', '.join(given)}")
    return dataclasses.replace(train_config, conditions=have)


def _distillation_of_run(train_config: TrainConfig, resume_ckpt: dict[str, Any] | None) -> TrainConfig:
    """A resumed distillation run keeps its teacher when --distill is not given again (another is
    refused); a new one starts its student from the teacher's release unless --init-from says else."""
    if resume_ckpt is not None:
        had = (resume_ckpt.get("train_config") or {}).get("distill_from")
        given = train_config.distill_from
        if given is not None and given != had:
            raise SymdiffError(f"the run in {train_config.out} distils {had or 'no release'}, not {given}")
        return dataclasses.replace(train_config, distill_from=had)
    if train_config.distill_from is not None and not train_config.init_from:
        return dataclasses.replace(train_config, init_from=train_config.distill_from)
    return train_config


def atom_count_histogram(num_atoms: np.ndarray) -> dict[int, int]:
    sizes, counts = np.unique(num_atoms, return_counts=True)
    return {int(s): int(c) for s, c in zip(sizes, counts)}


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed: float = 0.0  # training seconds (wall clock, evaluations excluded) over all sessions of this run
    cpu_time: float = 0.0  # process CPU seconds of training, same scope: fair under a shared CPU


def evaluate_samples(model: torch.nn.Module, model_cfg: ModelConfig, histogram: dict[int, int],
                     n: int, steps: int, seed: int, device: torch.device,
                     conditioning: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample n molecules with the (EMA) model and compute the benchmark metrics; a conditional
    model is asked for values drawn from its training data (`conditioning`)."""
    from symdiff_cli.chem.metrics import evaluate_molecules
    from symdiff_cli.engine.conditions import CONDITIONING_KEY, ConditionDraws
    from symdiff_cli.engine.sampling import Sampler, draw_atom_counts, plan_batches

    counts = draw_atom_counts(histogram, n, np.random.default_rng(seed))
    source = None
    if model_cfg.conditions:
        source = ConditionDraws.for_release(model_cfg, {CONDITIONING_KEY: conditioning},
                                            {name: None for name in model_cfg.conditions})
    sampler = Sampler(model, model_cfg, device, condition_source=source)
    mols = [m for batch in sampler.sample(plan_batches(counts, 256, seed), steps) for m in batch]
    model.train()
    result = evaluate_molecules(mols)
    return {"atom_stability": result.atom_stability, "molecule_stability": result.molecule_stability,
            "validity": result.validity, "uniqueness": result.uniqueness, "num_molecules": n,
            "sampling_steps": steps, "sampling_spacing": sampler.spacing}


def write_or_explain(path: Path, write: Callable[[], None]) -> None:
    """Run `write` (which writes `path`); a full disk or a failed write becomes one line."""
    try:
        write()
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        problem = write_error(err, path)
        if problem is None:
            raise
        raise problem from None


@dataclass
class TrainingRun:
    """A training run once set up: what every part of the loop reads."""

    train_config: TrainConfig
    model_cfg: ModelConfig
    ranks: Ranks
    device: torch.device
    use_bf16: bool
    info: DatasetInfo
    data: MoleculeTensors
    histogram: dict[int, int]
    batches: SizeGroupedBatches
    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    conditioning: dict[str, Any] | None  # a conditional run's release section (engine/conditions.py)
    teacher: Teacher | None  # a distillation run's guided sampler (engine/distillation.py)
    train_model: torch.nn.Module | None  # `model`, wrapped in DistributedDataParallel when distributed
    diffusion: VPDiffusion
    state: TrainState
    log: MetricsLog
    stops: StopSignals

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.train_config.out) / CHECKPOINT_NAME

    def diverged(self, why: str) -> SymdiffError:
        kept = f"; {self.checkpoint_path} from an earlier step is kept" if self.checkpoint_path.exists() else ""
        return SymdiffError(f"training diverged at step {self.state.step} ({why}){kept}")

    def save_checkpoint(self) -> None:
        # The loss is read once per log interval, so weights can turn NaN between two reads; a
        # checkpoint written then would overwrite the last good one with weights nobody can use.
        # Ranks hold identical weights, so under DDP every rank stops here together.
        if not all(bool(torch.isfinite(p).all()) for p in [*self.model.parameters(), *self.ema.parameters()]):
            raise self.diverged("the weights are no longer finite")
        rng, cuda_rng = rng_states_of_all_ranks(self.ranks, self.device)
        if not self.ranks.is_main:
            return
        payload = {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "state": dataclasses.asdict(self.state), "rng_per_rank": rng, "cuda_rng_per_rank": cuda_rng,
            "model_config": self.model_cfg.to_dict(), "train_config": self.train_config.to_dict(),
            "atom_count_histogram": self.histogram, "dataset": self.info.name, "world_size": self.ranks.world_size,
        }
        if self.conditioning is not None:
            payload["conditioning"] = self.conditioning
        if self.teacher is not None:
            payload["distillation"] = self.teacher.description
        path = self.checkpoint_path
        try:
            write_or_explain(path, lambda: write_checkpoint(payload, path))
        except SymdiffError as problem:
            kept = "; the checkpoint of an earlier step is kept" if path.exists() else ""
            raise SymdiffError(f"{problem} at step {self.state.step}{kept}") from None
        self.log.write({"event": "checkpoint", "step": self.state.step, "time": round(self.state.elapsed, 2)})

    def evaluate(self) -> dict[str, Any] | None:
        """evaluate_samples at this step, or None when a stop signal cuts it short: sampling can
        take longer than a scheduler waits between SIGTERM and SIGKILL, and would cost the
        checkpoint. A cut-short evaluation leaves nothing to undo."""
        try:
            with self.stops.interruptible():
                settings = self.train_config
                return evaluate_samples(self.ema, self.model_cfg, self.histogram, settings.eval_samples,
                                        min(settings.eval_steps, self.model_cfg.timesteps),
                                        settings.seed + self.state.step, self.device,
                                        self.conditioning)
        except Interrupted:
            return None


def _model_config_for_run(train_config: TrainConfig, model_cfg: ModelConfig | None,
                          resume_ckpt: dict[str, Any] | None) -> tuple[ModelConfig, DatasetInfo]:
    """The checkpoint's model for a resumed run, else the one asked for, with the dataset's atom types."""
    if resume_ckpt is not None:
        model_cfg = ModelConfig.from_dict(resume_ckpt["model_config"])
    elif model_cfg is None:
        raise SymdiffError("a new run needs a model configuration")
    info = dataset_info(train_config.dataset)
    if resume_ckpt is not None and tuple(model_cfg.atom_types) != info.atom_types:
        raise SymdiffError(f"--resume continues a run on {model_cfg.dataset} ({' '.join(model_cfg.atom_types)}): "
                           f"--dataset {info.name} cannot change it; start a new run for {info.name}")
    if tuple(model_cfg.atom_types) != info.atom_types:
        model_cfg = dataclasses.replace(model_cfg, dataset=info.name, atom_types=info.atom_types,
                                        max_atoms=info.max_atoms)
    return model_cfg, info


def _build_networks(train_config: TrainConfig, model_cfg: ModelConfig, ranks: Ranks, device: torch.device,
                    resume_ckpt: dict[str, Any] | None, explicit_model_keys: Collection[str] | None):
    """(model config, model, EMA model, optimiser, state): fresh, grown from --init-from, or resumed
    with each rank's random state."""
    torch.manual_seed(train_config.seed + ranks.rank)
    release_state = None
    if train_config.init_from and resume_ckpt is None:
        from symdiff_cli.engine.release import load_release_state_dict

        init_cfg, release_state = load_release_state_dict(train_config.init_from)
        model_cfg = model_config_from_release(init_cfg, model_cfg, explicit_model_keys)
    model = SymmetrisedDenoiser(model_cfg).to(device)
    if release_state is not None:
        load_release_weights(model, release_state)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optimizer = make_optimizer(model, train_config.lr, train_config.weight_decay)
    state = TrainState()
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        ema.load_state_dict(resume_ckpt["ema"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        state = TrainState(**resume_ckpt["state"])
        rng_states = resume_ckpt.get("rng_per_rank", [])
        if ranks.rank < len(rng_states):
            torch.set_rng_state(rng_states[ranks.rank])
        if device.type == "cuda" and ranks.rank < len(resume_ckpt.get("cuda_rng_per_rank", [])):
            torch.cuda.set_rng_state(resume_ckpt["cuda_rng_per_rank"][ranks.rank], device)
    return model_cfg, model, ema, optimizer, state


def _note_unused_preset(train_config: TrainConfig, model_cfg: ModelConfig, console_print: Callable[[str], None]) -> None:
    """Say so when a --preset the user gave names another width than the release a run continues."""
    preset = dataclasses.asdict(model_config_from_preset(train_config.preset))
    run = dataclasses.asdict(model_cfg)
    if any(preset[k] != run[k] for k in ("hidden", "heads", "num_rbf", "orientation_hidden", "orientation_heads")):
        console_print(f"Note: --preset {train_config.preset} is not used: the run continues the model of "
                      f"{train_config.init_from} (hidden {model_cfg.hidden}, depth {model_cfg.depth}); "
                      "--set model.depth=N grows it")


def set_up(train_config: TrainConfig, model_cfg: ModelConfig | None, stops: StopSignals,
            console_print: Callable[[str], None], explicit_model_keys: Collection[str] | None,
            explicit_train_keys: Collection[str] | None = None) -> TrainingRun:
    ranks = ranks_from_environment()
    device = training_device(ranks, train_config.device)
    if train_config.threads > 0:
        torch.set_num_threads(train_config.threads)
    use_bf16 = (train_config.precision == "bf16") or (train_config.precision == "auto" and device.type == "cuda")
    out = Path(train_config.out)
    resume_ckpt = load_checkpoint(out / CHECKPOINT_NAME) if (out / CHECKPOINT_NAME).exists() else None
    if resume_ckpt is not None:
        train_config = with_run_settings(train_config, resume_ckpt.get("train_config") or {}, explicit_train_keys)
        check_train_config(train_config)
    model_cfg, info = _model_config_for_run(train_config, model_cfg, resume_ckpt)
    train_config = _conditions_of_run(train_config, resume_ckpt)
    train_config = _distillation_of_run(train_config, resume_ckpt)
    teacher = None if train_config.distill_from is None else load_teacher(train_config.distill_from, device)

    values, conditioning = None, None
    if train_config.conditions:
        from symdiff_cli.data.properties import quantile_table
        from symdiff_cli.engine.conditions import conditioning_section

        packed, values, names = load_conditional_data(train_config)
        source = CONDITIONAL_DATA
        conditioning = conditioning_section(
            names, {name: quantile_table(packed.num_atoms, values[:, k]) for k, name in enumerate(names)}, source)
        model_cfg = dataclasses.replace(model_cfg, conditions=names,
                                        condition_mean=tuple(round(float(v), 6) for v in values.mean(axis=0)),
                                        condition_std=tuple(round(float(v), 6) for v in values.std(axis=0)))
        if resume_ckpt is not None:  # the run's own normalisation, as its weights learned it
            model_cfg = ModelConfig.from_dict(resume_ckpt["model_config"])
    else:
        packed, source = load_training_data(train_config, info,
                                            (lambda line: console_print(f"Note: {line}")) if ranks.is_main else None)
    if len(packed) == 0:
        raise SymdiffError("no training molecules")
    largest = int(packed.num_atoms.max())
    if largest > model_cfg.max_atoms:  # trains, but its release could not state the data's sizes
        raise SymdiffError(f"the training data has molecules of up to {largest} atoms, more than the model's "
                           f"max_atoms of {model_cfg.max_atoms}: raise model.max_atoms or leave it at the "
                           "dataset's")
    data = MoleculeTensors(packed, info, values)
    histogram = atom_count_histogram(packed.num_atoms)
    batches = SizeGroupedBatches(packed.num_atoms, train_config.batch_size, train_config.seed, ranks.rank,
                                 ranks.world_size)
    if len(batches) == 0:
        raise SymdiffError("too few molecules for one batch per process")

    model_cfg, model, ema, optimizer, state = _build_networks(train_config, model_cfg, ranks, device, resume_ckpt,
                                                              explicit_model_keys)
    if resume_ckpt is None and train_config.init_from and "preset" in (explicit_train_keys or ()):
        _note_unused_preset(train_config, model_cfg, console_print)
    train_model: torch.nn.Module = model
    if ranks.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    diffusion = VPDiffusion(NoiseSchedule(model_cfg.timesteps, model_cfg.noise_precision))

    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config_text = json.dumps({"model": model_cfg.to_dict(), "train": train_config.to_dict(),
                                  "world_size": ranks.world_size}, indent=2)
        write_or_explain(out / "config.json", lambda: (out / "config.json").write_text(config_text))
    log = MetricsLog(out / "metrics.jsonl", ranks.is_main)
    if ranks.is_main:
        resumed = resume_ckpt is not None
        log.write({"event": "resume" if resumed else "start", "step": state.step, "epoch": state.epoch,
                   "parameters": count_parameters(model), "molecules": len(packed), "data": source,
                   "device": str(device), "world_size": ranks.world_size, "bf16": use_bf16})
        console_print(
            f"{'Resuming' if resumed else 'Training'} {count_parameters(model):,} parameters "
            + (f"distilling the guided sampler of {train_config.distill_from} " if teacher is not None else "")
            + f"(orientation kernel {model_cfg.orientation_kernel}) on {len(packed):,} molecules from {source}, {device}"
            + (f" x {ranks.world_size} processes" if ranks.distributed else "")
            + (f", from step {state.step}" if resumed else ""))
    return TrainingRun(train_config, model_cfg, ranks, device, use_bf16, info, data, histogram, batches, model, ema,
                       optimizer, conditioning, teacher, train_model, diffusion, state, log, stops)
