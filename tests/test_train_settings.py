"""Training settings as a researcher gives them: a config file and --set apply (or are refused),
a resumed run keeps its model, data paths and budget, and what a run exports says what it is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_helpers import run_cli as cli  # tests/, beside this file
from symdiff_cli.commands.train import parse_duration
from symdiff_cli.errors import UsageError
from test_reliability_files import assert_one_line_error, snapshot, tiny_checkpoint

QUICK = ("--batch-size", "8", "--threads", "1", "--quiet")


def run_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_a_config_file_sets_what_the_command_line_leaves_at_its_defaults(tmp_path, capfd, small_npz):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"model": {"hidden": 32, "depth": 2},
                                  "train": {"preset": "tiny", "out": str(tmp_path / "from-config"),
                                            "data": [str(small_npz)], "max_steps": 2, "seed": 3, "log_every": 1}}))
    code, _, err = cli(capfd, "train", "--config", str(config), *QUICK)
    assert code == 0, err
    recorded = run_config(tmp_path / "from-config")
    assert recorded["train"]["seed"] == 3 and recorded["train"]["log_every"] == 1
    assert recorded["train"]["preset"] == "tiny" and recorded["model"]["hidden"] == 32

    # an option given on the command line wins over the file and --set
    code, _, err = cli(capfd, "train", "--config", str(config), "--out", str(tmp_path / "cli"), "--seed", "7",
                       "--set", "train.seed=5", *QUICK)
    assert code == 0, err
    assert run_config(tmp_path / "cli")["train"]["seed"] == 7

    # a run's own config.json is a config file
    code, _, err = cli(capfd, "train", "--config", str(tmp_path / "cli" / "config.json"), "--out",
                       str(tmp_path / "again"), *QUICK)
    assert code == 0, err
    assert run_config(tmp_path / "again")["train"]["seed"] == 7


@pytest.mark.parametrize("setting, expected", [
    ("model.depth=2.9", "model.depth=2.9: expected a value of type int"),
    ("model.swiglu=maybe", "model.swiglu='maybe': expected a value of type bool"),
    ("train.precision=fp16", "--precision must be auto, fp32 or bf16"),
])
def test_set_refuses_what_it_would_round_or_guess(tmp_path, capfd, small_npz, setting, expected):
    code, out, err = cli(capfd, "train", "--data", str(small_npz), "--out", str(tmp_path / "run"), "--preset", "tiny",
                         "--max-steps", "1", "--set", setting, *QUICK)
    assert_one_line_error(code, out, err, expected, 2)
    assert not (tmp_path / "run").exists()


def test_a_negative_seed_is_one_line_and_leaves_no_directory(tmp_path, capfd, small_npz):
    code, out, err = cli(capfd, "train", "--data", str(small_npz), "--out", str(tmp_path / "run"), "--preset", "tiny",
                         "--max-steps", "1", "--seed", "-5", *QUICK)
    assert_one_line_error(code, out, err, "--seed must not be negative", 2)
    assert not (tmp_path / "run").exists()


@pytest.fixture
def short_run(tmp_path, capfd, small_npz) -> Path:
    run = tmp_path / "run"
    code, _, err = cli(capfd, "train", "--data", str(small_npz), "--out", str(run), "--preset", "tiny",
                       "--max-steps", "4", *QUICK)
    assert code == 0, err
    return run


@pytest.mark.parametrize("options, expected", [
    (("--preset", "small"), "--preset small (the run has tiny)"),
    (("--set", "model.hidden=32"), "model.hidden=32 (the run has 64)"),
    (("--self-condition",), "model.self_condition=True (the run has False)"),
    (("--init-from", "qm9"), "--init-from qm9"),
])
def test_resume_refuses_model_settings_it_would_ignore(short_run, capfd, options, expected):
    before = snapshot(short_run)
    code, out, err = cli(capfd, "train", "--out", str(short_run), "--resume", "--max-steps", "6", *options, *QUICK)
    assert_one_line_error(code, out, err, expected, 2)
    assert snapshot(short_run) == before


def test_resume_refuses_another_dataset(short_run, capfd):
    code, out, err = cli(capfd, "train", "--out", str(short_run), "--resume", "--max-steps", "6", "--dataset", "geom",
                         *QUICK)
    assert_one_line_error(code, out, err, "--dataset geom cannot change it", 1)


def test_a_resume_from_elsewhere_finds_the_data(short_run, capfd, small_npz, monkeypatch):
    assert run_config(short_run)["train"]["data"] == [os.path.abspath(small_npz)]
    monkeypatch.chdir(short_run)  # a requeued job starts in another working directory
    code, _, err = cli(capfd, "train", "--out", ".", "--resume", "--max-steps", "6", *QUICK)
    assert code == 0, err
    assert run_config(short_run)["train"]["data"] == [os.path.abspath(small_npz)]


def test_a_resume_that_names_no_budget_keeps_the_runs_own():
    from symdiff_cli.engine.train_config import TrainConfig, with_run_settings

    recorded = {"max_steps": 1500, "max_time": None, "epochs": None}
    assert with_run_settings(TrainConfig(), recorded, explicit=set()).max_steps == 1500
    named = with_run_settings(TrainConfig(max_time=600.0), recorded, explicit={"max_time"})
    assert named.max_steps is None and named.max_time == 600.0


def test_a_release_of_a_run_on_own_files_does_not_claim_the_dataset(short_run, capfd, tmp_path):
    code, _, err = cli(capfd, "convert", str(short_run / "checkpoint.pt"), str(tmp_path / "rel"))
    assert code == 0, err
    card = (tmp_path / "rel" / "README.md").read_text()
    front_matter = card.split("---")[1]
    assert "datasets:" not in front_matter
    assert "32 molecules from its trainer's own files (small32.npz), not on QM9" in card
    assert json.loads((tmp_path / "rel" / "config.json").read_text())["provenance"]["data_files"] == ["small32.npz"]


def test_a_model_of_fewer_diffusion_steps_exports_and_samples(tmp_path, capfd, small_npz):
    run = tmp_path / "run"
    code, _, err = cli(capfd, "train", "--data", str(small_npz), "--out", str(run), "--preset", "tiny",
                       "--max-steps", "1", "--set", "model.timesteps=50", *QUICK)
    assert code == 0, err
    code, _, err = cli(capfd, "convert", str(run / "checkpoint.pt"), str(tmp_path / "rel"))
    assert code == 0, err
    sampling = json.loads((tmp_path / "rel" / "config.json").read_text())["sampling"]
    assert sampling["default_steps_cpu"] == 50 and sampling["default_steps_cuda"] == 50
    code, _, err = cli(capfd, "generate", "--model", str(tmp_path / "rel"), "--n", "2", "--out",
                       str(tmp_path / "x.sdf"), "--quiet")
    assert code == 0, err


def test_a_conditional_release_is_refused_as_a_guide(tmp_path, capfd):
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint.pt")
    code, out, err = cli(capfd, "convert", str(checkpoint), str(tmp_path / "rel"), "--guide", "qm9-alpha")
    assert_one_line_error(code, out, err, "conditioned on alpha, the main model on nothing")
    assert not (tmp_path / "rel").exists()


def test_a_guided_interval_needs_a_guide(tmp_path, capfd):
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint.pt")
    code, _, err = cli(capfd, "convert", str(checkpoint), str(tmp_path / "rel"))
    assert code == 0, err
    code, out, err = cli(capfd, "convert", str(tmp_path / "rel"), str(tmp_path / "rel"), "--guidance-max-t", "500")
    assert_one_line_error(code, out, err, "ships no guide, so it has no guided interval", 2)


def test_durations_read_as_people_write_them():
    assert parse_duration("1h 30m") == 5400 and parse_duration("90s") == 90
    with pytest.raises(UsageError, match="must be positive"):
        parse_duration("0")


def test_evaluate_names_a_missing_folder(short_run, capfd, tmp_path):
    code, out, err = cli(capfd, "evaluate", str(short_run), str(tmp_path / "missing"))
    assert_one_line_error(code, out, err, "no such file or directory")


def test_the_last_steps_evaluation_is_sampled_once(tmp_path, capfd, small_npz):
    run = tmp_path / "run"
    code, _, err = cli(capfd, "train", "--data", str(small_npz), "--out", str(run), "--preset", "tiny",
                       "--max-steps", "4", "--eval-every", "2", "--eval-samples", "2", "--eval-steps", "2", *QUICK)
    assert code == 0, err
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [event["step"] for event in events if event.get("event") == "eval"] == [2, 4]


def test_a_self_conditioned_release_says_so_in_its_card(tmp_path, capfd):
    from symdiff_cli.engine.card import model_card
    from symdiff_cli.model.config import model_config_from_preset

    config = {"model_config": model_config_from_preset("tiny", self_condition=True).to_dict(), "dataset": "qm9",
              "atom_count_histogram": {"5": 1}, "provenance": {}, "sampling": {}}
    assert "Self-conditioning (Chen et al. 2022)" in model_card(config)
    config["model_config"] = model_config_from_preset("tiny").to_dict()
    assert "Self-conditioning" not in model_card(config)
