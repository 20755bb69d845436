"""The training loop: read top to bottom.

setup (device, distributed, data, model, optimiser) -> optional resume -> for each batch:
noise, predict, l2 loss, clip, AMSGrad step, EMA -> logging, periodic evaluation, checkpoints
by wall clock -> stop on an epoch, step or time budget. Rank 0 alone logs and writes.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
import torch
import torch.distributed as dist

from symdiff_cli.chem.elements import DatasetInfo, dataset_info
from symdiff_cli.data.batching import MoleculeTensors, SizeGroupedBatches
from symdiff_cli.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from symdiff_cli.engine.checkpoint import save_checkpoint as write_checkpoint
from symdiff_cli.engine.device import resolve_device
from symdiff_cli.engine.metrics_log import MetricsLog
from symdiff_cli.engine.run_lock import RunLock
from symdiff_cli.engine.stop_signals import Interrupted, StopSignals, signal_name
from symdiff_cli.errors import SymdiffError, write_error
from symdiff_cli.io.molecule import PackedMolecules
from symdiff_cli.model.config import ModelConfig
from symdiff_cli.model.diffusion import Batch, NoiseSchedule, VPDiffusion
from symdiff_cli.model.dit import SELF_COND_PREFIX, SymmetrisedDenoiser, count_parameters


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


def load_training_data(cfg: TrainConfig, info: DatasetInfo) -> tuple[PackedMolecules, str]:
    """The molecules to train on and a short description of where they came from."""
    if cfg.data:
        if cfg.data_format == "geom":
            from symdiff_cli.data.user_data import load_geom_processed

            paths = list(cfg.data)
            return load_geom_processed(paths[0], paths[1] if len(paths) > 1 else None), f"GEOM file {paths[0]}"
        from symdiff_cli.data.user_data import load_user_molecules

        return load_user_molecules(list(cfg.data), info), f"{len(cfg.data)} user path(s)"
    if info.name != "qm9":
        raise SymdiffError(f"the {info.name} dataset is not shipped: pass its files with --data")
    from symdiff_cli.data.qm9 import qm9_split

    return qm9_split("train"), "QM9 train split (100,000 molecules)"


def atom_count_histogram(num_atoms: np.ndarray) -> dict[int, int]:
    sizes, counts = np.unique(num_atoms, return_counts=True)
    return {int(s): int(c) for s, c in zip(sizes, counts)}


def budget_fraction(step: int, elapsed: float, cfg: TrainConfig, steps_per_epoch: int) -> float | None:
    """How far the run is through its budget (0..1): the furthest of its step, epoch and time budgets,
    since whichever is reached first ends the run. None when the run has no budget."""
    fractions = []
    if cfg.max_steps:
        fractions.append(step / cfg.max_steps)
    if cfg.epochs:
        fractions.append(step / (cfg.epochs * steps_per_epoch))
    if cfg.max_time:
        fractions.append(elapsed / cfg.max_time)
    return min(1.0, max(fractions)) if fractions else None


def learning_rate(step: int, cfg: TrainConfig, fraction: float | None = None) -> float:
    """Linear warm-up, then constant or a cosine from lr to min_lr over the budget (`fraction` done)."""
    lr = cfg.lr
    if cfg.lr_schedule == "cosine" and fraction is not None:
        lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * fraction))
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    return lr


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay warmed up as (1 + step) / (10 + step): early in a run the weights move fast, and an
    average still dominated by the random initialisation samples far worse than the model."""
    return min(decay, (1.0 + step) / (10.0 + step))


GROWABLE_DEPTHS = ("depth", "gamma_depth")


