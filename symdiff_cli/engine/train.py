"""The training loop: read top to bottom.

set up (device, distributed, data, model, optimiser, optional resume) -> for each batch: noise,
predict, l2 loss, clip, AMSGrad step, EMA -> logging, periodic evaluation, checkpoints by wall
clock -> stop on an epoch, step or time budget or a stop signal. Rank 0 alone logs and writes.

The parts live beside it: settings in engine/train_config.py, the optimiser and schedules in
engine/optim.py, model growth from a release in engine/growth.py, what the ranks agree on under
torchrun in engine/distributed.py.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

import numpy as np
import torch

from symdiff_cli.engine.distillation import GUIDED_INTERVAL_SHARE
from symdiff_cli.engine.distributed import (
    agree_on_signal, agree_with_rank0, leave_process_group, ranks_from_environment, ranks_in_sync,
    wait_for_all_ranks,
)
from symdiff_cli.engine.optim import budget_fraction, ema_decay_at, learning_rate, update_ema
from symdiff_cli.engine.run_directory import check_run_directory
from symdiff_cli.engine.run_lock import RunLock
from symdiff_cli.engine.stop_signals import StopSignals, signal_name
from symdiff_cli.engine.train_config import TrainConfig
from symdiff_cli.engine.train_setup import TrainingRun, TrainState, set_up
from symdiff_cli.model.config import ModelConfig
from symdiff_cli.model.diffusion import Batch


def train(train_config: TrainConfig, model_cfg: ModelConfig | None = None,
          on_progress: Callable[[dict[str, Any]], None] | None = None,
          console_print: Callable[[str], None] = print,
          explicit_model_keys: Collection[str] | None = None,
          explicit_train_keys: Collection[str] | None = None) -> dict[str, Any]:
    """Train (or resume) a run in train_config.out. Returns a summary dict.

    model_cfg is required for a new run; a resumed run takes its model configuration from the
    checkpoint. `on_progress` is called with the log record at the end of every log interval (rank 0 only).
    `explicit_model_keys`: the model settings the user set, which decide what --init-from grows.
    `explicit_train_keys`: the training settings the user set; a resumed run keeps its own
    values of the others among train_config.RUN_SETTINGS (its data, optimiser, seed). None: all
    of `train_config` is meant as given.

    An --out whose config.json or metrics.jsonl a run did not write is refused before anything
    is written (engine/run_directory.py). Rank 0 holds the run directory's lock
    (engine/run_lock.py) for the whole run: a second run on the same directory is refused. SIGINT, SIGTERM or SIGHUP during training ends the run
    at the end of the current step with a checkpoint of that step (an evaluation in progress
    is abandoned); the summary's "signal" then holds the signal number and "stop_reason" its
    name (or the budget's, when the signal cut short the final evaluation). Before the first
    step a signal raises Interrupted and nothing is written.
    """
    is_main = ranks_from_environment().is_main
    out = Path(train_config.out)
    if is_main:
        check_run_directory(out)
    created = not out.exists()
    lock = RunLock(out) if is_main else None
    with StopSignals() as stops:
        with stops.deferred():
            if lock is not None:
                lock.acquire()
        try:
            stops.raise_if_received()
            return _train_locked(train_config, model_cfg, stops, on_progress, console_print, explicit_model_keys,
                                 explicit_train_keys)
        finally:
            with stops.deferred():
                if lock is not None:
                    lock.release()
                # A run that failed before writing anything leaves no empty directory behind.
                if created and is_main and out.is_dir() and not any(out.iterdir()):
                    out.rmdir()


@dataclass
class _Clock:
    """The run's training time: wall clock and process CPU seconds of this session, evaluations
    excluded, on top of what earlier sessions of the run spent."""

    state: TrainState
    session_start: float = field(default_factory=time.perf_counter)
    cpu_start: float = field(default_factory=time.process_time)
    eval_wall: float = 0.0
    eval_cpu: float = 0.0

    def __post_init__(self) -> None:
        self.elapsed_before, self.cpu_before = self.state.elapsed, self.state.cpu_time

    def tick(self) -> None:
        self.state.elapsed = self.elapsed_before + time.perf_counter() - self.session_start - self.eval_wall
        self.state.cpu_time = self.cpu_before + time.process_time() - self.cpu_start - self.eval_cpu

    @contextmanager
    def not_training(self) -> Iterator[None]:
        """Time spent sampling for evaluation, which does not count as training."""
        wall0, cpu0 = time.perf_counter(), time.process_time()
        yield
        self.eval_wall += time.perf_counter() - wall0
        self.eval_cpu += time.process_time() - cpu0


@dataclass
class _LogWindow:
    """Losses and molecules since the last log line. The loss is summed on the device and read
    once per interval, not per step: .item() stalls a GPU pipeline."""

    loss_sum: torch.Tensor
    steps: int = 0
    molecules: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, molecules: int) -> None:
        self.loss_sum += loss.detach().float()
        self.steps += 1
        self.molecules += molecules


def _budget_reached(train_config: TrainConfig, state: TrainState, agreed_elapsed: float) -> str | None:
    if train_config.max_steps is not None and state.step >= train_config.max_steps:
        return "max_steps"
    if train_config.epochs is not None and state.epoch >= train_config.epochs:
        return "epochs"
    if train_config.max_time is not None and agreed_elapsed >= train_config.max_time:
        return "max_time"
    return None


def _total_steps(train_config: TrainConfig, steps_per_epoch: int) -> int | None:
    total_steps = train_config.max_steps
    if train_config.epochs is not None:
        by_epochs = train_config.epochs * steps_per_epoch
        total_steps = by_epochs if total_steps is None else min(total_steps, by_epochs)
    return total_steps


def _optimiser_step(run: TrainingRun, idx: np.ndarray, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step on batch `idx` at learning rate `lr`, and the EMA update; returns the loss and the
    gradient norm before clipping."""
    x, h = run.data.gather(idx, run.model_cfg.norm_one_hot, run.model_cfg.norm_charge)
    if run.device.type == "cuda":  # only a copy from pinned memory leaves the host free to go on
        x, h = x.pin_memory(), h.pin_memory()
    condition = run.data.condition(idx)
    batch = Batch(x.to(run.device, non_blocking=True), h.to(run.device, non_blocking=True), None,
                  None if condition is None else condition.to(run.device))
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        if run.teacher is not None:
            loss = run.diffusion.distillation_loss(run.train_model, run.teacher.denoiser, batch,
                                                   focus_max_t=run.teacher.guided_max_t,
                                                   focus_share=GUIDED_INTERVAL_SHARE)
        else:
            loss = run.diffusion.loss(run.train_model, batch, low_noise_fraction=run.train_config.low_noise_fraction,
                                      self_condition=run.model_cfg.self_condition,
                                      condition_dropout=run.train_config.condition_dropout)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.train_config.grad_clip)
    run.optimizer.step()
    update_ema(run.ema, run.model, ema_decay_at(run.state.step, run.train_config.ema_decay))
    return loss, grad_norm


