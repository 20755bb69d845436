"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class SymdiffError(Exception):
    """A problem with the user's input or environment (not a bug): shown without traceback."""

    exit_code = 1


class UsageError(SymdiffError):
    """Bad option values or combinations."""

    exit_code = 2
