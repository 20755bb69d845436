"""The release format (safetensors + config.json + model card) and model resolution."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from symdiff_cli.engine.checkpoint import atomic_torch_save
from symdiff_cli.engine.export import convert_checkpoint_to_release
from symdiff_cli.engine.registry import resolve_model
from symdiff_cli.engine.guides import attach_guide, guide_from_release, guide_from_releases, shipped_guide
from symdiff_cli.engine.release import load_release, load_release_state_dict, save_release
from symdiff_cli.engine.release_config import Guide, GuideNetwork
from symdiff_cli.engine.release_layout import CONFIG_FILE, GUIDE_WEIGHTS_FILE, WEIGHTS_FILE
from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.config import model_config_from_preset
from symdiff_cli.model.dit import SymmetrisedDenoiser

HISTOGRAM = {5: 2, 9: 7, 12: 1}


def tiny_model(seed: int = 0, **overrides) -> SymmetrisedDenoiser:
    torch.manual_seed(seed)
    return SymmetrisedDenoiser(model_config_from_preset("tiny", **overrides))


@pytest.fixture()
def release(tmp_path) -> tuple[Path, SymmetrisedDenoiser]:
    model = tiny_model()
    path = save_release(tmp_path / "tiny", model.cfg, model.state_dict(), HISTOGRAM, "qm9",
                        {"step": 12, "epoch": 1, "train_seconds": 3.5})
    return path, model


def test_round_trip(release):
    path, model = release
    assert sorted(os.listdir(path)) == ["README.md", CONFIG_FILE, WEIGHTS_FILE]
    cfg, tensors = load_release_state_dict(str(path))
    assert cfg == model.cfg
    expected = model.state_dict()
    assert tensors.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensors[name], tensor), name

    loaded = load_release(str(path), "cpu")
    assert not loaded.model.training
    assert loaded.histogram == HISTOGRAM
    assert loaded.config["dataset"] == "qm9"
    assert loaded.config["provenance"]["step"] == 12
    assert loaded.default_steps("cpu") == 100 and loaded.default_steps("cuda") == 1000
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["format_version"] == 1
    assert config["model_config"]["norm_one_hot"] == 4.0 and config["model_config"]["noise_schedule"] == "polynomial_2"
    assert "SymDiff" in (path / "README.md").read_text()


def test_overwrite_replaces_a_release_but_not_other_directories(release, tmp_path):
    path, _ = release
    other = tiny_model(seed=1)
    save_release(path, other.cfg, other.state_dict(), {7: 1}, "qm9", {"step": 99}, card_text="# card")
    assert load_release(str(path)).histogram == {7: 1}
    assert (path / "README.md").read_text() == "# card\n"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no staging or retired directories left

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(SymdiffError, match="not a symdiff release"):
        save_release(precious, other.cfg, other.state_dict(), {7: 1}, "qm9", {})
    assert (precious / "notes.txt").read_text() == "keep me"


def test_save_refuses_weights_that_do_not_fit_the_config(tmp_path):
    model = tiny_model()
    cfg_bigger = model_config_from_preset("tiny", hidden=2 * model.cfg.hidden)
    with pytest.raises(SymdiffError, match="do not match"):
        save_release(tmp_path / "bad", cfg_bigger, model.state_dict(), HISTOGRAM, "qm9", {})
    assert not (tmp_path / "bad").exists()


def test_shape_mismatch_names_the_tensors(release):
    path, model = release
    hidden = model.cfg.hidden
    config = json.loads((path / CONFIG_FILE).read_text())
    config["model_config"]["hidden"] = 2 * hidden
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SymdiffError) as info:
        load_release(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert "shape mismatch" in message
    assert re.search(rf"[\w.]+\.weight: file \({hidden}, \d+\) vs config \({2 * hidden}, \d+\)", message)


def test_missing_and_unexpected_tensors(release):
    path, _ = release
    tensors = load_file(str(path / WEIGHTS_FILE))
    removed = sorted(tensors)[0]
    del tensors[removed]
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(SymdiffError) as info:
        load_release_state_dict(str(path))
    message = str(info.value)
    assert "1 missing tensor(s)" in message and removed in message
    assert "1 unexpected tensor(s) (extra.weight)" in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_give_one_line(release, damage):
    path, _ = release
    weights = path / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\x01not safetensors" * 10,
                         "empty": b""}[damage])
    with pytest.raises(SymdiffError) as info:
        load_release(str(path))
    assert "\n" not in str(info.value)
    assert "safetensors" in str(info.value)


class _Trap:
    """Unpickling this creates a marker file: proof that a file was unpickled."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_weights_are_never_unpickled(release, tmp_path):
    path, _ = release
    trap = _Trap()
    trap.marker = str(tmp_path / "unpickled")
    (path / WEIGHTS_FILE).write_bytes(pickle.dumps({"backbone": trap}))
    with pytest.raises(SymdiffError, match="not a readable safetensors file"):
        load_release(str(path))
    assert not (tmp_path / "unpickled").exists()


