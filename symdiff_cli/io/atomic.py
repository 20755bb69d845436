"""Atomic file output: write a temporary file next to the target, rename it into place when done.

Readers never see a half-written file, and an error or Ctrl-C leaves the previous file (or
none) in place. `atomic_output` covers the write-everything-at-once case; the three pieces it
is made of (`open_temp_file`, `commit_temp_file`, `discard_temp_file`) serve writers that
keep the temporary file open across many writes (MoleculeWriter).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator

__all__ = ["atomic_output", "commit_temp_file", "discard_temp_file", "file_mode_from_umask", "open_temp_file"]


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode_from_umask() -> int:
    """The permissions a plain open() would give a new file (0666 less the umask)."""
    return 0o666 & ~current_umask()


def open_temp_file(path: str | os.PathLike, mode: str = "wb", suffix: str = ".tmp") -> tuple[IO, str]:
    """A new temporary file `.NAME.XXXX<suffix>` in the folder of `path`, open for writing.

    mode "wb" gives a binary file, "w" a UTF-8 text file that writes newlines as given.
    Returns (file object, temporary path). Raises OSError (the folder must exist).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    target = os.path.abspath(os.fspath(path))
    fd, temp_path = tempfile.mkstemp(
        dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=suffix
    )
    try:
        if mode == "w":
            handle = os.fdopen(fd, "w", encoding="utf-8", newline="")
        else:
            handle = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        os.unlink(temp_path)
        raise
    return handle, temp_path


def commit_temp_file(handle: IO, temp_path: str, path: str | os.PathLike) -> None:
    """Flush, fsync and close `handle`, give it plain-open() permissions, move it onto `path`."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    # mkstemp creates 0600; a finished output gets the permissions a plain open() would.
    os.chmod(temp_path, file_mode_from_umask())
    os.replace(temp_path, path)


def discard_temp_file(handle: IO | None, temp_path: str | None) -> None:
    """Close `handle` (if open) and remove the temporary file (if still there)."""
    if handle is not None and not handle.closed:
        try:
            handle.close()
        except OSError:
            # On a full disk closing flushes the buffer again and fails again; the file is
            # closed all the same, and must still be removed.
            pass
    if temp_path is not None:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass


@contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", suffix: str = ".tmp") -> Iterator[IO]:
    """Yield a file object whose contents replace `path` atomically when the block succeeds.

    On any exception, KeyboardInterrupt included, the temporary file is removed and `path`
    is left as it was. The folder of `path` must exist; mode is "w" (UTF-8 text) or "wb".

        with atomic_output("out.json") as handle:
            handle.write(text)
    """
    handle, temp_path = open_temp_file(path, mode, suffix)
    try:
        yield handle
        commit_temp_file(handle, temp_path, path)
    except BaseException:
        discard_temp_file(handle, temp_path)
        raise
