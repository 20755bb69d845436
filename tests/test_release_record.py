"""benchmarks/release_record.py: what a measurement in metrics.json says about the sampler it ran."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from release_record import sampler_settings  # noqa: E402  (benchmarks/ is not a package)

from symdiff_cli.engine.release import save_release  # noqa: E402
from symdiff_cli.engine.release_config import Guide  # noqa: E402
from symdiff_cli.model.config import model_config_from_preset  # noqa: E402
from symdiff_cli.model.dit import SymmetrisedDenoiser  # noqa: E402


def test_guides_given_on_the_command_line_replace_the_release_own(tmp_path):
    torch.manual_seed(0)
    cfg = model_config_from_preset("tiny")
    state = SymmetrisedDenoiser(cfg).state_dict()
    release = save_release(tmp_path / "guided", cfg, state, {5: 1}, "qm9", {"step": 0}, default_steps_cpu=7,
                           guide=Guide.single(cfg, state, 3.0, {"release": "own-guide"}),
                           sampling={"guidance_max_t": 600, "guidance_min_t": 20})

    own = sampler_settings(release, [])
    assert own["steps"] == 7 and own["guidance"] == 3.0 and own["guides"] == ["own-guide"]
    assert own["guidance_max_t"] == 600 and own["guidance_min_t"] == 20 and "options" not in own

    given = sampler_settings(release, ["--guide", "a", "--guide", "b", "--guidance", "5", "--threads", "1"])
    assert given["guides"] == ["a", "b"] and given["guidance"] == 5.0
    assert given["options"] == "--guide a --guide b --guidance 5 --threads 1"