def test_bad_config_json(release):
    path, _ = release
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(SymdiffError, match="not valid JSON"):
        load_release(str(path))
    (path / CONFIG_FILE).write_text(json.dumps({"format": "symdiff-release", "format_version": 99}))
    with pytest.raises(SymdiffError, match="upgrade symdiff"):
        load_release(str(path))


def test_convert_training_checkpoint(tmp_path):
    model, ema = tiny_model(seed=0), tiny_model(seed=1)
    checkpoint = {
        # A DDP-wrapped EMA: names carry the "module." prefix, which the release drops.
        "ema": {f"module.{k}": v for k, v in ema.state_dict().items()},
        "model": model.state_dict(),
        "model_config": ema.cfg.to_dict(),
        "atom_count_histogram": HISTOGRAM,
        "dataset": "qm9",
        "state": {"step": 500, "epoch": 3, "batch_in_epoch": 0, "elapsed": 7200.0},
        "train_config": {"preset": "tiny", "lr": 2e-4, "batch_size": 256, "ema_decay": 0.9999,
                         "init_from": "qm9", "lr_schedule": "cosine", "min_lr": 1e-5, "low_noise_fraction": 0.0},
    }
    atomic_torch_save(checkpoint, tmp_path / "runs" / "x" / "checkpoint.pt")
    out = convert_checkpoint_to_release(tmp_path / "runs" / "x" / "checkpoint.pt", tmp_path / "weights" / "x")
    _, tensors = load_release_state_dict(str(out))
    for name, tensor in ema.state_dict().items():
        assert torch.equal(tensors[name], tensor), name  # the EMA weights, not the raw model's
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["provenance"]["step"] == 500 and config["provenance"]["train_seconds"] == 7200.0
    # a continued run says what it continued; settings left at their defaults are not listed
    assert config["provenance"]["init_from"] == "qm9" and config["provenance"]["lr_schedule"] == "cosine"
    assert config["provenance"]["min_lr"] == 1e-5 and "low_noise_fraction" not in config["provenance"]
    assert "2.00 h" in (out / "README.md").read_text()
    assert "weights" not in config["provenance"] and "(EMA weights)" in (out / "README.md").read_text()

    # --weights raw: the last step's weights, and the release says so
    raw = convert_checkpoint_to_release(tmp_path / "runs" / "x" / "checkpoint.pt", tmp_path / "weights" / "raw",
                                        weights="raw")
    _, tensors = load_release_state_dict(str(raw))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensors[name], tensor), name
    assert json.loads((raw / CONFIG_FILE).read_text())["provenance"]["weights"] == "raw"
    assert "(raw last-step weights)" in (raw / "README.md").read_text()
    with pytest.raises(SymdiffError, match="weights must be ema or raw"):
        convert_checkpoint_to_release(tmp_path / "runs" / "x" / "checkpoint.pt", tmp_path / "weights" / "y",
                                      weights="best")

    with pytest.raises(SymdiffError, match="symdiff convert"):
        resolve_model(str(tmp_path / "runs" / "x"))


