"""`symdiff convert IN OUT --relax ...`: relax molecules and stream them into OUT as they finish.

Molecules are relaxed in chunks by the worker pool (engine/relax_pool.py) and each finished
chunk is appended to OUT's temporary file, so Ctrl-C, SIGTERM or SIGHUP keep every molecule
relaxed so far in a complete, shorter file (renamed into place) and an error leaves no file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.relax import RelaxSettings, relax_tags

# Molecules handed to the pool at a time, per worker: enough to keep every worker busy while
# the slowest molecule of a chunk finishes, few enough that an interrupt loses little.
CHUNK_PER_WORKER = 4


@dataclass
class RelaxFileResult:
    """What was written: `written` molecules (`left_out` of them not, SMILES output only), to
    `out`: the path asked for, or beside it when an interrupt left the file there as it was."""

    total: int
    written: int = 0
    left_out: int = 0
    status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stop_signal: int | None = None
    out: str = ""


def relax_into_file(molecules: Sequence[Molecule], path: str, fmt: str, bonds: str, settings: RelaxSettings,
                    workers: int | None = None,
                    on_done: Callable[[int], None] | None = None) -> RelaxFileResult:
    """Relax `molecules` (in place: positions and relaxation tags) and write them to `path`.

    on_done(k) reports k molecules relaxed so far. A stop signal ends the run with the
    finished chunks in a complete file and `stop_signal` set; any other error removes it.
    """
    from symdiff_cli.engine.relax_pool import RelaxPool
    from symdiff_cli.engine.stop_signals import StopSignals, signal_of
    from symdiff_cli.io.formats import round_to_stored_precision
    from symdiff_cli.io.writer import MoleculeWriter

    result = RelaxFileResult(total=len(molecules))
    started = time.perf_counter()
    pool = RelaxPool(settings, workers)
    chunk = CHUNK_PER_WORKER * pool.workers
    with StopSignals() as stops:
        with stops.deferred():
            writer = MoleculeWriter(path, fmt, bonds)
        try:
            for start in range(0, len(molecules), chunk):
                batch = list(molecules[start:start + chunk])
                report = None if on_done is None else (lambda k, start=start: on_done(start + k))
                outcomes = pool.relax(batch, report)
                for mol, outcome in zip(batch, outcomes):
                    mol.positions = outcome.positions
                    mol.props.update(relax_tags(outcome))
                round_to_stored_precision(batch, writer.format)
                with stops.deferred():
                    writer.write(batch)
                    for outcome in outcomes:
                        result.status[outcome.status] = result.status.get(outcome.status, 0) + 1
                    result.written, result.left_out = writer.written, writer.skipped
                stops.raise_if_received()
        except KeyboardInterrupt as interrupt:
            result.stop_signal = signal_of(interrupt)
            with stops.deferred():
                pool.close(interrupted=True)
                writer.abort(keep=result.written + result.left_out > 0)
        except BaseException:
            with stops.deferred():
                pool.close(interrupted=True)
                writer.abort(keep=False)
            raise
        else:
            with stops.deferred():
                pool.close()
                writer.close()
    result.seconds = time.perf_counter() - started
    result.out = writer.final_path
    return result


__all__ = ["RelaxFileResult", "relax_into_file"]
