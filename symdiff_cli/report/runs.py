"""Training runs in the report: the records of a run's metrics.jsonl, and their figures.

`symdiff train` appends one record per log interval (step, loss, lr, mol_per_s, time, ...) and
one per periodic evaluation (event "eval" with the sample metrics) to OUT/metrics.jsonl; see
engine/train.py. A resumed run continues from its last checkpoint, which may be older than its
last logged step, so a step can appear twice: the later record is the one the run kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from symdiff_cli.engine.metrics_log import read_metrics
from symdiff_cli.errors import SymdiffError
from symdiff_cli.report.plots import Image, colour, new_figure, png_data_uri

METRICS_FILE = "metrics.jsonl"
# The periodic evaluation's metrics (engine/train.py evaluate_samples), plotted in this order.
EVAL_METRICS = (("molecule_stability", "molecule stability"), ("atom_stability", "atom stability"),
                ("validity", "validity"), ("uniqueness", "uniqueness"))


@dataclass
class Run:
    """The log of one training run: optimiser-step records and evaluation records, by step."""

    name: str
    path: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    start: dict[str, Any] | None = None

    def last(self, key: str) -> Any:
        for record in reversed(self.steps):
            if key in record:
                return record[key]
        return None


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a training run directory: a folder with a metrics.jsonl."""
    path = Path(path)
    return path.is_dir() and (path / METRICS_FILE).is_file()


def _by_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step, the last written, in step order."""
    kept: dict[int, dict[str, Any]] = {}
    for record in records:
        if isinstance(record.get("step"), int):
            kept[record["step"]] = record
    return [kept[s] for s in sorted(kept)]


def read_run(path: str | Path, name: str | None = None) -> Run:
    """The records of the run in folder `path`; SymdiffError (one line) if it is no readable run."""
    path = Path(path)
    log = path / METRICS_FILE
    if not log.is_file():
        raise SymdiffError(f"{path} is not a training run directory (it has no {METRICS_FILE})")
    try:
        records = read_metrics(log)
    except (OSError, UnicodeDecodeError) as err:
        raise SymdiffError(f"cannot read {log}: {getattr(err, 'strerror', None) or err}") from None
    except json.JSONDecodeError as err:
        raise SymdiffError(f"{log} is not a metrics log (line {err.lineno}: {err.msg})") from None
    if not all(isinstance(r, dict) for r in records):
        raise SymdiffError(f"{log} is not a metrics log (a line is not a JSON object)")
    steps = _by_step([r for r in records if "event" not in r and "loss" in r])
    evals = _by_step([r for r in records if r.get("event") == "eval"])
    start = next((r for r in records if r.get("event") in ("start", "resume")), None)
    return Run(name or path.name, path, steps, evals, start)


def run_names(paths: Sequence[str | Path]) -> list[str]:
    """Folder names, or the paths as given where two runs share a folder name."""
    names = [Path(p).name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]


def _time_axis(runs: Sequence[Run]) -> tuple[float, str]:
    """Divisor and label for training time: minutes, or hours for long runs."""
    longest = max((r.steps[-1].get("time", 0.0) for r in runs if r.steps), default=0.0)
    return (3600.0, "training time (h)") if longest > 3 * 3600 else (60.0, "training time (min)")


def _series(records: Sequence[dict[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r[x], r[y]) for r in records if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    xs, ys = zip(*pairs)
    return np.asarray(xs, float), np.asarray(ys, float)


def training_figure(runs: Sequence[Run]) -> Image:
    scale, time_label = _time_axis(runs)
    fig = new_figure(13, 6.4)
    (ax_loss, ax_loss_t), (ax_lr, ax_speed) = fig.subplots(2, 2)
    for k, run in enumerate(runs):
        c = colour(k)
        steps, loss = _series(run.steps, "step", "loss")
        ax_loss.plot(steps, loss, color=c, lw=1.1, label=run.name)
        times, loss_t = _series(run.steps, "time", "loss")
        ax_loss_t.plot(times / scale, loss_t, color=c, lw=1.1, label=run.name)
        ax_lr.plot(*_series(run.steps, "step", "lr"), color=c, lw=1.1, label=run.name)
        ax_speed.plot(*_series(run.steps, "step", "mol_per_s"), color=c, lw=1.1, label=run.name)
    for ax, title, xlabel in ((ax_loss, "training loss", "step"), (ax_loss_t, "training loss", time_label),
                              (ax_lr, "learning rate", "step"), (ax_speed, "throughput (molecules/s)", "step")):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    # The diffusion loss falls over orders of magnitude early on; a log axis keeps the tail readable.
    losses = [_series(r.steps, "step", "loss")[1] for r in runs]
    if all(len(loss) and np.all(loss > 0) for loss in losses):
        for ax in (ax_loss, ax_loss_t):
            ax.set_yscale("log")
    ax_loss.legend(fontsize="small", frameon=False)
    return Image("Training", "Loss (mean over each log interval), learning rate and throughput of every run, "
                 f"against optimiser steps and {time_label.split(' (')[0]} (evaluation time excluded).",
                 png_data_uri(fig))


def evaluation_figure(runs: Sequence[Run]) -> Image:
    scale, time_label = _time_axis(runs)
    fig = new_figure(13, 6.0)
    axes = fig.subplots(2, len(EVAL_METRICS))
    for k, run in enumerate(runs):
        for col, (key, _) in enumerate(EVAL_METRICS):
            steps, values = _series(run.evals, "step", key)
            axes[0, col].plot(steps, 100 * values, "o-", color=colour(k), ms=3, lw=1.1, label=run.name)
            times, values_t = _series(run.evals, "time", key)
            axes[1, col].plot(times / scale, 100 * values_t, "o-", color=colour(k), ms=3, lw=1.1, label=run.name)
    for col, (_, label) in enumerate(EVAL_METRICS):
        for row, xlabel in enumerate(("step", time_label)):
            axes[row, col].set_title(label)
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].set_ylabel("%")
            axes[row, col].grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small", frameon=False)
    return Image("Periodic evaluation", "The metrics of the molecules each run sampled at its periodic "
                 "evaluations (--eval-every), against steps (top) and training time (bottom).", png_data_uri(fig))


def run_summary(run: Run) -> dict[str, Any]:
    """The numbers of a run's summary row (None where the log has none)."""
    last_eval = run.evals[-1] if run.evals else {}
    return {
        "name": run.name,
        "path": str(run.path),
        "steps": run.last("step"),
        "epoch": run.last("epoch"),
        "time": run.last("time"),
        "loss": run.last("loss"),
        "parameters": (run.start or {}).get("parameters"),
        "evaluations": len(run.evals),
        "eval_step": last_eval.get("step"),
        **{key: last_eval.get(key) for key, _ in EVAL_METRICS},
    }


__all__ = ["EVAL_METRICS", "Run", "evaluation_figure", "is_run_dir", "read_run", "run_names", "run_summary",
           "training_figure"]
