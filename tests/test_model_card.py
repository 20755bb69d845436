"""Model cards: generated from config.json and metrics.json, reproducible from the shipped releases."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from symdiff_cli.engine.card import METRICS_FILE, model_card, parse_metrics_text, read_metrics_text
from symdiff_cli.engine.guides import attach_guide, resave_release
from symdiff_cli.engine.release import load_release, save_release, write_model_card
from symdiff_cli.engine.release_config import CHECKSUMS_KEY, Guide
from symdiff_cli.engine.release_layout import CARD_FILE, CONFIG_FILE
from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.dit import SymmetrisedDenoiser
from symdiff_cli.model.valence import ValenceGuidanceSettings

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("qm9", "qm9-guide", "qm9-guide-small", "qm9-alpha")
MAX_CARD_LINES = 160  # a conditional card with a guide pair, restart sampling (one more citation) and its measurements

# A metrics file written by hand: its odd layout must survive every re-save byte for byte.
METRICS_TEXT = """{"format": "symdiff-metrics", "format_version": 1,
 "description": "A tiny test model.",
 "measurements": [{"name": "Default sampler", "date": "2026-12-02",
   "command": "symdiff generate --n 10 --seed S --out mols.sdf",
   "sampler": {"steps": 10}, "seeds": [0, 1, 2], "n_per_seed": 10,
   "metrics": {"molecule_stability": {"per_seed": [10.0, 20.0, 30.0], "count": 6, "of": 30},
               "validity": {"value": 71.5}},
   "future_field": [1, 2]}],
 "future_key": "kept"}