def model_config_from_release(release_cfg: ModelConfig, requested: ModelConfig,
                              explicit: Collection[str] | None = None) -> ModelConfig:
    """The model a run started from a release trains: the release's own, or a deeper one.

    `explicit` names the model settings the user set (`--set model.depth=8`). Only those of
    `depth` / `gamma_depth` can change the model, and only upwards: the release's blocks keep
    their weights and the extra blocks are appended. Everything else, the preset's defaults
    included, is the release's, so continuing a depth-8 release needs no --set. Without
    `explicit` (library callers), a request that differs from the release only in depths is
    taken as the growth it asks for.
    """
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
    not_block = [k for k in result.missing_keys
                 if ".transformer.blocks." not in k and not k.startswith(SELF_COND_PREFIX)]
    if not_block:
        raise SymdiffError(f"release weights lack tensors of the model: {not_block[:3]}")
    return list(result.missing_keys)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AMSGrad Adam, as in the paper. foreach: one multi-tensor kernel per update rather than several
    per parameter tensor; it is the default on CUDA but not on CPUs, where the per-tensor updates
    were about half the host time of a small step."""
    return torch.optim.Adam(model.parameters(), lr=lr, amsgrad=True, weight_decay=weight_decay, foreach=True)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    # One fused call rather than one kernel per tensor: on a GPU a small model's step is launch-bound.
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def parameter_checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() * (i + 1) for i, p in enumerate(model.parameters())))


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed: float = 0.0  # training seconds (wall clock, evaluations excluded) over all sessions of this run
    cpu_time: float = 0.0  # process CPU seconds of training, same scope: fair under a shared CPU


def evaluate_samples(model: torch.nn.Module, model_cfg: ModelConfig, histogram: dict[int, int],
                     n: int, steps: int, seed: int, device: torch.device) -> dict[str, Any]:
    """Sample n molecules with the (EMA) model and compute the benchmark metrics."""
    from symdiff_cli.chem.metrics import evaluate_molecules
    from symdiff_cli.engine.sampling import Sampler, draw_atom_counts, plan_batches

    counts = draw_atom_counts(histogram, n, np.random.default_rng(seed))
    sampler = Sampler(model, model_cfg, device)
    mols = [m for batch in sampler.sample(plan_batches(counts, 256, seed), steps) for m in batch]
    model.train()
    result = evaluate_molecules(mols)
    return {"atom_stability": result.atom_stability, "molecule_stability": result.molecule_stability,
            "validity": result.validity, "uniqueness": result.uniqueness, "num_molecules": n,
            "sampling_steps": steps, "sampling_spacing": sampler.spacing}


def train(cfg: TrainConfig, model_cfg: ModelConfig | None = None,
          on_progress: Callable[[dict[str, Any]], None] | None = None,
          console_print: Callable[[str], None] = print,
          explicit_model_keys: Collection[str] | None = None) -> dict[str, Any]:
    """Train (or resume) a run in cfg.out. Returns a summary dict.

    model_cfg is required for a new run; a resumed run takes its model configuration from the
    checkpoint. `on_progress` is called with a dict after every optimiser step (rank 0 only).
    `explicit_model_keys`: the model settings the user set, which decide what --init-from grows.

    Rank 0 holds the run directory's lock (engine/run_lock.py) for the whole run: a second run
    on the same directory is refused. SIGINT, SIGTERM or SIGHUP during training ends the run
    at the end of the current step with a checkpoint of that step (an evaluation in progress
    is abandoned); the summary's "signal" then holds the signal number and "stop_reason" its
    name (or the budget's, when the signal cut short the final evaluation). Before the first
    step a signal raises Interrupted and nothing is written.
    """
    is_main = int(os.environ.get("RANK", "0")) == 0
    out = Path(cfg.out)
    created = not out.exists()
    lock = RunLock(out) if is_main else None
    with StopSignals() as stops:
        with stops.deferred():
            if lock is not None:
                lock.acquire()
        try:
            stops.raise_if_received()
            return _train_locked(cfg, model_cfg, stops, on_progress, console_print, explicit_model_keys)
        finally:
            with stops.deferred():
                if lock is not None:
                    lock.release()
                # A run that failed before writing anything leaves no empty directory behind.
                if created and is_main and out.is_dir() and not any(out.iterdir()):
                    out.rmdir()


def _write_or_explain(path: Path, write: Callable[[], None]) -> None:
    """Run `write` (which writes `path`); a full disk or a failed write becomes one line."""
    try:
        write()
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        problem = write_error(err, path)
        if problem is None:
            raise
        raise problem from None


def _train_locked(cfg: TrainConfig, model_cfg: ModelConfig | None, stops: StopSignals,
                  on_progress: Callable[[dict[str, Any]], None] | None,
                  console_print: Callable[[str], None],
                  explicit_model_keys: Collection[str] | None) -> dict[str, Any]:
    # ---- distributed setup (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK) ----
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world_size > 1
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if distributed:
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() and cfg.device != "cpu" \
            else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    else:
        device = resolve_device(cfg.device)
    is_main = rank == 0
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    use_bf16 = (cfg.precision == "bf16") or (cfg.precision == "auto" and device.type == "cuda")

    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT_NAME
    resume_ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if resume_ckpt is not None:
        model_cfg = ModelConfig.from_dict(resume_ckpt["model_config"])
    elif model_cfg is None:
        raise SymdiffError("a new run needs a model configuration")
    info = dataset_info(cfg.dataset)
    if tuple(model_cfg.atom_types) != info.atom_types:
        model_cfg = dataclasses.replace(model_cfg, dataset=info.name, atom_types=info.atom_types,
                                        max_atoms=info.max_atoms)

    # ---- data ----
    packed, source = load_training_data(cfg, info)
    if len(packed) == 0:
        raise SymdiffError("no training molecules")
    data = MoleculeTensors(packed, info)
    histogram = atom_count_histogram(packed.num_atoms)
    batches = SizeGroupedBatches(packed.num_atoms, cfg.batch_size, cfg.seed, rank, world_size)
    if len(batches) == 0:
        raise SymdiffError("too few molecules for one batch per process")

    # ---- model, EMA, optimiser ----
    torch.manual_seed(cfg.seed + rank)
    release_state = None
    if cfg.init_from and resume_ckpt is None:
        from symdiff_cli.engine.release import load_release_state_dict

        init_cfg, release_state = load_release_state_dict(cfg.init_from)
        model_cfg = model_config_from_release(init_cfg, model_cfg, explicit_model_keys)
    model = SymmetrisedDenoiser(model_cfg).to(device)
    if release_state is not None:
        load_release_weights(model, release_state)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    state = TrainState()
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        ema.load_state_dict(resume_ckpt["ema"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        state = TrainState(**resume_ckpt["state"])
        rng_states = resume_ckpt.get("rng_per_rank", [])
        if rank < len(rng_states):
            torch.set_rng_state(rng_states[rank])
        if device.type == "cuda" and rank < len(resume_ckpt.get("cuda_rng_per_rank", [])):
            torch.cuda.set_rng_state(resume_ckpt["cuda_rng_per_rank"][rank], device)
    train_model: torch.nn.Module = model
    if distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    diffusion = VPDiffusion(NoiseSchedule(model_cfg.timesteps, model_cfg.noise_precision))

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        config_text = json.dumps({"model": model_cfg.to_dict(), "train": cfg.to_dict(), "world_size": world_size},
                                 indent=2)
        _write_or_explain(out / "config.json", lambda: (out / "config.json").write_text(config_text))
    log = MetricsLog(out / "metrics.jsonl", is_main)
    if is_main:
        log.write({"event": "resume" if resume_ckpt else "start", "step": state.step, "epoch": state.epoch,
                   "parameters": count_parameters(model), "molecules": len(packed), "data": source,
                   "device": str(device), "world_size": world_size, "bf16": use_bf16})
        console_print(
            f"{'Resuming' if resume_ckpt else 'Training'} {count_parameters(model):,} parameters "
            f"(gamma={model_cfg.gamma}) on {len(packed):,} molecules from {source}, {device}"
            + (f" x {world_size} processes" if distributed else "")
            + (f", from step {state.step}" if resume_ckpt else ""))

    def diverged(why: str) -> SymdiffError:
        kept = f"; {ckpt_path} from an earlier step is kept" if ckpt_path.exists() else ""
        return SymdiffError(f"training diverged at step {state.step} ({why}){kept}")

    def save_checkpoint() -> None:
        # The loss is read once per log interval, so weights can turn NaN between two reads; a
        # checkpoint written then would overwrite the last good one with weights nobody can use.
        # Ranks hold identical weights, so under DDP every rank stops here together.
        if not all(bool(torch.isfinite(p).all()) for p in [*model.parameters(), *ema.parameters()]):
            raise diverged("the weights are no longer finite")
        rng = [torch.get_rng_state()]
        cuda_rng = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
        if distributed:
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, (rng[0], cuda_rng[0] if cuda_rng else None))
            rng = [g[0] for g in gathered]
            cuda_rng = [g[1] for g in gathered] if cuda_rng else []
        if is_main:
            payload = {
                "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "state": dataclasses.asdict(state), "rng_per_rank": rng, "cuda_rng_per_rank": cuda_rng,
                "model_config": model_cfg.to_dict(), "train_config": cfg.to_dict(),
                "atom_count_histogram": histogram, "dataset": info.name, "world_size": world_size,
            }
            try:
                _write_or_explain(ckpt_path, lambda: write_checkpoint(payload, ckpt_path))
            except SymdiffError as problem:
                kept = "; the checkpoint of an earlier step is kept" if ckpt_path.exists() else ""
                raise SymdiffError(f"{problem} at step {state.step}{kept}") from None
            log.write({"event": "checkpoint", "step": state.step, "time": round(state.elapsed, 2)})

    # ---- the loop ----
    session_start = time.perf_counter()
    cpu_start = time.process_time()
    elapsed_before, cpu_before = state.elapsed, state.cpu_time
    eval_wall, eval_cpu = 0.0, 0.0  # time spent sampling for evaluation, not counted as training
    last_ckpt = session_start
    window_mols, window_start, loss_n = 0, time.perf_counter(), 0
    loss_acc = torch.zeros((), device=device)
    stop_reason = None
    total_steps = cfg.max_steps
    if cfg.epochs is not None:
        by_epochs = cfg.epochs * len(batches)
        total_steps = by_epochs if total_steps is None else min(total_steps, by_epochs)
    last_loss: float | None = None  # None until a log interval ends: a spent budget makes no step
    train_model.train()

    def budget_reached() -> str | None:
        if cfg.max_steps is not None and state.step >= cfg.max_steps:
            return "max_steps"
        if cfg.epochs is not None and state.epoch >= cfg.epochs:
            return "epochs"
        if cfg.max_time is not None and agreed_elapsed >= cfg.max_time:
            return "max_time"
        return None

    def agree_with_rank0(checkpoint_due: bool, elapsed: float) -> tuple[bool, float]:
        """Rank 0's checkpoint decision and clock for all ranks: wall clocks differ, a rank that
        stops or checkpoints alone would leave the others waiting in a collective forever, and a
        cosine learning rate read from each rank's own clock would let the ranks' weights drift apart."""
        if not distributed:
            return checkpoint_due, elapsed
        t = torch.tensor([float(checkpoint_due), elapsed], dtype=torch.float64, device=device)
        dist.broadcast(t, src=0)
        due, rank0_elapsed = t.tolist()
        return bool(due), rank0_elapsed

    def interruptible_evaluation() -> dict[str, Any] | None:
        """evaluate_samples at this step, or None when a stop signal cuts it short: sampling can
        take longer than a scheduler waits between SIGTERM and SIGKILL, and would cost the
        checkpoint. A cut-short evaluation leaves nothing to undo."""
        try:
            with stops.interruptible():
                return evaluate_samples(ema, model_cfg, histogram, cfg.eval_samples, cfg.eval_steps,
                                        cfg.seed + state.step, device)
        except Interrupted:
            return None

    def agree_on_signal() -> int | None:
        """The stop signal any rank received (the largest number if several): every rank stops
        at the same step, or those still training would wait for the others forever."""
        if not distributed:
            return stops.received
        t = torch.tensor([stops.received or 0], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item()) or None

    # Wall-clock decisions are synchronised every few steps under DDP (a broadcast is a host sync).
    sync_every = 10 if distributed else 1
    agreed_elapsed = state.elapsed  # the clock the time budget and learning rate follow: rank 0's
    stop_signal: int | None = None

    # From here on a stop signal only marks the run: the step in progress finishes, the ranks
    # agree on stopping, and the checkpoint after the loop records that step.
    stops.defer()

    while (stop_reason := budget_reached()) is None:
        epoch_batches = batches.epoch(state.epoch)
        while state.batch_in_epoch < len(epoch_batches):
            idx = epoch_batches[state.batch_in_epoch]
            x, h = data.gather(idx, model_cfg.norm_one_hot, model_cfg.norm_charge)
            if device.type == "cuda":  # only a copy from pinned memory leaves the host free to go on
                x, h = x.pin_memory(), h.pin_memory()
            batch = Batch(x.to(device, non_blocking=True), h.to(device, non_blocking=True), None)
            lr = learning_rate(state.step, cfg, budget_fraction(state.step, agreed_elapsed, cfg, len(batches)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = diffusion.loss(train_model, batch, low_noise_fraction=cfg.low_noise_fraction,
                                      self_condition=model_cfg.self_condition)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            update_ema(ema, model, ema_decay_at(state.step, cfg.ema_decay))

            state.step += 1
            state.batch_in_epoch += 1
            state.elapsed = elapsed_before + time.perf_counter() - session_start - eval_wall
            state.cpu_time = cpu_before + time.process_time() - cpu_start - eval_cpu
            # One host sync per log interval, not per step: .item() stalls a GPU pipeline.
            loss_acc += loss.detach().float()
            loss_n += 1
            window_mols += len(idx) * world_size
            if state.step % cfg.log_every == 0 or state.batch_in_epoch == len(epoch_batches):
                last_loss = float(loss_acc) / loss_n
                loss_acc.zero_()
                if not math.isfinite(last_loss):
                    raise diverged(f"loss {last_loss}")
                now = time.perf_counter()
                record = {"step": state.step, "epoch": state.epoch, "loss": round(last_loss, 6), "lr": lr,
                          "grad_norm": round(float(grad_norm), 4),
                          "mol_per_s": round(window_mols / max(now - window_start, 1e-9), 1),
                          "time": round(state.elapsed, 2), "cpu_time": round(state.cpu_time, 2)}
                log.write(record)
                if is_main and on_progress is not None:
                    on_progress(record | {"total_steps": total_steps, "max_time": cfg.max_time})
                window_mols, window_start, loss_n = 0, now, 0
            if cfg.eval_every and cfg.eval_samples and state.step % cfg.eval_every == 0 and is_main:
                wall0, cpu0 = time.perf_counter(), time.process_time()
                evaluation = interruptible_evaluation()
                if evaluation is not None:
                    log.write({"event": "eval", "step": state.step, "epoch": state.epoch,
                               "time": round(state.elapsed, 2), "cpu_time": round(state.cpu_time, 2),
                               **evaluation})
                eval_wall += time.perf_counter() - wall0
                eval_cpu += time.process_time() - cpu0
            if state.step % sync_every == 0 or state.batch_in_epoch == len(epoch_batches):
                stop_signal = agree_on_signal()
                if stop_signal is not None:
                    break  # the checkpoint after the loop records this step
                checkpoint_due, agreed_elapsed = agree_with_rank0(
                    time.perf_counter() - last_ckpt >= cfg.checkpoint_every, state.elapsed)
                if checkpoint_due:
                    save_checkpoint()
                    last_ckpt = time.perf_counter()
            if budget_reached() in ("max_steps", "max_time"):
                break
        if state.batch_in_epoch >= len(epoch_batches):
            state.epoch += 1
            state.batch_in_epoch = 0
        if stop_signal is not None:
            stop_reason = signal_name(stop_signal)
            break

    save_checkpoint()
    summary: dict[str, Any] = {"stop_reason": stop_reason, "step": state.step, "epoch": state.epoch,
                               "time": round(state.elapsed, 2), "loss": last_loss, "out": str(out)}
    if stop_signal is not None:
        summary["signal"] = stop_signal
        log.write({"event": "signal", "signal": stop_reason, "step": state.step})
    if cfg.eval_samples and is_main and stop_signal is None:
        evaluation = interruptible_evaluation()
        if evaluation is None:  # the checkpoint above is already written: only the evaluation is lost
            summary["signal"] = stops.received
            log.write({"event": "signal", "signal": signal_name(stops.received), "step": state.step})
        else:
            summary["eval"] = evaluation
            log.write({"event": "eval", "step": state.step, "time": round(state.elapsed, 2), **evaluation})
    if distributed:
        sums: list[Any] = [None] * world_size
        dist.all_gather_object(sums, parameter_checksum(model))
        in_sync = all(abs(s - sums[0]) <= 1e-6 * max(1.0, abs(sums[0])) for s in sums)
        log.write({"event": "ranks_in_sync", "value": in_sync, "checksums": sums})
        summary["ranks_in_sync"] = in_sync
        dist.barrier()
        # DDP's reducer holds the process group: freed here, destroy_process_group joins the gloo
        # threads while Python is alive. Left to interpreter shutdown, a thread outliving it aborted
        # a finished run (exit code -6) in about one torchrun launch in twelve.
        del train_model
        gc.collect()
        dist.destroy_process_group()
    log.write({"event": "end", **{k: v for k, v in summary.items() if k != "eval"}})
    log.close()
    return summary


def largest_fitting_batch(model_cfg: ModelConfig, device: torch.device, cap: int = 2048, start: int = 64) -> int:
    """The largest power-of-two batch (<= cap) of max-size molecules whose training step fits in memory.

    On CPU memory is rarely the limit and big batches only slow learning per second: returns start.
    """
    if device.type != "cuda":
        return start
    model = SymmetrisedDenoiser(model_cfg).to(device)
    diffusion = VPDiffusion(NoiseSchedule(model_cfg.timesteps, model_cfg.noise_precision))
    best, b = start, start
    while b <= cap:
        try:
            x = torch.randn(b, model_cfg.max_atoms, 3, device=device)
            h = torch.randn(b, model_cfg.max_atoms, model_cfg.feature_dim, device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = diffusion.loss(model, Batch(x - x.mean(1, keepdim=True), h, None),
                                      self_condition=model_cfg.self_condition)
            loss.backward()
            model.zero_grad(set_to_none=True)
            best = b
            b *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return best
