"""One training run per run directory: the lock file `train.lock`.

Two `symdiff train` runs on one --out would both append to metrics.jsonl and overwrite each
other's checkpoint. The first run holds an exclusive flock on `train.lock` and writes its pid
and host into it; a second run finds the flock taken and refuses, naming the holder. The
kernel drops a flock when its process dies (even by SIGKILL), so a lock left by a dead run is
taken over without anyone deleting it. Where the file system does not support flock (some
network file systems), the pid and host decide instead: a lock naming a live process on this
host, or any process on another host, is respected.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from symdiff_cli.errors import SymdiffError

LOCK_NAME = "train.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096).decode("utf-8"))
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not written its pid yet"
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


class RunLock:
    """The lock on a run directory, held from `acquire()` to `release()` (or the `with` block)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise SymdiffError naming the run that holds it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock(fd):
                    raise SymdiffError(
                        f"{self.directory} is in use by another training run ({_describe(_read_holder(fd))}); "
                        f"wait for it to end or choose another --out (if that run is gone, remove {self.path})")
                # The previous holder removes the file when it ends; if it did so between our
                # open and our flock, we hold a lock on a file nobody else will ever see.
                try:
                    same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same_file = False
                if not same_file:
                    os.close(fd)
                    continue
                record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, record.encode("utf-8"))
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self

    def _lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        # No flock here: a recorded holder counts unless it is a dead process on this host.
        holder = _read_holder(fd)
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int) or pid == os.getpid():
            return True
        if host == socket.gethostname():
            return not _pid_alive(pid)
        return False

    def release(self) -> None:
        if self._fd is None:
            return
        # Removed while still locked, so that a run waiting to take over re-checks the file.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


__all__ = ["LOCK_NAME", "RunLock"]
