"""SIGINT, SIGTERM and SIGHUP as orderly stops.

Ctrl-C, `timeout`, Slurm's time limit and pre-emption, and a closed terminal all ask a run to
stop. Python's default turns only SIGINT into an exception; SIGTERM and SIGHUP kill the
process on the spot, which loses finished work and leaves temporary files behind. Inside
`StopSignals` all three raise `Interrupted` (a KeyboardInterrupt, so every cleanup written
for Ctrl-C applies), and the process ends with the shell's code 128 + signal number.

Work that must not be cut in half (renaming a finished file, one training step) runs inside
`stops.deferred()`: a signal arriving there is only recorded, and the caller looks at
`stops.received` when the work is whole; `stops.interruptible()` reopens a deferred stretch
for work that may be abandoned. Only the first signal counts; later ones are ignored
so that a run already cleaning up is not cut short again.

Only this module knows which signals stop a run; nothing here imports torch.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator

STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code_for(signum: int) -> int:
    """The shell's exit status for a process stopped by `signum` (130 SIGINT, 143 SIGTERM, 129 SIGHUP)."""
    return 128 + int(signum)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. `signum` is the signal; `exit_code` the status to end with."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.signum)


def signal_of(interrupt: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt: its own for Interrupted, SIGINT otherwise."""
    return getattr(interrupt, "signum", signal.SIGINT)


class StopSignals:
    """While active, the first stop signal raises Interrupted, or, inside `deferred()`, is only
    recorded in `received`.

    Signals the process ignores (SIGINT of a background job, SIGHUP under nohup) stay ignored.
    Handlers can only be set from the main thread; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._depth = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            if current is signal.SIG_IGN:
                continue
            self._previous[signum] = current
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth = 0
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signum
        if self._depth == 0:
            raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a stop signal does not interrupt; look at `received` after it."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block within deferred code that a stop signal cuts short after all, by raising
        Interrupted: for work that is safe to abandon and may outlast a scheduler's grace
        between SIGTERM and SIGKILL (sampling for an evaluation)."""
        self.raise_if_received()
        depth, self._depth = self._depth, 0
        try:
            yield
        finally:
            self._depth = depth

    def defer(self) -> None:
        """Treat the rest of the `with StopSignals()` block as one deferred block."""
        self._depth += 1

    def raise_if_received(self) -> None:
        """Raise Interrupted for a signal recorded inside a deferred block."""
        if self.received is not None:
            raise Interrupted(self.received)


__all__ = ["STOP_SIGNALS", "Interrupted", "StopSignals", "exit_code_for", "signal_name", "signal_of"]