def test_resolve_names_directories_and_errors(release, tmp_path, monkeypatch):
    path, _ = release
    monkeypatch.setenv("SYMDIFF_WEIGHTS", str(tmp_path))
    assert resolve_model("tiny") == tmp_path / "tiny"
    assert resolve_model(str(path)) == path
    assert resolve_model(str(path / WEIGHTS_FILE)) == path
    with pytest.raises(SymdiffError, match=r"unknown model 'nope'.*tiny"):
        resolve_model("nope")
    with pytest.raises(SymdiffError, match="no default model"):
        resolve_model(None)
    with pytest.raises(SymdiffError, match="no model at"):
        resolve_model("./does/not/exist")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(SymdiffError, match="symdiff convert"):
        resolve_model(str(tmp_path / "model.pt"))


def guided_release(tmp_path: Path, weight: float = 3.0, **guide_overrides) -> tuple[Path, SymmetrisedDenoiser,
                                                                                 SymmetrisedDenoiser]:
    main = tiny_model(0)
    guide = tiny_model(1, **guide_overrides)
    path = save_release(tmp_path / "guided", main.cfg, main.state_dict(), HISTOGRAM, "qm9", {"step": 40},
                        guide=Guide.single(guide.cfg, guide.state_dict(), weight, {"step": 10}))
    return path, main, guide


def test_guided_release_round_trip(tmp_path):
    path, main, guide = guided_release(tmp_path, weight=2.5, depth=1)
    assert sorted(os.listdir(path)) == ["README.md", CONFIG_FILE, GUIDE_WEIGHTS_FILE, WEIGHTS_FILE]
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["format_version"] == 2  # older readers refuse it instead of sampling without the guide
    assert config["guidance"]["weight"] == 2.5 and config["guidance"]["model_config"]["depth"] == 1
    assert config["guidance"]["provenance"] == {"step": 10}
    card = (path / "README.md").read_text()
    assert "autoguidance with weight 2.5" in card and "depth 1, trained 10 steps" in card

    loaded = load_release(str(path))
    assert loaded.guidance_weight == 2.5 and not loaded.guide.training
    for name, tensor in guide.state_dict().items():
        assert torch.equal(loaded.guide.state_dict()[name], tensor), name
    for name, tensor in main.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    # What training continues from is the main network alone.
    cfg, tensors = load_release_state_dict(str(path))
    assert cfg == main.cfg and tensors.keys() == main.state_dict().keys()
    assert load_release(str(path), load_guide=False).guide is None


def test_guide_must_fit_the_main_model(tmp_path):
    with pytest.raises(SymdiffError, match=r"guide model does not fit the main model \(atom_types"):
        guided_release(tmp_path, atom_types=("H", "C", "N", "O"))
    with pytest.raises(SymdiffError, match="guidance weight must be a finite number"):
        guided_release(tmp_path, weight=float("nan"))
    assert not (tmp_path / "guided").exists()


def test_damaged_guide_fails_with_one_clear_line(tmp_path):
    path, _, _ = guided_release(tmp_path)
    (path / GUIDE_WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(SymdiffError, match="guide.safetensors is not a readable safetensors file"):
        load_release(str(path))
    (path / GUIDE_WEIGHTS_FILE).unlink()
    with pytest.raises(SymdiffError, match="guide.safetensors is missing"):
        load_release(str(path))

    path, _, _ = guided_release(tmp_path)
    config = json.loads((path / CONFIG_FILE).read_text())
    config["guidance"]["model_config"]["depth"] = 5  # the file holds three blocks
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SymdiffError, match="guide.safetensors do not match"):
        load_release(str(path))
    config["guidance"]["weight"] = "strong"
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SymdiffError, match="guidance.weight"):
        load_release(str(path))


