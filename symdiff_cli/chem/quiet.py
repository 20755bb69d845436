"""Keep RDKit's and numpy's own warnings off the user's stderr.

Commands report what matters in their own words (skipped records, left-out molecules);
users pipe stderr into logs and scripts, where a stray "[12:00:00] WARNING: not removing
hydrogen atom without neighbors" or a numpy overflow warning with a source line reads like a
failure. RDKit's *error* log is left on: the readers capture it to give reasons for skipped
records (symdiff_cli/io/sdf.py, io/smiles.py), as `captured_rdkit_errors` below.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from typing import Iterator

_RDKIT_CHATTER = ("rdApp.warning", "rdApp.info", "rdApp.debug")


@contextmanager
def quiet_library_warnings() -> Iterator[None]:
    """RDKit's warning/info log and numpy's floating-point warnings are off inside the block."""
    import numpy as np
    from rdkit import RDLogger

    for name in _RDKIT_CHATTER:
        RDLogger.DisableLog(name)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            # numpy reports some conditions (empty means, overflow in casts) through warnings.
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        # rdApp.warning is on by default; info and debug are off by default.
        RDLogger.EnableLog("rdApp.warning")



@contextmanager
def captured_rdkit_errors() -> Iterator[list[str]]:
    """Collect RDKit's error log lines instead of letting them spill onto stderr.

    Yields a list that holds the cleaned messages once the block has run. Older RDKit builds
    lack CaptureErrorLog; there we only silence the log.
    """
    from rdkit import rdBase

    messages: list[str] = []
    capture_class = getattr(rdBase, "CaptureErrorLog", None)
    if capture_class is None:
        with rdBase.BlockLogs():
            yield messages
        return
    with capture_class() as capture:
        try:
            yield messages
        finally:
            try:
                raw = capture.messages
            except UnicodeDecodeError:  # RDKit echoes input bytes that are not UTF-8
                raw = "RDKit could not parse it (the record is not UTF-8 text)"
            messages.extend(_clean_rdkit_messages(raw))


def _clean_rdkit_messages(raw: str) -> list[str]:
    """RDKit log text without timestamps, levels and the boilerplate 'moving to...' lines."""
    cleaned = []
    for line in raw.splitlines():
        line = re.sub(r"^\[\d\d:\d\d:\d\d\]\s*", "", line).strip()
        line = re.sub(r"^(ERROR|WARNING):\s*", "", line)
        # Separator lines ("****") carry no reason; the line after one does.
        if re.search(r"[A-Za-z0-9]", line) and not line.startswith("moving to the beginning of the next molecule"):
            cleaned.append(line)
    return cleaned


__all__ = ["quiet_library_warnings", "captured_rdkit_errors"]
