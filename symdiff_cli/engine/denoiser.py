"""The network the sampler calls: a release's model, with autoguidance and valence guidance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from symdiff_cli.errors import UsageError

if TYPE_CHECKING:  # torch is imported only when a command runs, so that --help stays fast
    import torch

    from symdiff_cli.engine.release import ReleasedModel
    from symdiff_cli.model.config import ModelConfig
    from symdiff_cli.model.valence import ValenceGuidanceSettings


def autoguided_denoiser(release: ReleasedModel, guidance: float | None, guide_specs: Sequence[str] | str | None,
                        offline: bool = False, show_progress: bool = True,
                        guidance_max_t: int | None = None,
                        condition_guidance: float = 1.0,
                        guidance_min_t: int | None = None) -> tuple[torch.nn.Module, float]:
    """The network the sampler calls for a loaded release, and the guidance weight it applies.

    The release's own guide, weight and guided interval (`guidance_min_t` < t <= `guidance_max_t`)
    unless overridden; several `guide_specs` guide with the mean of their networks. With weight 1 the
    guide is not called (nor loaded, for --guide), so the main model alone sets the cost.
    `condition_guidance` above 1 first guides a conditional main model on its condition
    (ConditionGuidedDenoiser); autoguidance then extrapolates from the guide towards that.
    """
    from symdiff_cli.engine.guides import load_guide_from_release
    from symdiff_cli.engine.release_config import guided_interval_max_t, guided_interval_min_t, guided_interval_top
    from symdiff_cli.model.config import DEFAULT_GUIDANCE_WEIGHT
    from symdiff_cli.model.guidance import AutoGuidedDenoiser, ConditionGuidedDenoiser, mean_of

    if isinstance(guide_specs, str):
        guide_specs = [guide_specs]
    guide_specs = list(guide_specs or [])
    main = release.model if condition_guidance == 1.0 else ConditionGuidedDenoiser(release.model, condition_guidance)
    weight = release.guidance_weight if guidance is None else float(guidance)
    if guide_specs and guidance is None and not release.ships_guide:
        raise UsageError("--guide needs --guidance W (a weight above 1 steers away from the guide; the shipped "
                         f"model uses {DEFAULT_GUIDANCE_WEIGHT:g})")
    if weight == 1.0:
        return main, 1.0
    guide = release.guide
    if guide_specs:
        guide = mean_of([load_guide_from_release(spec, release.cfg, release.device, offline=offline,
                                                 show_progress=show_progress) for spec in guide_specs])
    if guide is None and release.ships_guide:
        raise RuntimeError("autoguided_denoiser needs the release loaded with load_guide=True")
    if guide is None:
        raise UsageError(f"--guidance {weight:g} needs a guide model: this release ships none; pass --guide MODEL")
    max_t = guided_interval_max_t(guidance_max_t, release.config, release.cfg.timesteps)
    min_t = guided_interval_min_t(guidance_min_t, release.config)
    if min_t is not None and min_t >= (top := guided_interval_top(max_t, release.cfg.timesteps)):
        # An interval min_t < t <= max_t with nothing in it would silently turn guidance off.
        raise UsageError(f"--guidance-min-t {min_t} leaves no timestep to guide: it must be below the guided "
                         f"interval's top, {top} (--guidance-max-t)")
    return AutoGuidedDenoiser(main, guide, weight, max_t, min_t), weight


def with_valence_guidance(denoiser: torch.nn.Module, cfg: ModelConfig,
                          settings: ValenceGuidanceSettings) -> torch.nn.Module:
    """`denoiser` wrapped in valence guidance (model/valence.py) at `settings`; as it is when off."""
    from symdiff_cli.chem.bonds import bond_thresholds_angstrom
    from symdiff_cli.model.diffusion import NoiseSchedule
    from symdiff_cli.model.valence import ValenceGuidedDenoiser

    if settings.scale == 0 and not settings.type_scale:
        return denoiser
    thresholds, valences = bond_thresholds_angstrom(cfg.atom_types)
    schedule = NoiseSchedule(cfg.timesteps, cfg.noise_precision)
    return ValenceGuidedDenoiser(denoiser, schedule, thresholds, valences, cfg.norm_one_hot,
                                 settings.scale, settings.max_t, settings.width, settings.temperature,
                                 settings.type_scale, settings.over_weight, settings.decisiveness)


def valence_guided(denoiser: torch.nn.Module, release: ReleasedModel, scale: float | None) -> torch.nn.Module:
    """Wrap the sampler's network in valence guidance at the release's settings.

    `scale` None keeps the release's own scale (none: off); 0 turns it off. A release that
    states no valence guidance samples exactly as before it existed.
    """
    from symdiff_cli.engine.release_config import valence_guidance_settings

    settings = valence_guidance_settings(release.config)
    if scale is not None:
        settings = settings.with_scale(scale)
    return with_valence_guidance(denoiser, release.cfg, settings)
