"""The property predictor: exact invariance, the release round trip, `evaluate --property` values on
known molecules and its errors, and training by `symdiff train --predictor` (QM9: slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from symdiff_cli.engine.predictor import load_predictor, predict, save_predictor, typed_molecules
from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.predictor import PREDICTOR_PRESETS, PredictorConfig, PropertyPredictor

from cli_helpers import run_cli
from test_model import reflection_and_rotation

REFERENCES = {"shuffled": 6.3, "atom_count": 3.8, "real_molecules": 0.9}


def tiny_predictor(seed: int = 0) -> PropertyPredictor:
    torch.manual_seed(seed)
    model = PropertyPredictor(PredictorConfig(**PREDICTOR_PRESETS["tiny"], target_mean=70.0, target_std=8.0)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_prediction_is_invariant_to_rotation_reflection_translation_and_atom_order():
    model = tiny_predictor()
    g = torch.Generator().manual_seed(1)
    types = torch.randint(0, 5, (4, 9), generator=g)
    x = torch.randn(4, 9, 3, generator=g, dtype=torch.float64) * 1.5
    want = model(types, x)
    q = reflection_and_rotation(4)
    moved = x @ q.transpose(1, 2) + torch.randn(4, 1, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(model(types, moved), want, atol=1e-9)
    perm = torch.randperm(9, generator=g)
    assert torch.allclose(model(types[:, perm], x[:, perm]), want, atol=1e-9)
    # it reads the geometry and the types: another of either changes the prediction
    assert not torch.allclose(model(types, x * 1.2), want, atol=1e-4)
    assert not torch.allclose(model((types + 1) % 5, x), want, atol=1e-4)


def save_tiny(path, seed: int = 0) -> PropertyPredictor:
    model = tiny_predictor(seed).float()
    save_predictor(path, model, "alpha", "Bohr^3", REFERENCES, 1.1, {"source": "test", "steps": 1, "epochs": 1,
                   "train_seconds": 1.0, "batch_size": 4, "lr": 1e-3, "seed": 0, "data": "test"}, [])
    return model


def test_release_round_trip_card_and_damage_detection(tmp_path):
    model = save_tiny(tmp_path / "pred")
    loaded = load_predictor(str(tmp_path / "pred"))
    assert loaded.prop == "alpha" and loaded.config["references"] == REFERENCES
    for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    card = (tmp_path / "pred" / "README.md").read_text()
    assert "first half" in card and "3.8" in card
    weights = tmp_path / "pred" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SymdiffError, match="damaged"):
        load_predictor(str(tmp_path / "pred"))


def molecules_with_requests(model: PropertyPredictor, offsets: list[float]):
    """Four small QM9-like molecules tagged with the model's own prediction plus `offsets`."""
    from conftest import embed_smiles

    mols = embed_smiles(["CCO", "CC=O", "C1CC1", "OCCO"]).to_molecules()
    data = typed_molecules([m.atomic_numbers for m in mols], [m.positions for m in mols], np.zeros(4),
                           model.cfg.atom_types)
    predicted = predict(model, data)
    for mol, p, off in zip(mols, predicted, offsets):
        mol.props["symdiff_condition_alpha"] = repr(float(p + off))
    return mols, predicted


def test_evaluate_property_reports_the_mean_absolute_error_of_known_molecules(tmp_path, capsys):
    from symdiff_cli.io.writer import write_molecules

    model = save_tiny(tmp_path / "pred")
    mols, predicted = molecules_with_requests(model, [1.0, -2.0, 0.5, -0.5])
    write_molecules(str(tmp_path / "m.sdf"), mols)
    code, out, err = run_cli(capsys, "evaluate", str(tmp_path / "m.sdf"), "--property", "alpha", "--predictor",
                             str(tmp_path / "pred"), "--no-novelty", "--json", str(tmp_path / "r.json"),
                             "--per-molecule", str(tmp_path / "p.csv"))
    assert code == 0, err
    section = json.loads((tmp_path / "r.json").read_text())["property"]
    assert section["mae"] == pytest.approx(1.0, abs=1e-4)  # (1 + 2 + 0.5 + 0.5) / 4
    assert section["references"] == REFERENCES and section["edm_table3"]["atom_count"] == 3.86
    assert "requested vs predicted" in out and "1 ±" in out
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].endswith("requested,predicted")
    assert float(rows[1].split(",")[-1]) == pytest.approx(predicted[0], abs=1e-4)


