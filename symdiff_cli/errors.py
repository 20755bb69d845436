"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class SymdiffError(Exception):
    """A problem with the user's input or environment (not a bug): shown without traceback."""

    exit_code = 1


class UsageError(SymdiffError):
    """Bad option values or combinations."""

    exit_code = 2


class OutputClosed(Exception):
    """Standard output's reader went away (`| head`, a closed pipe).

    Not an OSError on purpose: Click turns an EPIPE OSError into exit code 1, where Unix tools
    stop quietly with 141 (128 + SIGPIPE), which `symdiff.cli.main` does for this class.
    """

    exit_code = 141


def _os_error_behind(err: BaseException) -> OSError | None:
    """The OSError that `err` is or was raised from (torch.save reports a full disk as a
    RuntimeError whose context is the OSError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def write_error(err: BaseException, path: object) -> SymdiffError | None:
    """The one-line SymdiffError for a failed write of `path`, or None when `err` is not about
    the file system (then it is a bug and keeps its traceback)."""
    import errno

    os_err = _os_error_behind(err)
    if os_err is None:
        return None
    if os_err.errno == errno.ENOSPC:
        return SymdiffError(f"no space left on device writing {path}")
    if os_err.errno == errno.EDQUOT:
        return SymdiffError(f"disk quota exceeded writing {path}")
    return SymdiffError(f"cannot write {path}: {os_err.strerror or os_err}")
