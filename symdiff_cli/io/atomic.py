"""Atomic file output: write a temporary file next to the target, rename it into place when done.

Readers never see a half-written file, and an error or Ctrl-C leaves the previous file (or
none) in place. `atomic_output` covers the write-everything-at-once case; the three pieces it
is made of (`open_temp_file`, `commit_temp_file`, `discard_temp_file`) serve writers that
keep the temporary file open across many writes (MoleculeWriter).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator

__all__ = ["atomic_output", "commit_temp_file", "discard_temp_file", "file_mode_from_umask", "names_a_stream",
           "open_temp_file", "write_target"]


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode_from_umask() -> int:
    """The permissions a plain open() would give a new file (0666 less the umask)."""
    return 0o666 & ~current_umask()


def write_target(path: str | os.PathLike) -> str:
    """The absolute path a write to `path` lands on: the file a symlink points to.

    A plain open() writes through a symlink; renaming a temporary file onto the link itself
    would instead replace the link with a regular file and leave its target stale.
    """
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _finished_mode(target: str) -> int:
    """The permission bits a finished output gets: an overwritten file keeps its own (a 0600
    file must not become world-readable), a new one gets what a plain open() would."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return file_mode_from_umask()


def names_a_stream(path: str | os.PathLike) -> bool:
    """Whether `path` (or a symlink chain from it) is /dev/stdout, /dev/fd/N, /proc/.../fd/N or
    another device path. Resolved, /dev/stdout of a command run as `> log.txt` is log.txt itself,
    a regular file that the final rename would replace, losing what was in it."""
    current = os.path.abspath(os.fspath(path))
    for _ in range(40):  # symlink hops; a loop ends here too
        if current.startswith("/proc/") or (current.startswith("/dev/") and not current.startswith("/dev/shm/")):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return False


def open_temp_file(path: str | os.PathLike, mode: str = "wb", suffix: str = ".tmp") -> tuple[IO, str]:
    """A new temporary file `.NAME.XXXX<suffix>` in the folder of `path`, open for writing.

    When `path` is a symlink the temporary file goes next to the file it points to, so that
    the final rename stays on one file system. mode "wb" gives a binary file, "w" a UTF-8
    text file that writes newlines as given. Returns (file object, temporary path). Raises
    OSError (the folder must exist; an existing `path` must be a regular file).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    if names_a_stream(path):
        raise OSError(errno.EINVAL, "a device or another process's stream, not a file; write to '-' and redirect "
                      "standard output instead", os.fspath(path))
    target = write_target(path)
    try:
        existing = os.stat(target).st_mode
    except OSError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing):
        # A rename would replace a device or pipe (/dev/null, /dev/stdout, a FIFO) with a
        # regular file; the user meant a stream, which is what '-' is for.
        kind = "a directory" if stat.S_ISDIR(existing) else "not a regular file"
        raise OSError(errno.EINVAL, f"{kind}; write to '-' and redirect standard output instead", os.fspath(path))
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
    """Flush, fsync and close `handle` and move it onto `path` (through a symlink, onto the
    file it points to), with the permissions of the file it replaces or, for a new file,
    those of a plain open()."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    target = write_target(path)
    # mkstemp creates 0600, which is right only where the replaced file was 0600 itself.
    os.chmod(temp_path, _finished_mode(target))
    os.replace(temp_path, target)


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
