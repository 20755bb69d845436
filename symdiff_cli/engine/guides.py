"""Guides assembled from releases: another release's network, a release's own guide, and a
release written again with a different guide."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from symdiff_cli.engine.release import load_release, save_release
from symdiff_cli.engine.release_config import (
    GUIDANCE_MAX_T_KEY, GUIDANCE_MIN_T_KEY, Guide, GuideNetwork, check_guidance_weight, check_guide_fits,
    default_sampling_steps, expected_checksum, guided_interval_max_t, guided_interval_top, parse_guidance,
    read_release_config, release_restart,
)
from symdiff_cli.engine.release_layout import CONFIG_FILE, WEIGHTS_FILE, guide_entries
from symdiff_cli.engine.restart import RESTART_KEY
from symdiff_cli.engine.release_tensors import read_weights
from symdiff_cli.errors import SymdiffError, UsageError
from symdiff_cli.model.config import ModelConfig


def load_guide_from_release(
    spec: str | os.PathLike, main_cfg: ModelConfig, device: torch.device | str = "cpu", offline: bool = False,
    show_progress: bool = True,
) -> torch.nn.Module:
    """Another release's main network as a guide for `main_cfg` (checked to fit), in eval mode."""
    guide = load_release(spec, device, offline=offline, show_progress=show_progress, load_guide=False)
    check_guide_fits(main_cfg, guide.cfg, f"--guide {spec}")
    return guide.model


def guide_from_release(spec: str | os.PathLike, weight: float, offline: bool = False) -> Guide:
    """The main network of release `spec` as a guide with `weight` (its own guide is not used)."""
    return guide_from_releases([spec], weight, offline)


def guide_from_releases(specs: Sequence[str | os.PathLike], weight: float, offline: bool = False) -> Guide:
    """The main networks of releases `specs` as one guide with `weight`: their mean."""
    from symdiff_cli.engine.registry import resolve_model

    networks = []
    for spec in specs:
        release_dir = resolve_model(str(spec), offline=offline)
        config, guide_cfg, _ = read_release_config(release_dir)
        state = read_weights(release_dir / WEIGHTS_FILE, guide_cfg, expected_checksum(config, WEIGHTS_FILE))
        networks.append(GuideNetwork(guide_cfg, state, {"release": str(spec), **config.get("provenance", {})}))
    if not networks:
        raise SymdiffError("a guide needs at least one release")
    return Guide(networks, check_guidance_weight(weight, "--guidance"))


def shipped_guide(spec: str | os.PathLike, weight: float | None = None) -> Guide | None:
    """The guide that release `spec` ships (None if it has none), with `weight` if given."""
    from symdiff_cli.engine.registry import resolve_model

    release_dir = resolve_model(str(spec))
    config, main_cfg, _ = read_release_config(release_dir)
    guidance = parse_guidance(config, main_cfg, str(release_dir / CONFIG_FILE))
    if guidance is None:
        return None
    networks, shipped_weight = guidance
    weight = shipped_weight if weight is None else check_guidance_weight(weight, "--guidance")
    return Guide([GuideNetwork(guide_cfg, read_weights(release_dir / weights_file, guide_cfg,
                                                        expected_checksum(config, weights_file)),
                               entry.get("provenance", {}))
                  for (guide_cfg, weights_file), entry in zip(networks, guide_entries(config))], weight)