"""


def symdiff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "symdiff_cli", *args], capture_output=True, text=True, timeout=600)


def front_matter(card: str) -> str:
    assert card.startswith("---\n")
    return card.split("---\n", 2)[1]


def tiny_release(path: Path, seed: int = 0, **kwargs) -> Path:
    torch.manual_seed(seed)
    cfg = model_config_from_preset("tiny")
    return save_release(path, cfg, SymmetrisedDenoiser(cfg).state_dict(), {5: 2, 9: 1}, "qm9",
                        {"step": 10 + seed, "epoch": 1, "train_seconds": 7200.0}, **kwargs)


# --------------------------------------------------------------------------------------
# The shipped releases


@pytest.mark.slow  # a real convert of each shipped release in a subprocess
@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_card_is_what_convert_writes(tmp_path, name):
    """`symdiff convert REL OUT` regenerates the committed card byte for byte, and carries
    metrics.json over unchanged; --card-only in place gives the same card."""
    source = tmp_path / "src" / name
    shutil.copytree(REPO / "weights" / name, source)
    out = tmp_path / "out" / name
    result = symdiff("convert", str(source), str(out))
    assert result.returncode == 0, result.stderr
    committed = (REPO / "weights" / name / CARD_FILE).read_bytes()
    assert (out / CARD_FILE).read_bytes() == committed, \
        f"weights/{name}/README.md is stale: symdiff convert weights/{name} weights/{name} --card-only"
    assert (out / METRICS_FILE).read_bytes() == (REPO / "weights" / name / METRICS_FILE).read_bytes()
    # the rest of config.json as it was: the re-save adds the weights' digests only
    new_config = json.loads((out / CONFIG_FILE).read_text())
    assert set(new_config.pop(CHECKSUMS_KEY)) >= {"model.safetensors"}
    committed_config = json.loads((REPO / "weights" / name / CONFIG_FILE).read_text())
    committed_config.pop(CHECKSUMS_KEY, None)  # newer releases record them already
    assert new_config == committed_config

    (source / CARD_FILE).write_text("stale\n")
    result = symdiff("convert", str(source), str(source), "--card-only")
    assert result.returncode == 0, result.stderr
    assert (source / CARD_FILE).read_bytes() == committed


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_card_is_rendered_from_its_files(tmp_path, name):
    """The in-process renderer (no weights read) agrees with the committed card."""
    release = tmp_path / name
    shutil.copytree(REPO / "weights" / name, release)
    (release / CARD_FILE).unlink()
    write_model_card(release)
    assert (release / CARD_FILE).read_bytes() == (REPO / "weights" / name / CARD_FILE).read_bytes()


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_card_layout(name):
    card = (REPO / "weights" / name / CARD_FILE).read_text()
    assert len(card.splitlines()) <= MAX_CARD_LINES
    assert "session" not in card.lower() and "DESIGN.md" not in card
    headings = [line for line in card.splitlines() if line.startswith("## ")]
    conditional = ["## Property conditioning"] if name == "qm9-alpha" else []
    assert headings == ["## Intended use and limits", "## How to use", "## Architecture", "## Training",
                        *conditional, "## Results", "## Citation"]
    # one results table, and a conditional release's MAE table
    assert sum(line.startswith("|---") for line in card.splitlines()) == 1 + len(conditional)
    assert "docs/training.md" in card and "docs/experiments.csv" in card
    for needed in ("@inproceedings{zhang2025symdiff", "Zhang, Leo and Ashouritaklimi, Kianoosh and Teh, Yee Whye and "
                   "Cornish, Rob", "Stochastic Symmetrisation", "International Conference on Learning Representations",
                   "year      = {2025}", "@inproceedings{hoogeboom2022equivariant", "Hoogeboom, Emiel",
                   "International Conference on Machine Learning (ICML)", "year      = {2022}"):
        assert needed in card, needed
    fm = front_matter(card)
    for needed in ("license: mit", "library_name: symdiff", "datasets:\n- qm9", "- molecule-generation",
                   "- diffusion", "- 3d", "- symdiff"):
        assert needed in fm, needed
    # every measurement's command is in metrics.json, the first one in the card
    metrics = parse_metrics_text((REPO / "weights" / name / METRICS_FILE).read_text(), name)
    assert metrics["measurements"][0]["command"] in card


def test_the_default_model_card_numbers():
    card = (REPO / "weights" / "qm9" / CARD_FILE).read_text()
    for needed in ("78.82 % (7,882 / 10,000)", "96.77 % (174,135 / 179,939)", "| 89.84 % (8,984 / 10,000) |",
                   "78.82 ± 1.77 %", "76.6 - 82.2 %", "96.77 ± 0.36 %", "96.12 - 97.37 %",
                   "10 seeds (0-9) of 1,000 molecules each", "measured 2026-12-03", "guidance max t 600",
                   "the steps at timesteps <= 600", "kynkaanniemi2024applying", "molecule stability 52.65 %",
                   "molecule stability 54.05 %", "xu2023restart", "Restart sampling of radicals",
                   "noised back to timestep 400 and sampled again from there, at most 3 times",
                   "symdiff generate --n 1000 --seed S --out mols.sdf --steps 50 --restart-rounds 3 --threads 2 "
                   "&& symdiff evaluate mols.sdf --dataset qm9",
                   "Parameters: 2,550,570", "autoguidance with weight 5.0", "the mean of 2 networks'",
                   "(`guide-2.safetensors`): hidden 64, depth 4, trained 29,451 steps, 418,410 parameters",
                   "(raw last-step weights)", "30,690 steps, 38 epochs", "guides qm9-guide + qm9-guide-small",
                   "88.3 s per 1,000 molecules", "steps 50, spacing cubic"):
        assert needed in card, needed


def test_the_front_matter_is_hugging_face_yaml():
    yaml = pytest.importorskip("yaml")
    for name in SHIPPED:
        meta = yaml.safe_load(front_matter((REPO / "weights" / name / CARD_FILE).read_text()))
        assert meta["license"] == "mit" and meta["library_name"] == "symdiff" and meta["datasets"] == ["qm9"]
        assert {"molecule-generation", "diffusion", "3d", "symdiff"} <= set(meta["tags"])
        metrics = json.loads((REPO / "weights" / name / METRICS_FILE).read_text())
        if "model" in metrics["measurements"][0]:  # measured only as another model's guide
            assert "model-index" not in meta
            continue
        (entry,) = meta["model-index"]
        assert entry["name"] == name
        (result,) = entry["results"]
        assert result["task"]["type"] == "molecule-generation" and result["dataset"]["type"] == "qm9"
        for metric in result["metrics"]:
            assert set(metric) == {"name", "type", "value"} and isinstance(metric["value"], (int, float))
    meta = yaml.safe_load(front_matter((REPO / "weights" / "qm9" / CARD_FILE).read_text()))
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"atom_stability": 96.77, "molecule_stability": 78.82, "validity": 89.84,
                      "strict_validity": 87.28, "uniqueness": 99.74, "novelty": 77.3}


def test_the_shipped_metrics_files():
    for name in SHIPPED:
        metrics = parse_metrics_text((REPO / "weights" / name / METRICS_FILE).read_text(), name)
        for entry in metrics["measurements"]:
            assert entry["date"].startswith("2026-") and entry["n_per_seed"] > 0 and entry["sampler"]
            for metric in entry["metrics"].values():
                if "count" in metric and "value" in metric:  # stated percentages agree with the counts
                    assert abs(100 * metric["count"] / metric["of"] - metric["value"]) < 0.01
                if "count" in metric and "per_seed" in metric and metric["of"] == entry["n_per_seed"] * len(entry["seeds"]):
                    assert round(sum(metric["per_seed"]) * entry["n_per_seed"] / 100) == metric["count"]
    default = json.loads((REPO / "weights" / "qm9" / METRICS_FILE).read_text())["measurements"][0]
    assert default["seeds"] == list(range(10)) and default["n_per_seed"] == 1000
    assert default["metrics"]["molecule_stability"]["count"] == 7882
    assert default["sampler"]["guidance_max_t"] == 600 and default["sampler"]["restart"]["rounds"] == 3


# --------------------------------------------------------------------------------------
# metrics.json through saving and re-saving


def test_resaving_a_release_keeps_metrics_json_byte_for_byte(tmp_path):
    release = tiny_release(tmp_path / "rel", metrics_text=METRICS_TEXT)
    assert (release / METRICS_FILE).read_text() == METRICS_TEXT
    card = (release / CARD_FILE).read_text()
    assert "A tiny test model." in card and "20.00 ± 10.00 %" in card and "20.00 % (6 / 30)" in card
    assert "10.0 - 30.0 %" in card and "| 71.5 % |" in card

    resave_release(release, tmp_path / "copy")  # to a new directory
    assert (tmp_path / "copy" / METRICS_FILE).read_text() == METRICS_TEXT
    resave_release(release, release)  # in place
    assert (release / METRICS_FILE).read_text() == METRICS_TEXT
    other = tiny_release(tmp_path / "guide", seed=1)
    attach_guide(release, release, _guide_of(other))  # a new guide keeps them too
    assert (release / METRICS_FILE).read_text() == METRICS_TEXT
    assert load_release(str(release)).guidance_weight == 2.0


def _guide_of(release: Path) -> Guide:
    from symdiff_cli.engine.guides import guide_from_release

    return guide_from_release(str(release), 2.0)


def test_new_weights_over_a_release_drop_its_metrics(tmp_path):
    release = tiny_release(tmp_path / "rel", metrics_text=METRICS_TEXT)
    (release / "notes.txt").write_text("mine")
    tiny_release(release, seed=3)  # other weights: the old numbers no longer describe them
    assert not (release / METRICS_FILE).exists()
    assert (release / "notes.txt").read_text() == "mine"
    assert "Not measured yet" in (release / CARD_FILE).read_text()


def test_unknown_sampling_and_config_keys_survive_a_resave_and_show_in_the_card(tmp_path):
    valence = ValenceGuidanceSettings().to_dict()
    release = tiny_release(tmp_path / "rel", sampling={"valence_guidance": valence, "future_setting": {"a": 1}},
                           extra_config={"future_key": [1, 2], "format": "not this"})
    config = json.loads((release / CONFIG_FILE).read_text())
    assert config["format"] == "symdiff-release" and config["future_key"] == [1, 2]
    assert config["sampling"] == {"default_steps_cpu": 100, "default_steps_cuda": 1000,
                                  "valence_guidance": valence, "future_setting": {"a": 1}}
    out = resave_release(release, tmp_path / "again")
    again = json.loads((out / CONFIG_FILE).read_text())
    assert again["sampling"] == config["sampling"] and again["future_key"] == [1, 2]
    card = (out / CARD_FILE).read_text()
    assert "`valence_guidance` " + json.dumps(valence, sort_keys=True) in card
    assert '`future_setting` {"a": 1}' in card and "`default_steps_cpu` 100" in card


def test_a_card_without_metrics(tmp_path):
    release = tiny_release(tmp_path / "rel")
    card = (release / CARD_FILE).read_text()
    assert len(card.splitlines()) <= MAX_CARD_LINES and "Not measured yet" in card
    assert "model-index" not in front_matter(card) and "license: mit" in front_matter(card)
    assert "--model rel " in card and "2.00 h" in card and "(EMA weights)" in card


def test_a_guided_card_stays_within_the_line_limit(tmp_path):
    metrics = json.loads(METRICS_TEXT)
    metrics["measurements"] *= 8  # a long list of further measurements: one line each
    card = model_card(json.loads((REPO / "weights" / "qm9" / CONFIG_FILE).read_text()), 2_550_570,
                      parse_metrics_text(json.dumps(metrics), "test"), name="qm9")
    assert len(card.splitlines()) <= MAX_CARD_LINES


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.update(format="other"), "not a symdiff metrics file"),
    (lambda m: m.update(format_version=2), "format_version must be an integer in 1..1"),
    (lambda m: m.update(measurements=[]), "measurements must be a non-empty list"),
    (lambda m: m["measurements"][0].update(date="2 Dec"), "measurements[0].date must be a date"),
    (lambda m: m["measurements"][0].pop("command"), "measurements[0].command must be a non-empty string"),
    (lambda m: m["measurements"][0].update(seeds=[0, 0, 1]), "seeds must be a non-empty list of distinct"),
    (lambda m: m["measurements"][0]["metrics"]["molecule_stability"].update(per_seed=[1.0]),
     "metrics.molecule_stability.per_seed must list one number per seed (3)"),
    (lambda m: m["measurements"][0]["metrics"]["molecule_stability"].update(count=31),
     "metrics.molecule_stability: count and of must be whole numbers"),
    (lambda m: m["measurements"][0]["metrics"].update(validity={}), "metrics.validity must be an object with"),
])
def test_a_bad_metrics_file_is_a_one_line_error_and_nothing_is_written(tmp_path, change, expected):
    release = tiny_release(tmp_path / "rel", metrics_text=METRICS_TEXT)
    metrics = json.loads(METRICS_TEXT)
    change(metrics)
    (release / METRICS_FILE).write_text(json.dumps(metrics))
    before = {p.name: p.read_bytes() for p in release.iterdir()}
    with pytest.raises(SymdiffError) as info:
        read_metrics_text(release)
    assert expected in str(info.value) and "\n" not in str(info.value)
    for action in (lambda: resave_release(release, release), lambda: write_model_card(release)):
        with pytest.raises(SymdiffError, match="metrics"):
            action()
    assert {p.name: p.read_bytes() for p in release.iterdir()} == before


def test_card_only_refuses_another_directory_or_a_checkpoint(tmp_path):
    release = tiny_release(tmp_path / "rel")
    result = symdiff("convert", str(release), str(tmp_path / "elsewhere"), "--card-only")
    assert result.returncode != 0 and "give OUT the same directory as IN" in result.stderr
    assert not (tmp_path / "elsewhere").exists()
    result = symdiff("convert", str(tmp_path / "x.pt"), str(release), "--card-only")
    assert result.returncode != 0 and "--card-only applies only to a release directory" in result.stderr


def test_a_card_without_results_names_the_command_that_records_them():
    from symdiff_cli.engine.card_results import results_section

    text = "\n".join(results_section([]))
    assert "benchmarks/seed_metrics.py --model REL --name NAME --record REL" in text
    assert "symdiff_cli/engine/metrics_file.py" in text
