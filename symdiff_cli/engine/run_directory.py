"""Which directories a training run may write into: any but one whose run files are not a run's.

A run writes config.json, appends to metrics.jsonl, saves checkpoint.pt and holds train.lock in
its --out. Where the directory already has a file of one of those names that a run did not write
(the user's own config.json or metrics.jsonl), training would replace it or mix our lines into
it, so the directory is refused before anything is written (as `convert` refuses to replace a
directory that is not a release). Other files (a SLURM log, notes) are left as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from symdiff_cli.engine.checkpoint import CHECKPOINT_NAME
from symdiff_cli.engine.run_lock import LOCK_NAME
from symdiff_cli.errors import UsageError

RUN_CONFIG = "config.json"
RUN_LOG = "metrics.jsonl"
RUN_FILES = (CHECKPOINT_NAME, RUN_CONFIG, RUN_LOG, LOCK_NAME)


def _first_json_line(path: Path) -> object:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                return json.loads(line)
    return {}


def _is_run_config(path: Path) -> bool:
    config = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(config, dict) and isinstance(config.get("model"), dict) and isinstance(config.get("train"), dict)


def _is_run_log(path: Path) -> bool:
    first = _first_json_line(path)  # an empty log is what a run killed before its first line leaves
    return isinstance(first, dict) and (not first or "event" in first)


def _reads_as(path: Path, check: Callable[[Path], bool]) -> bool:
    try:
        return check(path)
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def _not_written_by_a_run(out: Path) -> list[str]:
    """The run files of `out` (config.json, metrics.jsonl, ...) that a run did not write."""
    foreign = [name + "/" for name in RUN_FILES if (out / name).is_dir()]
    if (out / RUN_CONFIG).is_file() and not _reads_as(out / RUN_CONFIG, _is_run_config):
        foreign.append(RUN_CONFIG)
    if (out / RUN_LOG).is_file() and not _reads_as(out / RUN_LOG, _is_run_log):
        foreign.append(RUN_LOG)
    return foreign


def check_run_directory(out: Path) -> None:
    """Refuse an --out that is a file, or a directory whose config.json or metrics.jsonl a run
    did not write (checkpoint.pt is checked when it is loaded)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory: choose a new or empty directory")
    if not out.is_dir():
        return
    foreign = _not_written_by_a_run(out)
    if foreign:
        raise UsageError(f"--out {out} holds {' and '.join(foreign)} not written by symdiff train, which a run would "
                         "overwrite: choose another --out")