def attach_guide(release_spec: str | os.PathLike, out_dir: str | os.PathLike, guide: Guide | None,
                 card_text: str | None = None, guidance_max_t: int | None = None,
                 restart_rounds: int | None = None, default_steps_cpu: int | None = None,
                 guidance_min_t: int | None = None, default_steps_cuda: int | None = None) -> Path:
    """Write release `release_spec` again to `out_dir` (which may be where it is) with `guide`
    (None: without one), replacing any guide it had; its weights, histogram, provenance,
    sampling settings, metrics.json and other config.json keys are kept, and the card is
    generated again unless `card_text` is given. `guidance_max_t` sets the noisiest guided
    timestep (the model's T or more: every one) and `guidance_min_t` the quietest unguided one (0:
    guided to the end); None keeps the release's setting. `restart_rounds` sets restart sampling
    of radicals (engine/restart.py; 0: off), and
    `default_steps_cpu` and `default_steps_cuda` the default numbers of sampling steps on CPU and
    on CUDA; None keeps each."""
    from symdiff_cli.engine.metrics_file import read_metrics_text
    from symdiff_cli.engine.registry import resolve_model

    if guide is None and (guidance_max_t is not None or guidance_min_t is not None):
        raise UsageError(f"{release_spec} ships no guide, so it has no guided interval: pass --guide MODEL to add one")
    release_dir = resolve_model(str(release_spec))
    config, model_cfg, histogram = read_release_config(release_dir)
    state = read_weights(release_dir / WEIGHTS_FILE, model_cfg, expected_checksum(config, WEIGHTS_FILE))
    sampling = dict(config.get("sampling", {}))
    if guidance_max_t is not None:
        if guidance_max_t < 0:
            raise SymdiffError(f"the guided interval's highest timestep must be >= 0, not {guidance_max_t}")
        sampling.pop(GUIDANCE_MAX_T_KEY, None)
        if (max_t := guided_interval_max_t(guidance_max_t, config, model_cfg.timesteps)) is not None:
            sampling[GUIDANCE_MAX_T_KEY] = max_t
    if guidance_min_t is not None:
        if guidance_min_t < 0:
            raise SymdiffError(f"the guided interval's lowest timestep must be >= 0, not {guidance_min_t}")
        sampling.pop(GUIDANCE_MIN_T_KEY, None)
        if guidance_min_t > 0:
            sampling[GUIDANCE_MIN_T_KEY] = int(guidance_min_t)
        top = guided_interval_top(sampling.get(GUIDANCE_MAX_T_KEY), model_cfg.timesteps)
        if guidance_min_t >= top:
            raise SymdiffError(f"the guided interval's lowest timestep ({guidance_min_t}) must be below its "
                               f"highest ({top})")
    for steps in (default_steps_cpu, default_steps_cuda):
        if steps is not None and not 1 <= steps <= model_cfg.timesteps:
            raise SymdiffError(f"the default steps must be in 1..{model_cfg.timesteps}, not {steps}")
    if restart_rounds is not None:
        if restart_rounds < 0:
            raise SymdiffError(f"the restart rounds must be 0 (off) or more, not {restart_rounds}")
        restart = replace(release_restart(config, model_cfg.timesteps), rounds=restart_rounds)
        sampling.pop(RESTART_KEY, None)
        if restart.enabled:
            sampling[RESTART_KEY] = restart.to_dict()
    return save_release(
        out_dir, model_cfg, state, histogram, str(config.get("dataset", model_cfg.dataset)),
        config.get("provenance", {}), card_text,
        default_steps_cpu=default_steps_cpu or default_sampling_steps(config, model_cfg, "cpu"),
        default_steps_cuda=default_steps_cuda or default_sampling_steps(config, model_cfg, "cuda"),
        guide=guide,
        metrics_text=read_metrics_text(release_dir),
        sampling=sampling,
        extra_config=config,
    )


def resave_release(release_spec: str | os.PathLike, out_dir: str | os.PathLike,
                   guidance_max_t: int | None = None, restart_rounds: int | None = None,
                   default_steps_cpu: int | None = None, guidance_min_t: int | None = None,
                   default_steps_cuda: int | None = None) -> Path:
    """Write release `release_spec` again to `out_dir` as it is, with its own guide and
    weight: the same tensors and settings (`guidance_max_t`, `guidance_min_t`, `restart_rounds`,
    `default_steps_cpu` and `default_steps_cuda` as in `attach_guide`), a regenerated model card,
    its metrics.json."""
    return attach_guide(release_spec, out_dir, shipped_guide(release_spec), guidance_max_t=guidance_max_t,
                        restart_rounds=restart_rounds, default_steps_cpu=default_steps_cpu,
                        guidance_min_t=guidance_min_t, default_steps_cuda=default_steps_cuda)