def test_evaluate_property_errors(tmp_path, capsys):
    from symdiff_cli.io.writer import write_molecules

    model = save_tiny(tmp_path / "pred")
    mols, _ = molecules_with_requests(model, [0, 0, 0, 0])
    del mols[2].props["symdiff_condition_alpha"]
    write_molecules(str(tmp_path / "m.sdf"), mols)
    from symdiff_cli.io.molecule import Molecule

    write_molecules(str(tmp_path / "cl.sdf"), [Molecule([6, 17], np.array([[0, 0, 0], [1.8, 0, 0.0]]),
                              props={"symdiff_condition_alpha": "20"})])
    cases = [
        (["--property", "beta"], "unknown property 'beta'", str(tmp_path / "m.sdf")),
        (["--property", "alpha", "--predictor", str(tmp_path / "pred")], "1 of 4 molecules have no", str(tmp_path / "m.sdf")),
        (["--property", "alpha", "--predictor", str(tmp_path / "pred")], "contains Cl", str(tmp_path / "cl.sdf")),
        (["--property", "alpha", "--predictor", str(tmp_path / "nowhere")], "no model at", str(tmp_path / "m.sdf")),
        (["--predictor", str(tmp_path / "pred")], "only with --property", str(tmp_path / "m.sdf")),
    ]
    for options, message, path in cases:
        code, _, err = run_cli(capsys, "evaluate", path, "--no-novelty", *options)
        assert code in (1, 2) and message in err and "Traceback" not in err, (options, err)
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "pred"), "--n", "1",
                           "--out", str(tmp_path / "g.sdf"))
    assert code == 1 and "property predictor, not a generator" in err


@pytest.mark.slow
def test_train_predictor_cli_writes_a_release_with_the_references(tmp_path, capsys):
    out = tmp_path / "pred"
    code, _, err = run_cli(capsys, "train", "--predictor", "alpha", "--preset", "tiny", "--max-steps", "20",
                           "--threads", "1", "--out", str(out), "--quiet")
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    refs = config["references"]
    # the atom-count reference is a property of the data: EDM report 3.86 Bohr^3
    assert refs["atom_count"] == pytest.approx(3.86, abs=0.1)
    assert refs["real_molecules"] > 0 and refs["shuffled"] > 0 and config["provenance"]["steps"] == 20
    assert load_predictor(str(out)).prop == "alpha"
    # again into the same release; a folder of other files is refused
    assert run_cli(capsys, "train", "--predictor", "alpha", "--preset", "tiny", "--max-steps", "2",
                   "--threads", "1", "--out", str(out), "--quiet")[0] == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = run_cli(capsys, "train", "--predictor", "alpha", "--max-steps", "2", "--out", str(tmp_path / "mine"))
    assert code == 2 and "not an empty directory" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    code, _, err = run_cli(capsys, "train", "--predictor", "alpha", "--condition", "alpha", "--out", str(tmp_path / "x"))
    assert code == 2 and "do(es) not apply" in err


def test_the_shipped_alpha_predictor_loads_and_its_card_is_generated_from_its_config():
    from pathlib import Path

    from symdiff_cli.engine.predictor import predictor_card

    loaded = load_predictor("qm9-alpha-predictor")
    assert loaded.prop == "alpha" and loaded.config["provenance"]["data"].startswith("QM9 train split, first half")
    refs = loaded.config["references"]
    assert refs["real_molecules"] < refs["atom_count"] < refs["shuffled"]
    count = sum(p.numel() for p in loaded.model.parameters())
    committed = (Path(loaded.path) / "README.md").read_text()
    assert committed == predictor_card(loaded.config, count)
