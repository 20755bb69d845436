"""Keep RDKit's and numpy's own warnings off the user's stderr.

Commands report what matters in their own words (skipped records, left-out molecules);
users pipe stderr into logs and scripts, where a stray "[12:00:00] WARNING: not removing
hydrogen atom without neighbors" or a numpy overflow warning with a source line reads like a
failure. RDKit's *error* log is left on: the readers capture it to give reasons for skipped
records (symdiff_cli/io/formats.py).
"""

from __future__ import annotations

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


__all__ = ["quiet_library_warnings"]