def _log_interval(run: TrainingRun, window: _LogWindow, lr: float, grad_norm: torch.Tensor, total_steps: int | None,
                  on_progress: Callable[[dict[str, Any]], None] | None) -> float:
    """Write the interval's log line, report it, and start a new interval; returns its mean loss."""
    state = run.state
    mean_loss = float(window.loss_sum) / window.steps
    window.loss_sum.zero_()
    if not math.isfinite(mean_loss):
        raise run.diverged(f"loss {mean_loss}")
    now = time.perf_counter()
    record = {"step": state.step, "epoch": state.epoch, "loss": round(mean_loss, 6), "lr": lr,
              "grad_norm": round(float(grad_norm), 4),
              "mol_per_s": round(window.molecules / max(now - window.start, 1e-9), 1),
              "time": round(state.elapsed, 2), "cpu_time": round(state.cpu_time, 2)}
    run.log.write(record)
    if run.ranks.is_main and on_progress is not None:
        on_progress(record | {"total_steps": total_steps, "max_time": run.train_config.max_time})
    window.molecules, window.start, window.steps = 0, now, 0
    return mean_loss


def _train_loop(run: TrainingRun, on_progress: Callable[[dict[str, Any]], None] | None
                ) -> tuple[str | None, int | None, float | None, tuple[int, dict[str, Any]] | None]:
    """Train until a budget is spent or a stop signal arrives; returns (stop reason, stop signal,
    the last logged loss: None until a log interval ends, as when a spent budget makes no step,
    and the last periodic evaluation as (step, result))."""
    train_config, state = run.train_config, run.state
    clock = _Clock(state)
    window = _LogWindow(torch.zeros((), device=run.device))
    last_checkpoint = clock.session_start
    total_steps = _total_steps(train_config, len(run.batches))
    last_loss: float | None = None
    # Wall-clock decisions are synchronised every few steps under DDP (a broadcast is a host sync).
    sync_every = 10 if run.ranks.distributed else 1
    agreed_elapsed = state.elapsed  # the clock the time budget and learning rate follow: rank 0's
    stop_signal: int | None = None
    last_evaluation: tuple[int, dict[str, Any]] | None = None  # (step, result) of the last periodic one
    run.train_model.train()
    # From here on a stop signal only marks the run: the step in progress finishes, the ranks
    # agree on stopping, and the checkpoint after the loop records that step.
    run.stops.defer()

    while (stop_reason := _budget_reached(train_config, state, agreed_elapsed)) is None:
        epoch_batches = run.batches.epoch(state.epoch)
        while state.batch_in_epoch < len(epoch_batches):
            idx = epoch_batches[state.batch_in_epoch]
            fraction = budget_fraction(state.step, agreed_elapsed, train_config, len(run.batches))
            lr = learning_rate(state.step, train_config, fraction)
            loss, grad_norm = _optimiser_step(run, idx, lr)
            state.step += 1
            state.batch_in_epoch += 1
            clock.tick()
            window.add(loss, len(idx) * run.ranks.world_size)
            epoch_done = state.batch_in_epoch == len(epoch_batches)
            if state.step % train_config.log_every == 0 or epoch_done:
                last_loss = _log_interval(run, window, lr, grad_norm, total_steps, on_progress)
            if (train_config.eval_every and train_config.eval_samples and run.ranks.is_main
                    and state.step % train_config.eval_every == 0):
                eval_start = time.perf_counter()
                with clock.not_training():
                    evaluation = run.evaluate()
                    if evaluation is not None:
                        run.log.write({"event": "eval", "step": state.step, "epoch": state.epoch,
                                       "time": round(state.elapsed, 2), "cpu_time": round(state.cpu_time, 2),
                                       **evaluation})
                        last_evaluation = (state.step, evaluation)
                window.start += time.perf_counter() - eval_start  # the next mol/s is training's alone
            if state.step % sync_every == 0 or epoch_done:
                stop_signal = agree_on_signal(run.ranks, run.device, run.stops.received)
                if stop_signal is not None:
                    break  # the checkpoint after the loop records this step
                checkpoint_due, agreed_elapsed = agree_with_rank0(
                    run.ranks, run.device, time.perf_counter() - last_checkpoint >= train_config.checkpoint_every,
                    state.elapsed)
                if checkpoint_due:
                    run.save_checkpoint()
                    last_checkpoint = time.perf_counter()
            if _budget_reached(train_config, state, agreed_elapsed) in ("max_steps", "max_time"):
                break
        if state.batch_in_epoch >= len(epoch_batches):
            state.epoch += 1
            state.batch_in_epoch = 0
        if stop_signal is not None:
            stop_reason = signal_name(stop_signal)
            break
    return stop_reason, stop_signal, last_loss, last_evaluation


