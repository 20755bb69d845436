"""The orientation kernel's settings, once named gamma_*, load under their current names."""

from __future__ import annotations

import json
from pathlib import Path

from symdiff_cli.model.config import RENAMED_MODEL_KEYS, ModelConfig, model_config_from_preset

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def test_old_keys_load_as_the_new_ones_and_saves_write_the_new_ones():
    cfg = model_config_from_preset("small", orientation_kernel="haar", orientation_depth=3)
    new = cfg.to_dict()
    assert not set(new) & set(RENAMED_MODEL_KEYS)
    old = {({v: k for k, v in RENAMED_MODEL_KEYS.items()}).get(key, key): value for key, value in new.items()}
    assert old["gamma"] == "haar" and old["gamma_depth"] == 3
    assert ModelConfig.from_dict(old) == cfg == ModelConfig.from_dict(new)


def test_shipped_releases_load_with_either_key():
    for config_path in sorted(WEIGHTS.glob("*/config.json")):
        config = json.loads(config_path.read_text())
        if config.get("format") == "symdiff-property-predictor":  # a judge, not a generator
            continue
        raw = config["model_config"]
        cfg = ModelConfig.from_dict(raw)
        assert cfg.orientation_kernel == raw.get("gamma", raw.get("orientation_kernel"))
        assert cfg.orientation_depth == raw.get("gamma_depth", raw.get("orientation_depth"))
