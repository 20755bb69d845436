"""Running the console entry point inside the test process (fast: torch is imported once)."""

from __future__ import annotations

import io
import sys


def run_cli(capture, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """`symdiff ARGS` in this process: (exit code, stdout, stderr). `capture` is pytest's capsys
    or capfd fixture; `stdin` bytes stand in for standard input."""
    from symdiff_cli.cli import main

    saved_argv, saved_stdin = sys.argv, sys.stdin
    sys.argv = ["symdiff", *args]
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv, sys.stdin = saved_argv, saved_stdin
    captured = capture.readouterr()
    return code, captured.out, captured.err


def generated_molecules(capture, out, n: int, batch_size: int, seed: int, *options: str) -> list:
    """`symdiff generate --quiet` into `out` with these options; the molecules read back (the
    command must succeed and every record read)."""
    from symdiff_cli.io.reader import read_molecules

    code, _, err = run_cli(capture, "generate", "--n", str(n), "--batch-size", str(batch_size), "--seed", str(seed),
                           "--out", str(out), "--quiet", *options)
    assert code == 0, err
    mols, skipped = read_molecules(str(out))
    assert skipped == 0 and len(mols) == n
    return mols
