"""symdiff_cli.io.atomic: all-or-nothing file output."""

from __future__ import annotations

import os

import pytest

from symdiff_cli.io.atomic import atomic_output, file_mode_from_umask


class Boom(Exception):
    pass


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_writes_text_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_output(target) as handle:
        handle.write("a\nb\n")
    # Text mode is UTF-8 and writes newlines as given.
    assert target.read_bytes() == b"a\nb\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_writes_binary(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_output(str(target), "wb") as handle:
        handle.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_exception_removes_temp_file_and_creates_nothing(tmp_path, error):
    target = tmp_path / "new.txt"
    with pytest.raises(error):
        with atomic_output(target) as handle:
            handle.write("half")
            handle.flush()
            assert len(os.listdir(tmp_path)) == 1  # the temporary file exists meanwhile
            raise error()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_exception_keeps_the_previous_file(tmp_path, error):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(error):
        with atomic_output(target) as handle:
            handle.write("new")
            raise error()
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_finished_file_gets_plain_open_permissions(tmp_path, umask_027):
    target = tmp_path / "perm.txt"
    with atomic_output(target) as handle:
        handle.write("x")
    assert file_mode_from_umask() == 0o640
    assert (target.stat().st_mode & 0o777) == 0o640


def test_temp_file_is_private_until_committed(tmp_path, umask_027):
    with atomic_output(tmp_path / "p.txt") as handle:
        (temp,) = os.listdir(tmp_path)
        assert temp.startswith(".p.txt.") and temp.endswith(".tmp")
        assert (os.stat(tmp_path / temp).st_mode & 0o777) == 0o600
        handle.write("x")


def test_missing_folder_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_output(tmp_path / "absent" / "f.txt") as handle:
            handle.write("x")
    assert os.listdir(tmp_path) == []


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError):
        with atomic_output(tmp_path / "f.txt", "a"):
            pass
    assert os.listdir(tmp_path) == []


def test_failed_torch_save_leaves_no_checkpoint(tmp_path):
    from symdiff_cli.engine.checkpoint import atomic_torch_save

    folder = tmp_path / "run"
    with pytest.raises(Exception):
        atomic_torch_save({"f": lambda: None}, folder / "checkpoint.pt")  # lambdas do not pickle
    assert os.listdir(folder) == []
    atomic_torch_save({"step": 3}, folder / "checkpoint.pt")
    assert os.listdir(folder) == ["checkpoint.pt"]
