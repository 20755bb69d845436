"""A run's training log, metrics.jsonl: one JSON record per line, appended as training goes.

Kept free of torch so that scripts reading logs start quickly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from symdiff_cli.errors import write_error


class MetricsLog:
    """Append-only JSON lines, flushed per record so a killed run keeps its history."""

    def __init__(self, path: Path, enabled: bool):
        self.enabled = enabled
        self.path = path
        self.file = None
        if enabled:
            try:
                self.file = open(path, "a", encoding="utf-8")
            except OSError as err:
                raise write_error(err, path) from None

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as err:
                self._drop()
                raise write_error(err, self.path) from None

    def _drop(self) -> None:
        # Closed now, quietly: left to the garbage collector, the failed buffer would be flushed
        # again and print "Exception ignored" after the one-line error.
        try:
            self.file.close()
        except OSError:
            pass
        self.file = None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, which a live or killed run may be writing."""
    text = path.read_text(encoding="utf-8")
    # Each record ends with its newline: a last line without one was caught mid-append.
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]