def two_guide_release(tmp_path: Path, weight: float = 3.0, **second_overrides):
    main, first, second = tiny_model(0), tiny_model(1, depth=1), tiny_model(2, **second_overrides)
    guide = Guide([GuideNetwork(first.cfg, first.state_dict(), {"step": 10}),
                   GuideNetwork(second.cfg, second.state_dict(), {"step": 20})], weight)
    path = save_release(tmp_path / "guided2", main.cfg, main.state_dict(), HISTOGRAM, "qm9", {"step": 40}, guide=guide)
    return path, main, first, second


def test_release_with_a_guide_of_two_networks(tmp_path):
    path, main, first, second = two_guide_release(tmp_path, weight=5.0)
    assert sorted(os.listdir(path)) == ["README.md", CONFIG_FILE, "guide-2.safetensors", GUIDE_WEIGHTS_FILE, WEIGHTS_FILE]
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["format_version"] == 3  # version-2 readers would sample with the first network alone
    assert config["guidance"]["weight"] == 5.0 and "model_config" not in config["guidance"]
    entries = config["guidance"]["guides"]
    assert [e["weights_file"] for e in entries] == [GUIDE_WEIGHTS_FILE, "guide-2.safetensors"]
    assert [e["model_config"]["depth"] for e in entries] == [1, 3] and entries[1]["provenance"] == {"step": 20}
    card = (path / "README.md").read_text()
    assert "the mean of 2 networks'" in card and "`guide-2.safetensors`): hidden 64, depth 3, trained 20 steps" in card

    loaded = load_release(str(path))
    assert loaded.guidance_weight == 5.0
    members = loaded.guide.members
    for member, net in zip(members, (first, second)):
        for name, tensor in net.state_dict().items():
            assert torch.equal(member.state_dict()[name], tensor), name
    # its guide's prediction is the mean of the two networks', each drawing its own frames
    x = torch.randn(2, 5, 3)
    x = x - x.mean(1, keepdim=True)
    h, t = torch.randn(2, 5, main.cfg.feature_dim), torch.tensor([3, 9])
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    with torch.no_grad():
        got = loaded.guide(x, h, t, generator=gen())
        g = gen()
        a, b = first.eval()(x, h, t, generator=g), second.eval()(x, h, t, generator=g)
    assert torch.allclose(got[0], (a[0] + b[0]) / 2) and torch.allclose(got[1], (a[1] + b[1]) / 2)

    # re-weighting keeps both networks; one network again is written as format 2
    again = shipped_guide(str(path), 2.0)
    assert again.weight == 2.0 and [n.provenance for n in again.networks] == [{"step": 10}, {"step": 20}]
    attach_guide(str(path), path, Guide(again.networks[:1], 2.0))
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["format_version"] == 2 and "guides" not in config["guidance"]
    assert sorted(os.listdir(path)) == ["README.md", CONFIG_FILE, GUIDE_WEIGHTS_FILE, WEIGHTS_FILE]


def test_damaged_second_guide_fails_with_one_clear_line(tmp_path):
    with pytest.raises(SymdiffError, match=r"guide model does not fit the main model \(atom_types"):
        two_guide_release(tmp_path, atom_types=("H", "C", "N", "O"))
    assert not (tmp_path / "guided2").exists()

    path, _, _, _ = two_guide_release(tmp_path)
    (path / "guide-2.safetensors").unlink()
    with pytest.raises(SymdiffError, match="guide-2.safetensors is missing"):
        load_release(str(path))
    path, _, _, _ = two_guide_release(tmp_path)
    config = json.loads((path / CONFIG_FILE).read_text())
    config["guidance"]["guides"][1]["weights_file"] = "../model.safetensors"
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SymdiffError, match=r"guidance.guides\[1\].weights_file must be 'guide-2.safetensors'"):
        load_release(str(path))
    config["guidance"]["guides"] = []
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SymdiffError, match="guidance.guides must be a non-empty list"):
        load_release(str(path))
    config["format_version"] = 4
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(SymdiffError, match="reads up to 3: upgrade symdiff"):
        load_release(str(path))


