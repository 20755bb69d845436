"""Relax many molecules in worker processes, in order, with the same result for any --workers.

Each molecule is relaxed on its own (chem/relax.py), so molecules spread over processes
without talking to each other. Results come back in input order; each worker runs with one
OpenMP thread, so a molecule's arithmetic, and hence the output file, does not depend on how
many workers there are. Even one worker is a separate process for that reason: tblite inside
the main process would use as many OpenMP threads as there are cores, and a threaded SCF sums
in another order.

Workers are started with "spawn", not fork: the main process has PyTorch's thread pools
running, and a forked child of a threaded process can hang on a lock held by a thread that no
longer exists. They start with SIGINT ignored, so Ctrl-C at a terminal (sent to the whole
process group) reaches only the main process, which keeps the finished molecules and
terminates the workers; their standard output goes to /dev/null, so no library's chatter can
get into molecules written to standard output.
"""

from __future__ import annotations

import os
import signal
from typing import Callable, Iterable, Sequence

from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.relax import RelaxOutcome, RelaxSettings, relax_molecule, require_method


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _init_worker() -> None:
    """Set up a worker before it imports any numerical library."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")


def _relax_one(job: tuple[Molecule, RelaxSettings]) -> RelaxOutcome:
    mol, settings = job
    return relax_molecule(mol, settings)


class RelaxPool:
    """Worker processes that relax molecules; start on first use, close with `close()` (or as a
    context manager). `close()` after an interrupt terminates the workers at once."""

    def __init__(self, settings: RelaxSettings, workers: int | None = None) -> None:
        require_method(settings.method)
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
        self.settings = settings
        self.workers = workers or default_workers()
        self._pool = None

    def _start(self):
        import multiprocessing

        if self._pool is None:
            # Children inherit an ignored SIGINT through exec, so they ignore it from their first
            # instruction, before _init_worker runs; the main process's handler is put back at once.
            previous = signal.getsignal(signal.SIGINT)
            in_main_thread = _in_main_thread()
            if in_main_thread:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                context = multiprocessing.get_context("spawn")
                self._pool = context.Pool(self.workers, initializer=_init_worker)
            finally:
                if in_main_thread:
                    signal.signal(signal.SIGINT, previous)
        return self._pool

    def relax(self, mols: Sequence[Molecule], on_done: Callable[[int], None] | None = None) -> list[RelaxOutcome]:
        """The outcomes of relaxing `mols`, in order; on_done(k) after each, with k finished so far."""
        if not mols:
            return []
        pool = self._start()
        outcomes: list[RelaxOutcome] = []
        jobs: Iterable = ((mol, self.settings) for mol in mols)
        # chunksize 1: molecules differ a lot in cost, and ordered imap reports each as it comes.
        for outcome in pool.imap(_relax_one, jobs, chunksize=1):
            outcomes.append(outcome)
            if on_done is not None:
                on_done(len(outcomes))
        return outcomes

    def close(self, interrupted: bool = False) -> None:
        """Stop the workers: wait for them after normal work, terminate them after an interrupt."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if interrupted:
            pool.terminate()
        else:
            pool.close()
        pool.join()

    def __enter__(self) -> "RelaxPool":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(interrupted=exc_type is not None)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = ["RelaxPool", "default_workers"]
