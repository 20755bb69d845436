"""The sampler's settings, one dataclass beside ModelConfig (the network) and TrainConfig (a run).

A release states its defaults in config.json (`sampling`: the step counts for CPU and GPU and the
valence guidance, `guidance_max_t`: the noisiest timestep that is guided, `guidance_min_t`: the
guide is not called at timesteps <= it, `restart`: restart
sampling of radicals; `guidance.weight`: the autoguidance weight), read by
`release_config.release_sample_config`; `symdiff generate` overrides them with its options.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from symdiff_cli.engine.restart import RestartSettings
from symdiff_cli.model.config import DEFAULT_SPACING
from symdiff_cli.model.valence import ValenceGuidanceSettings


@dataclass(frozen=True)
class SampleConfig:
    """How molecules are sampled from a model: every setting besides the model, the seed and the
    batch plan that changes the molecules drawn.

    steps: denoising steps; spacing: where they fall among the model's noise levels (cubic,
    quadratic or uniform; model/config.py); guidance_weight: the autoguidance weight w, 1 for the
    main model alone (model/guidance.py); guidance_max_t: timesteps above it are not guided (None:
    every timestep is); guidance_min_t: nor are those at or below it (None: guided down to 0);
    valence_guidance: model/valence.py, scale 0 for off;
    autocast_bf16: the network runs in bf16 autocast while the update maths stays float32;
    restart: restart sampling of chains heading for a radical (engine/restart.py; off by default).
    """

    steps: int
    spacing: str = DEFAULT_SPACING
    guidance_weight: float = 1.0
    valence_guidance: ValenceGuidanceSettings = field(default_factory=ValenceGuidanceSettings)
    autocast_bf16: bool = False
    guidance_max_t: int | None = None
    guidance_min_t: int | None = None
    restart: RestartSettings = field(default_factory=RestartSettings)

    def with_valence_scale(self, scale: float | None) -> SampleConfig:
        """These settings with valence guidance at `scale` (None: as they are; 0: off)."""
        if scale is None:
            return self
        return replace(self, valence_guidance=self.valence_guidance.with_scale(scale))

    def with_restart_rounds(self, rounds: int | None) -> SampleConfig:
        """These settings with restart sampling at most `rounds` times (None: as they are; 0: off)."""
        if rounds is None:
            return self
        return replace(self, restart=replace(self.restart, rounds=int(rounds)))