def test_guide_from_several_releases(tmp_path):
    nets = [tiny_model(3), tiny_model(4, depth=1)]
    for i, net in enumerate(nets):
        save_release(tmp_path / f"g{i}", net.cfg, net.state_dict(), HISTOGRAM, "qm9", {"step": i})
    guide = guide_from_releases([str(tmp_path / "g0"), str(tmp_path / "g1")], 4.0)
    assert guide.weight == 4.0 and [n.provenance["step"] for n in guide.networks] == [0, 1]
    assert guide.networks[1].model_cfg.depth == 1
    with pytest.raises(SymdiffError, match="at least one release"):
        guide_from_releases([], 4.0)


def test_attach_guide_keeps_the_main_release(release, tmp_path):
    path, model = release
    guide = tiny_model(7)
    save_release(tmp_path / "old", guide.cfg, guide.state_dict(), HISTOGRAM, "qm9", {"step": 3})
    out = attach_guide(str(path), tmp_path / "new", guide_from_release(str(tmp_path / "old"), 2.0))
    loaded = load_release(str(out))
    assert loaded.guidance_weight == 2.0
    assert loaded.config["provenance"] == json.loads((path / CONFIG_FILE).read_text())["provenance"]
    assert loaded.config["guidance"]["provenance"]["step"] == 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    for name, tensor in guide.state_dict().items():
        assert torch.equal(loaded.guide.state_dict()[name], tensor), name
    # in place: the release is rewritten whole, with the guide
    attach_guide(str(path), path, guide_from_release(str(tmp_path / "old"), 4.0))
    assert load_release(str(path)).guidance_weight == 4.0


def test_rewriting_a_release_keeps_its_weights_files_byte_for_byte(tmp_path):
    # A release tracked in git must not change its weights files when a setting changes: every
    # changed byte would put another copy of the file into every clone. Files written before the
    # metadata became one key hold two keys in either order; they are kept as they are too.
    from safetensors.torch import save_file as write_safetensors

    main, other = tiny_model(0), tiny_model(1)
    guide = Guide([GuideNetwork(other.cfg, other.state_dict())], 3.0)
    path = save_release(tmp_path / "r", main.cfg, main.state_dict(), HISTOGRAM, "qm9", {"step": 1}, guide=guide)
    old_layout = {"symdiff_release": "2", "format": "pt"}
    for name, model in ((WEIGHTS_FILE, main), (GUIDE_WEIGHTS_FILE, other)):
        write_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / name),
                          metadata=old_layout)
    config = json.loads((path / CONFIG_FILE).read_text())
    config["sha256"] = {name: __import__("hashlib").sha256((path / name).read_bytes()).hexdigest()
                        for name in (WEIGHTS_FILE, GUIDE_WEIGHTS_FILE)}
    (path / CONFIG_FILE).write_text(json.dumps(config))
    before = {name: (path / name).read_bytes() for name in (WEIGHTS_FILE, GUIDE_WEIGHTS_FILE)}

    attach_guide(str(path), path, shipped_guide(str(path)), default_steps_cuda=100, restart_rounds=2)
    assert {name: (path / name).read_bytes() for name in before} == before
    assert load_release(str(path)).sample_config("cuda").steps == 100
    # New tensors are written anew, and the same tensors always make the same bytes.
    attach_guide(str(path), path, Guide([GuideNetwork(main.cfg, main.state_dict())], 3.0))
    assert (path / WEIGHTS_FILE).read_bytes() == before[WEIGHTS_FILE]
    assert (path / GUIDE_WEIGHTS_FILE).read_bytes() != before[GUIDE_WEIGHTS_FILE]
    fresh = [save_release(tmp_path / f"fresh{i}", main.cfg, main.state_dict(), HISTOGRAM, "qm9", {"step": 1})
             for i in range(4)]
    assert len({(p / WEIGHTS_FILE).read_bytes() for p in fresh}) == 1