def _finish(run: TrainingRun, stop_reason: str | None, stop_signal: int | None, last_loss: float | None,
            last_evaluation: tuple[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The final checkpoint and evaluation, the ranks' agreement check, and the run's summary."""
    state, log = run.state, run.log
    run.save_checkpoint()
    summary: dict[str, Any] = {"stop_reason": stop_reason, "step": state.step, "epoch": state.epoch,
                               "time": round(state.elapsed, 2), "loss": last_loss,
                               "out": str(Path(run.train_config.out))}
    if stop_signal is not None:
        summary["signal"] = stop_signal
        log.write({"event": "signal", "signal": stop_reason, "step": state.step})
    if last_evaluation is not None and last_evaluation[0] == state.step and stop_signal is None:
        summary["eval"] = last_evaluation[1]  # the periodic one of this very step: not sampled twice
    elif run.train_config.eval_samples and run.ranks.is_main and stop_signal is None:
        evaluation = run.evaluate()
        if evaluation is None:  # the checkpoint above is already written: only the evaluation is lost
            summary["signal"] = run.stops.received
            log.write({"event": "signal", "signal": signal_name(run.stops.received), "step": state.step})
        else:
            summary["eval"] = evaluation
            log.write({"event": "eval", "step": state.step, "time": round(state.elapsed, 2), **evaluation})
    if run.ranks.distributed:
        in_sync, sums = ranks_in_sync(run.ranks, run.model)
        log.write({"event": "ranks_in_sync", "value": in_sync, "checksums": sums})
        summary["ranks_in_sync"] = in_sync
        wait_for_all_ranks()
        run.train_model = None  # DDP's reducer must go before the process group (engine/distributed.py)
        leave_process_group()
    log.write({"event": "end", **{k: v for k, v in summary.items() if k != "eval"}})
    log.close()
    return summary


def _train_locked(train_config: TrainConfig, model_cfg: ModelConfig | None, stops: StopSignals,
                  on_progress: Callable[[dict[str, Any]], None] | None,
                  console_print: Callable[[str], None],
                  explicit_model_keys: Collection[str] | None,
                  explicit_train_keys: Collection[str] | None) -> dict[str, Any]:
    run = set_up(train_config, model_cfg, stops, console_print, explicit_model_keys, explicit_train_keys)
    stop_reason, stop_signal, last_loss, last_evaluation = _train_loop(run, on_progress)
    return _finish(run, stop_reason, stop_signal, last_loss, last_evaluation)
