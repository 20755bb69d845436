"""Error messages that name the real problem: each case here once gave a misleading one."""

from __future__ import annotations

import json
import os
import random

import pytest

from cli_helpers import run_cli as cli  # tests/, beside this file
from symdiff_cli.chem.metric_rows import MetricRow
from test_reliability_files import WATER_XYZ, assert_one_line_error, tiny_checkpoint, tiny_release


@pytest.fixture
def water(tmp_path):
    path = tmp_path / "water.xyz"
    path.write_text(WATER_XYZ)
    return path


def test_random_bytes_named_npz_are_not_called_pickled_data(tmp_path, capfd):
    path = tmp_path / "r.npz"
    path.write_bytes(random.Random(0).randbytes(3000).replace(b"\x80", b"\x81"))
    code, out, err = cli(capfd, "convert", str(path), str(tmp_path / "o.xyz"))
    assert_one_line_error(code, out, err, "is not an npz archive (no zip header)")


def test_an_npz_named_sdf_is_named_an_npz(tmp_path, capfd, water):
    code, _, err = cli(capfd, "convert", str(water), str(tmp_path / "w.npz"))
    assert code == 0, err
    (tmp_path / "w.npz").rename(tmp_path / "w.sdf")
    code, out, err = cli(capfd, "convert", str(tmp_path / "w.sdf"), str(tmp_path / "o.xyz"))
    assert_one_line_error(code, out, err, "is an npz archive, not a text molecule file: name it .npz")


def test_a_directory_in_is_told_apart_from_a_release(tmp_path, capfd):
    plain = tmp_path / "plain"
    plain.mkdir()
    code, out, err = cli(capfd, "convert", str(plain), str(tmp_path / "o.xyz"))
    assert_one_line_error(code, out, err, "is a directory but not a symdiff release", 2)
    run = tmp_path / "run"
    run.mkdir()
    tiny_checkpoint(run / "checkpoint.pt")
    code, out, err = cli(capfd, "convert", str(run), str(tmp_path / "rel"))
    assert_one_line_error(code, out, err, f"is a training run: give its checkpoint, {run / 'checkpoint.pt'}", 2)
    assert not (tmp_path / "rel").exists()


def test_a_text_file_given_as_a_checkpoint(tmp_path, capfd):
    path = tmp_path / "notes.pt"
    path.write_text("hello\n")
    code, out, err = cli(capfd, "convert", str(path), str(tmp_path / "rel"))
    assert_one_line_error(code, out, err, "is not a PyTorch checkpoint")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_standard_output_on_a_full_device_is_named(tmp_path, water):
    import subprocess
    import sys

    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "symdiff_cli", "convert", str(water), "-", "--to", "xyz"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip() == "Error: no space left on device writing standard output"


def test_an_empty_json_path_is_called_empty(tmp_path, capfd, water):
    code, out, err = cli(capfd, "evaluate", str(water), "--json", "", "--no-novelty")
    assert_one_line_error(code, out, err, "--json is empty", 2)


@pytest.mark.parametrize("key, value, expected", [
    ("hidden", "abc", "model.hidden must be int, not 'abc'"),
    ("timesteps", 0, "model.timesteps must be positive, not 0"),
    ("swiglu", "yes", "model.swiglu must be bool, not 'yes'"),
])
def test_a_release_config_of_the_wrong_types_is_named(tmp_path, capfd, key, value, expected):
    release = tiny_release(tmp_path / "rel")
    config = json.loads((release / "config.json").read_text())
    config["model_config"][key] = value
    (release / "config.json").write_text(json.dumps(config))
    code, out, err = cli(capfd, "generate", "--model", str(release), "--n", "1", "--out", str(tmp_path / "x.sdf"))
    assert_one_line_error(code, out, err, expected)


def test_train_names_its_own_extensions(tmp_path, capfd):
    path = tmp_path / "notes.txt"
    path.write_text("x\n")
    code, out, err = cli(capfd, "train", "--data", str(path), "--out", str(tmp_path / "run"), "--max-steps", "1",
                         "--quiet")
    assert_one_line_error(code, out, err, "unsupported file extension for training data (use .xyz, .sdf, .mol, .npz)")
    assert "give the format" not in err


def test_a_fraction_of_nothing_is_not_zero_percent():
    # Uniqueness when no molecule is valid: 0 of 0 is undefined; 0 of 5 is 0 %.
    assert MetricRow("uniqueness", "Uniqueness", 0.0, 0, 0).percent == "n/a"
    assert MetricRow("uniqueness", "Uniqueness", 0.0, 0, 5).percent == "0.00 %"
