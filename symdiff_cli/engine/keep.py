"""What `symdiff generate` does to each sampled batch before writing it: relax, then keep.

--relax xtb|mmff relaxes every finite sample (engine/relax_pool.py); --keep valid|stable
writes only the molecules that pass, judged after relaxation, and samples on until --n of
them have passed or --max-attempts molecules have been sampled.

The model's own quality is never hidden: the pipeline counts the metrics of the raw samples,
of all samples after relaxation, and of the kept ones, and the summary shows each.

Sampling until N pass, reproducibly. The first round is exactly the plan of a run without
--keep (so --keep all is that run, and the first molecules of --keep stable are its
molecules). Each further round plans as many molecules as the acceptance so far says are
still needed (within the attempts left), from seeds of its own derived from (seed, shard,
round): runs with the same seed and options give the same file, and shards never share a
seed. A round's batches are planned grouped by atom count, as always, but sampled in a
shuffled order, so that stopping part-way through the last round does not favour the
smallest molecules. Molecules keep the names of their attempt number, so the gaps show
which were rejected.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from symdiff_cli.chem.relax import RelaxOutcome, RelaxSettings, relax_tags
from symdiff_cli.errors import UsageError

KEEP_CHOICES = ("all", "valid", "stable")
# --max-attempts by default: this many times --n.
DEFAULT_ATTEMPTS_PER_MOLECULE = 10
# The lowest acceptance a round plans for: with nothing accepted yet, a round is 1 / this
# times the deficit (within the attempts left), not the whole budget at once.
_LOWEST_PLANNED_ACCEPTANCE = 0.05


def check_keep_options(keep: str, n: int, max_attempts: int | None, relax: str, workers: int | None,
                       relax_steps: int) -> None:
    """The checks of --keep, --max-attempts, --relax, --workers and --relax-steps that need no model."""
    from symdiff_cli.chem.relax import RELAX_METHODS

    if keep not in KEEP_CHOICES:
        raise UsageError(f"--keep must be one of {', '.join(KEEP_CHOICES)}, not {keep!r}")
    if relax not in RELAX_METHODS:
        raise UsageError(f"--relax must be one of {', '.join(RELAX_METHODS)}, not {relax!r}")
    if max_attempts is not None:
        if keep == "all":
            raise UsageError("--max-attempts applies only with --keep valid or --keep stable")
        if max_attempts < n:
            raise UsageError(f"--max-attempts must be at least --n ({n}), not {max_attempts}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    if relax_steps < 1:
        raise UsageError(f"--relax-steps must be at least 1, not {relax_steps}")


class MetricCounts:
    """Running sums of the summary's metrics over some molecules: memory stays flat however many
    (generate keeps one for the written molecules, the pipeline for the raw and relaxed ones)."""

    def __init__(self) -> None:
        self.molecules = self.atoms = self.stable_atoms = self.stable = self.valid = 0

    def add(self, reports: list) -> None:
        for report in reports:
            self.molecules += 1
            self.atoms += report.num_atoms
            self.stable_atoms += report.num_stable_atoms
            self.stable += bool(report.stable)
            self.valid += bool(report.valid)

    def as_dict(self) -> dict[str, float]:
        if not self.molecules:
            return {}
        return {"atom_stability": self.stable_atoms / self.atoms if self.atoms else 0.0,
                "molecule_stability": self.stable / self.molecules, "validity": self.valid / self.molecules}


@dataclass
class PipelineSummary:
    """What relaxation and filtering did, for the summary (all counts over this shard)."""

    relax: str
    keep: str
    target: int
    max_attempts: int
    attempts: int = 0  # molecules sampled, non-finite ones included
    kept: int = 0
    raw: MetricCounts = field(default_factory=MetricCounts)  # every finite sample as sampled
    relaxed: MetricCounts = field(default_factory=MetricCounts)  # every finite sample after relaxation
    relax_status: dict[str, int] = field(default_factory=dict)
    relax_seconds: float = 0.0

    @property
    def acceptance(self) -> float:
        return self.kept / self.attempts if self.attempts else 0.0

    @property
    def short(self) -> bool:
        """--keep ran out of attempts before --n molecules passed."""
        return self.keep != "all" and self.kept < self.target

    def as_dict(self) -> dict:
        return {"relax": self.relax, "keep": self.keep, "target": self.target, "max_attempts": self.max_attempts,
                "attempts": self.attempts, "kept": self.kept, "acceptance": self.acceptance,
                "raw": {**self.raw.as_dict(), "molecules": self.raw.molecules},
                "relaxed": {**self.relaxed.as_dict(), "molecules": self.relaxed.molecules},
                "relax_status": dict(self.relax_status),
                "relax_seconds": self.relax_seconds}


def _passes(report, keep: str) -> bool:
    if keep == "stable":
        return bool(report.stable)
    if keep == "valid":
        return bool(report.valid)
    return True


class BatchPipeline:
    """Relax, measure and filter the batches of one generate run; plan the batches of --keep.

    Use: `plan()` as the sampler's plan; per batch `relax_and_measure(mols)` before the tags are
    made and `keep_passing(mols, reports)` after; `close()` at the end (after an interrupt:
    `close(interrupted=True)`).
    """

    def __init__(self, relax: str = "none", keep: str = "all", target: int = 0, max_attempts: int | None = None,
                 workers: int | None = None, relax_steps: int | None = None,
                 on_relaxed: Callable[[int, int], None] | None = None) -> None:
        from symdiff_cli.chem.relax import DEFAULT_MAX_STEPS

        self.keep = keep
        self.summary = PipelineSummary(relax=relax, keep=keep, target=target,
                                       max_attempts=max_attempts if max_attempts is not None
                                       else DEFAULT_ATTEMPTS_PER_MOLECULE * target)
        self._pool = None
        if relax != "none":
            from symdiff_cli.engine.relax_pool import RelaxPool

            self._pool = RelaxPool(RelaxSettings(relax, DEFAULT_MAX_STEPS if relax_steps is None else relax_steps),
                                   workers)
        self._on_relaxed = on_relaxed

    @property
    def active(self) -> bool:
        """Whether the pipeline changes anything (relaxes or filters)."""
        return self._pool is not None or self.keep != "all"

    @property
    def nothing_kept(self) -> bool:
        """--keep valid|stable and not one molecule passed."""
        return self.keep != "all" and self.summary.kept == 0

    @property
    def needs_metrics(self) -> bool:
        return self.active

    # Planning -----------------------------------------------------------------------------

    def plan(self, first_round: Iterator[tuple[int, int, int]], histogram: dict[int, int], num_atoms: int | None,
             batch_size: int, root: np.random.SeedSequence) -> Iterator[tuple[int, int, int]]:
        """The batches to sample: `first_round` (the plan of a plain run), then, for --keep, rounds
        of their own until `target` molecules have passed or the attempts are spent. `root` is
        the shard's seed sequence (engine/generate.py shard_seed_sequence)."""
        from symdiff_cli.engine.sampling import draw_atom_counts, plan_batches

        s = self.summary
        for batch in first_round:
            if self.keep != "all" and s.kept >= s.target:
                return
            yield batch
        if self.keep == "all":
            return
        # Rounds after the first take spawn keys 2, 3, ... of the shard's root: the first round
        # uses its children 0 and 1 (engine/generate.py iter_plan_for_shard).
        round_index = 0
        while s.kept < s.target and s.attempts < s.max_attempts:
            round_index += 1
            rate = max(s.acceptance, _LOWEST_PLANNED_ACCEPTANCE)
            size = min(s.max_attempts - s.attempts, max(s.target - s.kept, math.ceil((s.target - s.kept) / rate)))
            round_seed = np.random.SeedSequence(root.entropy, spawn_key=(1 + round_index,))
            counts_seq, plan_seq, order_seq = round_seed.spawn(3)
            if num_atoms is not None:
                counts = np.full(size, int(num_atoms), dtype=np.int64)
            else:
                counts = draw_atom_counts(histogram, size, np.random.default_rng(counts_seq))
            plan_seed = int(plan_seq.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)
            batches = plan_batches(counts, batch_size, plan_seed).batches
            order = np.random.default_rng(order_seq).permutation(len(batches))
            for k in order.tolist():
                if s.kept >= s.target:
                    return
                yield batches[k]

    # Per batch ------------------------------------------------------------------------------

    def count_sampled(self, count: int) -> None:
        """`count` more molecules were sampled (non-finite ones included)."""
        self.summary.attempts += count

    def relax_and_measure(self, mols: list, fmt: str) -> list[RelaxOutcome]:
        """Measure the raw molecules, relax them in place (positions and tags), measure again."""
        from symdiff_cli.chem.metrics import evaluate_molecule
        from symdiff_cli.io.formats import round_to_stored_precision

        if not self.active:
            return []
        self.summary.raw.add([evaluate_molecule(mol) for mol in mols])
        if self._pool is None:
            return []
        started = time.perf_counter()
        on_done = None if self._on_relaxed is None else (lambda k: self._on_relaxed(k, len(mols)))
        outcomes = self._pool.relax(mols, on_done)
        self.summary.relax_seconds += time.perf_counter() - started
        for mol, outcome in zip(mols, outcomes):
            mol.positions = outcome.positions
            mol.props.update(relax_tags(outcome))
            self.summary.relax_status[outcome.status] = self.summary.relax_status.get(outcome.status, 0) + 1
        # The file stores rounded coordinates: the tags and the keep test must see those.
        round_to_stored_precision(mols, fmt)
        return outcomes

    def keep_passing(self, mols: list, reports: list) -> tuple[list, list]:
        """The molecules (and their reports) that pass --keep, up to the number still needed."""
        if not self.active:
            return mols, reports
        if self._pool is not None:
            self.summary.relaxed.add(reports)
        if self.keep == "all":
            self.summary.kept += len(mols)
            return mols, reports
        kept_mols, kept_reports = [], []
        for mol, report in zip(mols, reports):
            if self.summary.kept >= self.summary.target:
                break
            if _passes(report, self.keep):
                kept_mols.append(mol)
                kept_reports.append(report)
                self.summary.kept += 1
        return kept_mols, kept_reports

    def done(self, sampled: int) -> int:
        """The molecules the progress bar counts as done: those sampled, or with --keep those kept."""
        return sampled if self.keep == "all" else self.summary.kept

    def close(self, interrupted: bool = False) -> None:
        if self._pool is not None:
            self._pool.close(interrupted=interrupted)


__all__ = ["BatchPipeline", "DEFAULT_ATTEMPTS_PER_MOLECULE", "KEEP_CHOICES", "PipelineSummary",
           "check_keep_options"]
