"""Output to a pipe whose reader leaves early (`| head`): the command stops with 141, as Unix
tools do, instead of reporting success for output that never arrived."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from symdiff_cli.io.formats import write_stdout

WATER_XYZ = "3\nwater\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"


class LeavingReader:
    """Standard output's binary buffer as CPython's behaves on a pipe whose reader leaves
    mid-write (seen under strace): the large write comes back short, with no error; the
    next write finds the pipe broken."""

    def __init__(self) -> None:
        self.received = bytearray()

    def write(self, data) -> int:
        if self.received:
            raise BrokenPipeError(32, "Broken pipe")
        self.received += bytes(data[:65536])
        return len(self.received)

    def flush(self) -> None:
        pass


def test_write_stdout_raises_when_the_reader_leaves_mid_write(monkeypatch):
    buffer = LeavingReader()
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=buffer, flush=lambda: None))
    with pytest.raises(BrokenPipeError):
        write_stdout(bytes(1_000_000))
    assert len(buffer.received) == 65536


@pytest.fixture
def many_waters(tmp_path):
    path = tmp_path / "waters.xyz"
    path.write_text(WATER_XYZ * 20000)  # ~2 MB of XYZ: far more than a pipe buffer
    return path


@pytest.mark.parametrize("args", [
    ("convert", "{xyz}", "-", "--to", "xyz"),
    ("evaluate", "{xyz}", "--per-molecule", "-", "--no-novelty"),
])
def test_a_reader_that_leaves_early_ends_the_command_with_141(many_waters, args):
    command = [sys.executable, "-m", "symdiff_cli", *(a.format(xyz=many_waters) for a in args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(100)
    process.stdout.close()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 141, stderr.decode()
    assert b"Converted" not in stderr and b"Traceback" not in stderr
