"""What `symdiff train` may write into, and what --init-from may start from: a user's files are
never replaced, and a release that cannot start the run is refused before anything is written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from cli_helpers import run_cli as cli  # tests/, beside this file
from symdiff_cli.chem.elements import dataset_info
from symdiff_cli.engine.release import save_release
from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.dit import SymmetrisedDenoiser
from test_reliability_files import assert_one_line_error, snapshot, tiny_release

FAST = ("--preset", "tiny", "--max-steps", "1", "--batch-size", "8", "--quiet", "--threads", "1")


def train(capfd, small_npz: Path, out: Path, *options: str) -> tuple[int, str, str]:
    return cli(capfd, "train", "--data", str(small_npz), "--out", str(out), *FAST, *options)


def test_train_refuses_a_directory_whose_config_and_log_are_the_users(tmp_path, capfd, small_npz):
    out = tmp_path / "experiment"
    out.mkdir()
    (out / "config.json").write_text('{"learning_rate": 0.1}\n')
    (out / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n')
    before = snapshot(tmp_path)
    code, stdout, stderr = train(capfd, small_npz, out)
    assert_one_line_error(code, stdout, stderr, "config.json and metrics.jsonl not written by symdiff train", 2)
    assert snapshot(tmp_path) == before

    (out / "config.json").unlink()  # the log alone is still theirs
    before = snapshot(tmp_path)
    code, stdout, stderr = train(capfd, small_npz, out)
    assert_one_line_error(code, stdout, stderr, "holds metrics.jsonl not written", 2)
    assert snapshot(tmp_path) == before


def test_train_refuses_a_file_as_out(tmp_path, capfd, small_npz):
    out = tmp_path / "notes.txt"
    out.write_text("mine\n")
    code, stdout, stderr = train(capfd, small_npz, out)
    assert_one_line_error(code, stdout, stderr, "is a file, not a directory", 2)
    assert out.read_text() == "mine\n"


def test_train_writes_beside_other_files_and_keeps_them(tmp_path, capfd, small_npz):
    out = tmp_path / "run"
    out.mkdir()
    (out / "slurm-123.out").write_text("queued\n")  # a scheduler's log, written before the run starts
    code, _, stderr = train(capfd, small_npz, out)
    assert code == 0, stderr
    assert (out / "slurm-123.out").read_text() == "queued\n"
    assert (out / "checkpoint.pt").is_file()


def test_a_run_that_failed_before_its_first_checkpoint_can_be_started_again(tmp_path, capfd, small_npz):
    out = tmp_path / "run"
    code, _, stderr = train(capfd, small_npz, out)
    assert code == 0, stderr
    (out / "checkpoint.pt").unlink()  # what a crash before the first checkpoint leaves
    code, _, stderr = train(capfd, small_npz, out)
    assert code == 0, stderr
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("start") == 2


def _geom_release(path: Path) -> Path:
    geom = dataset_info("geom")
    cfg = dataclasses.replace(model_config_from_preset("tiny"), dataset="geom", atom_types=geom.atom_types,
                              max_atoms=geom.max_atoms)
    torch.manual_seed(0)
    return save_release(path, cfg, SymmetrisedDenoiser(cfg).state_dict(), {5: 1, 9: 2}, "geom", {"step": 0})


def test_init_from_a_release_of_another_dataset_is_refused_before_anything_is_written(tmp_path, capfd, small_npz):
    release = _geom_release(tmp_path / "geom-rel")
    before = snapshot(tmp_path)
    code, stdout, stderr = train(capfd, small_npz, tmp_path / "run", "--init-from", str(release))
    assert_one_line_error(code, stdout, stderr, "the release models geom", 1)
    assert "this run trains on qm9" in stderr and "--dataset geom" in stderr
    assert snapshot(tmp_path) == before  # no half-made run directory


def test_init_from_refuses_model_settings_it_would_ignore(tmp_path, capfd, small_npz):
    release = tiny_release(tmp_path / "rel")
    before = snapshot(tmp_path)
    code, stdout, stderr = train(capfd, small_npz, tmp_path / "run", "--init-from", str(release),
                                 "--set", "model.hidden=32")
    assert_one_line_error(code, stdout, stderr, "model.hidden=32 differs from its 64", 1)
    assert snapshot(tmp_path) == before


def test_init_from_says_when_the_preset_given_is_not_the_model_trained(tmp_path, capfd, small_npz):
    release = tiny_release(tmp_path / "rel")
    args = ("train", "--data", str(small_npz), "--init-from", str(release), "--max-steps", "1", "--batch-size", "8",
            "--threads", "1")
    code, _, stderr = cli(capfd, *args, "--out", str(tmp_path / "a"), "--preset", "small")
    assert code == 0, stderr
    assert "--preset small is not used" in " ".join(stderr.split())
    code, _, stderr = cli(capfd, *args, "--out", str(tmp_path / "b"), "--preset", "tiny")  # the release's own
    assert code == 0, stderr
    assert "is not used" not in stderr
