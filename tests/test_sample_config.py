"""SampleConfig: the release's sampling defaults as one object, and generate's options over them."""

from __future__ import annotations

import json
from pathlib import Path

from symdiff_cli.engine.release_config import release_sample_config
from symdiff_cli.engine.restart import RestartSettings
from symdiff_cli.engine.sample_config import SampleConfig
from symdiff_cli.model.config import DEFAULT_SPACING, ModelConfig
from symdiff_cli.model.valence import ValenceGuidanceSettings

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "qm9" / "config.json"


def test_shipped_release_defaults():
    config = json.loads(SHIPPED.read_text())
    model_cfg = ModelConfig.from_dict(config["model_config"])
    cpu = release_sample_config(config, model_cfg, "cpu")
    assert cpu == SampleConfig(steps=50, spacing=DEFAULT_SPACING, guidance_weight=5.0,
                               valence_guidance=ValenceGuidanceSettings(), autocast_bf16=False, guidance_max_t=600,
                               restart=RestartSettings(rounds=3, check_t=50, restart_t=400))
    assert release_sample_config(config, model_cfg, "cuda").steps == 100


def test_valence_scale_overrides_only_the_scale():
    settings = ValenceGuidanceSettings(scale=0.5, max_t=250)
    config = SampleConfig(steps=10, valence_guidance=settings)
    assert config.with_valence_scale(None) is config
    changed = config.with_valence_scale(0.02)
    assert changed.valence_guidance == ValenceGuidanceSettings(scale=0.02, max_t=250)
    assert (changed.steps, changed.guidance_weight) == (10, 1.0)
