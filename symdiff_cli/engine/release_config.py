"""A release's config.json: writing it, checking it, and the settings it holds.

config.json holds the format version, the model config (architecture, atom types, noise
schedule, normalisation), the dataset name, the training-set atom-count histogram (the sizes
sampled at generation time), training provenance, the sampling defaults, the guide's
architecture, weight and provenance (`guidance`), and the SHA-256 of every weights file
(`sha256`). `Guide` and `GuideNetwork` are the guidance section in memory.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from symdiff_cli.engine.sample_config import SampleConfig
from symdiff_cli.engine.release_layout import CONFIG_FILE, guide_entries, guide_weights_file
from symdiff_cli.engine.restart import RESTART_KEY, RestartSettings
from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.config import ModelConfig
from symdiff_cli.model.valence import ValenceGuidanceSettings

RELEASE_FORMAT = "symdiff-release"
# Version 2 added the optional guide, version 3 a guide of several networks. Each release is
# written with the lowest version that holds it, so older symdiff versions keep reading every
# release they can sample as intended, and refuse the others.
RELEASE_FORMAT_VERSION = 3
_UNGUIDED_FORMAT_VERSION = 1
_ONE_GUIDE_FORMAT_VERSION = 2

# Model settings a guide must share with the main model: both read and predict the same z_t.
GUIDE_SHARED_SETTINGS = ("dataset", "atom_types", "max_atoms", "timesteps", "noise_schedule", "noise_precision",
                         "norm_one_hot", "norm_charge")

# Sampling steps when the user gives none. On CPU fewer steps of the same schedule trade some
# quality for time; on a GPU the full chain is affordable.
DEFAULT_STEPS_CPU = 100
DEFAULT_STEPS_CUDA = 1000

# The config.json key (in `sampling`) of the noisiest timestep that autoguidance acts on.
GUIDANCE_MAX_T_KEY = "guidance_max_t"
GUIDANCE_MIN_T_KEY = "guidance_min_t"
# The scale of guidance on a conditional release's property condition (model/guidance.py
# ConditionGuidedDenoiser); absent: 1, no such guidance.
CONDITION_GUIDANCE_KEY = "condition_guidance"

# The config.json key of the weights files' SHA-256 digests.
CHECKSUMS_KEY = "sha256"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _histogram_to_json(histogram: dict[int, int]) -> dict[str, int]:
    return {str(int(k)): int(v) for k, v in sorted(histogram.items(), key=lambda kv: int(kv[0]))}


def histogram_from_json(raw: Any, cfg: ModelConfig, source: str) -> dict[int, int]:
    if not isinstance(raw, dict) or not raw:
        raise SymdiffError(f"{source}: atom_count_histogram must be a non-empty object {{num_atoms: count}}")
    histogram: dict[int, int] = {}
    for key, value in raw.items():
        try:
            size, count = int(key), int(value)
        except (TypeError, ValueError):
            raise SymdiffError(f"{source}: atom_count_histogram entry {key!r}: {value!r} is not a whole number") from None
        if not 1 <= size <= cfg.max_atoms or count < 0:
            raise SymdiffError(
                f"{source}: atom_count_histogram entry {key}: {value} is out of range "
                f"(sizes 1..{cfg.max_atoms}, counts >= 0)"
            )
        if count:
            histogram[size] = count
    if not histogram:
        raise SymdiffError(f"{source}: atom_count_histogram has no non-zero count")
    return histogram


# The config.json keys this symdiff writes itself; others (from a newer symdiff, or added by
# hand) are carried over when a release is written again.
_KNOWN_CONFIG_KEYS = ("format", "format_version", "model_config", "dataset", "atom_count_histogram", "sampling",
                      "provenance", "guidance", CHECKSUMS_KEY)


def release_config(
    model_cfg: ModelConfig,
    histogram: dict[int, int],
    dataset: str,
    provenance: dict[str, Any],
    default_steps_cpu: int = DEFAULT_STEPS_CPU,
    default_steps_cuda: int = DEFAULT_STEPS_CUDA,
    guide: Guide | None = None,
    sampling: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of a release's config.json.

    `sampling` holds further sampling settings (e.g. `valence_guidance`), written after the step
    defaults, which the two step arguments set; `extra` further top-level keys, written last.
    Both are kept as they are, so that settings this code does not know survive a re-save.
    """
    config = {
        "format": RELEASE_FORMAT,
        "format_version": _format_version(guide),
        "model_config": model_cfg.to_dict(),
        "dataset": dataset,
        "atom_count_histogram": _histogram_to_json(histogram),
        "sampling": {"default_steps_cpu": int(default_steps_cpu), "default_steps_cuda": int(default_steps_cuda)},
        "provenance": dict(provenance),
    }
    for key, value in (sampling or {}).items():
        config["sampling"].setdefault(key, value)
    if guide is not None:
        entries = [
            {"weights_file": guide_weights_file(i), "model_config": net.model_cfg.to_dict(),
             "provenance": dict(net.provenance)}
            for i, net in enumerate(guide.networks)
        ]
        config["guidance"] = {"method": "autoguidance", "weight": float(guide.weight)}
        if len(entries) == 1:  # the version-2 layout, which older symdiff reads
            config["guidance"].update(entries[0])
        else:
            config["guidance"]["guides"] = entries
    for key, value in (extra or {}).items():
        if key not in _KNOWN_CONFIG_KEYS:
            config[key] = value
    return config


def _format_version(guide: Guide | None) -> int:
    if guide is None:
        return _UNGUIDED_FORMAT_VERSION
    return _ONE_GUIDE_FORMAT_VERSION if len(guide.networks) == 1 else RELEASE_FORMAT_VERSION


@dataclass
class GuideNetwork:
    """One network of a guide: its architecture, weights and where it came from."""

    model_cfg: ModelConfig
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Guide:
    """The weaker model a release guides its sampler away from, and how strongly (weight w).

    Its prediction is the mean of its networks' (one network: that network's).
    """

    networks: list[GuideNetwork]
    weight: float

    @classmethod
    def single(cls, model_cfg: ModelConfig, state_dict: dict[str, torch.Tensor], weight: float,
               provenance: dict[str, Any] | None = None) -> Guide:
        return cls([GuideNetwork(model_cfg, state_dict, dict(provenance or {}))], weight)


def check_guidance_weight(weight: Any, source: str) -> float:
    """A guidance weight: a finite number >= 0 (1 = the main model alone, 0 = the guide alone)."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise SymdiffError(f"{source}: the guidance weight must be a finite number >= 0, not {weight!r}")
    return float(weight)


def check_guide_fits(main_cfg: ModelConfig, guide_cfg: ModelConfig, source: str) -> None:
    """A guide must read and predict the same variables as the main model; its size may differ."""
    main, guide = main_cfg.to_dict(), guide_cfg.to_dict()
    differing = [k for k in GUIDE_SHARED_SETTINGS if main.get(k) != guide.get(k)]
    if differing:
        shown = ", ".join(f"{k} {guide.get(k)!r} vs {main.get(k)!r}" for k in differing[:3])
        raise SymdiffError(f"{source}: the guide model does not fit the main model ({shown})")
    if guide_cfg.conditions and tuple(guide_cfg.conditions) != tuple(main_cfg.conditions):
        # The sampler gives a guide the main model's property values, and none to an unconditional one.
        raise SymdiffError(f"{source}: conditioned on {', '.join(guide_cfg.conditions)}, the main model on "
                           f"{', '.join(main_cfg.conditions) or 'nothing'}: a guide may read only the properties the "
                           "main model reads")


def parse_guidance(config: dict[str, Any], main_cfg: ModelConfig,
                   source: str) -> tuple[list[tuple[ModelConfig, str]], float] | None:
    """The guide networks (model config, weights file) and the guidance weight of a checked
    config.json, or None."""
    raw = config.get("guidance")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SymdiffError(f"{source}: guidance must be an object")
    if raw.get("method", "autoguidance") != "autoguidance":
        raise SymdiffError(f"{source}: unknown guidance method {raw.get('method')!r} (this symdiff knows autoguidance)")
    weight = check_guidance_weight(raw.get("weight"), f"{source}: guidance.weight")
    several = "guides" in raw
    if several and (not isinstance(raw["guides"], list) or not raw["guides"]
                    or not all(isinstance(entry, dict) for entry in raw["guides"])):
        raise SymdiffError(f"{source}: guidance.guides must be a non-empty list of objects")
    networks = []
    for index, entry in enumerate(guide_entries(config)):
        where = f"guidance.guides[{index}]" if several else "guidance"
        expected_file = guide_weights_file(index)
        if entry.get("weights_file", expected_file) != expected_file:
            raise SymdiffError(f"{source}: {where}.weights_file must be {expected_file!r}")
        if not isinstance(entry.get("model_config"), dict):
            raise SymdiffError(f"{source}: {where}.model_config is missing or not an object")
        try:
            guide_cfg = ModelConfig.from_dict(entry["model_config"])
        except SymdiffError as err:
            raise SymdiffError(f"{source}: {where}: {err}") from None
        except (TypeError, ValueError) as err:
            raise SymdiffError(f"{source}: invalid {where}.model_config ({err})") from None
        check_guide_fits(main_cfg, guide_cfg, source if not several else f"{source}: {where}")
        networks.append((guide_cfg, expected_file))
    return networks, weight


def check_atom_types(model_cfg: ModelConfig, source: str) -> None:
    """Atom types must be distinct element symbols: the sampler maps each to an atomic number
    after every denoising step, too late for a typo in config.json to fail cleanly."""
    from symdiff_cli.chem.elements import SYMBOL_TO_Z

    types = model_cfg.atom_types
    if not types:
        raise SymdiffError(f"{source}: model_config.atom_types is empty")
    for symbol in types:
        if not isinstance(symbol, str) or symbol not in SYMBOL_TO_Z:
            raise SymdiffError(f"{source}: model_config.atom_types holds {symbol!r}, which is not an element symbol "
                               "(write them as H, C, N, O, F, Cl, ...)")
    if len(set(types)) != len(types):
        raise SymdiffError(f"{source}: model_config.atom_types lists an element twice ({' '.join(types)})")


def expected_checksum(config: dict[str, Any], weights_file: str) -> str | None:
    """The SHA-256 that a checked config.json records for `weights_file`, or None (older releases)."""
    return config.get(CHECKSUMS_KEY, {}).get(weights_file)


def parse_release_config(config: Any, source: str) -> tuple[ModelConfig, dict[int, int]]:
    """Check a loaded config.json; returns the model config and the atom-count histogram."""
    if not isinstance(config, dict):
        raise SymdiffError(f"{source}: expected a JSON object")
    if config.get("format") == "symdiff-property-predictor":  # engine/predictor.py PREDICTOR_FORMAT
        raise SymdiffError(f"{source} belongs to a property predictor, not a generator: it is the judge of "
                           "`symdiff evaluate --property`")
    if config.get("format") != RELEASE_FORMAT:
        raise SymdiffError(f"{source} is not a symdiff release config (its 'format' is not {RELEASE_FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise SymdiffError(f"{source}: format_version must be a positive integer")
    if version > RELEASE_FORMAT_VERSION:
        raise SymdiffError(
            f"{source} has release format version {version}; this symdiff reads up to "
            f"{RELEASE_FORMAT_VERSION}: upgrade symdiff"
        )
    raw_cfg = config.get("model_config")
    if not isinstance(raw_cfg, dict):
        raise SymdiffError(f"{source}: model_config is missing or not an object")
    try:
        model_cfg = ModelConfig.from_dict(raw_cfg)
    except SymdiffError as err:
        raise SymdiffError(f"{source}: {err}") from None
    except (TypeError, ValueError) as err:
        raise SymdiffError(f"{source}: invalid model_config ({err})") from None
    check_atom_types(model_cfg, source)
    histogram = histogram_from_json(config.get("atom_count_histogram"), model_cfg, source)
    parse_guidance(config, model_cfg, source)
    checksums = config.get(CHECKSUMS_KEY, {})
    if not isinstance(checksums, dict) or not all(
            isinstance(name, str) and isinstance(value, str) and _SHA256_HEX.fullmatch(value)
            for name, value in checksums.items()):
        raise SymdiffError(f"{source}: {CHECKSUMS_KEY} must map weights file names to SHA-256 hex digests")
    sampling = config.get("sampling", {})
    if not isinstance(sampling, dict):
        raise SymdiffError(f"{source}: sampling must be an object")
    for key in ("default_steps_cpu", "default_steps_cuda"):
        steps = sampling.get(key)
        if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= model_cfg.timesteps):
            raise SymdiffError(f"{source}: sampling.{key} must be an integer in 1..{model_cfg.timesteps}")
    max_t = sampling.get(GUIDANCE_MAX_T_KEY)
    if max_t is not None and (isinstance(max_t, bool) or not isinstance(max_t, int)
                              or not 0 <= max_t <= model_cfg.timesteps):
        raise SymdiffError(f"{source}: sampling.{GUIDANCE_MAX_T_KEY} must be an integer in 0..{model_cfg.timesteps}")
    min_t = sampling.get(GUIDANCE_MIN_T_KEY)
    if min_t is not None and (isinstance(min_t, bool) or not isinstance(min_t, int)
                              or not 0 <= min_t < guided_interval_top(max_t, model_cfg.timesteps)):
        raise SymdiffError(f"{source}: sampling.{GUIDANCE_MIN_T_KEY} must be an integer from 0 up to, not "
                           f"including, sampling.{GUIDANCE_MAX_T_KEY} (or {model_cfg.timesteps})")
    scale = sampling.get(CONDITION_GUIDANCE_KEY)
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)
                              or not math.isfinite(scale) or scale < 0):
        raise SymdiffError(f"{source}: sampling.{CONDITION_GUIDANCE_KEY} must be a number >= 0")
    if RESTART_KEY in sampling:
        try:
            RestartSettings.from_dict(sampling[RESTART_KEY], model_cfg.timesteps)
        except ValueError as err:
            raise SymdiffError(f"{source}: invalid sampling.{RESTART_KEY} ({err})") from None
    return model_cfg, histogram


def release_guidance_max_t(config: dict[str, Any]) -> int | None:
    """The noisiest timestep a checked release config guides (sampling.guidance_max_t); None: all.

    Kept in `sampling`, which older symdiff versions read past: they guide at every timestep, the
    sampler releases had before this setting existed."""
    return config.get("sampling", {}).get(GUIDANCE_MAX_T_KEY)


def guided_interval_max_t(override: int | None, config: dict[str, Any], timesteps: int) -> int | None:
    """The noisiest guided timestep of a sampler: `override` (a --guidance-max-t), else the
    release's own; None when every timestep is guided (none set, or `timesteps` and above)."""
    max_t = release_guidance_max_t(config) if override is None else override
    return None if max_t is None or max_t >= timesteps else int(max_t)


def guided_interval_top(max_t: int | None, timesteps: int) -> int:
    """The noisiest timestep a guided interval can reach: its max_t, or the model's T when unbounded.
    A guidance_min_t must lie below it, or the interval holds no timestep."""
    return timesteps if max_t is None else max_t


def guided_interval_min_t(override: int | None, config: dict[str, Any]) -> int | None:
    """The quietest timestep a sampler does not guide: guidance stops at timesteps <= it.
    `override` (a --guidance-min-t), else the release's sampling.guidance_min_t; None when every
    timestep down to 0 is guided (none set, or 0). Older releases lack the key and guide to the end."""
    min_t = config.get("sampling", {}).get(GUIDANCE_MIN_T_KEY) if override is None else override
    return None if not min_t else int(min_t)


def release_restart(config: dict[str, Any], timesteps: int) -> RestartSettings:
    """A checked release config's restart sampling (sampling.restart); off when absent."""
    raw = config.get("sampling", {}).get(RESTART_KEY)
    return RestartSettings.off_for(timesteps) if raw is None else RestartSettings.from_dict(raw, timesteps)


def default_sampling_steps(config: dict[str, Any], model_cfg: ModelConfig, device_type: str) -> int:
    """A release config's default number of sampling steps for "cpu" or "cuda"."""
    sampling = config.get("sampling", {})
    if device_type == "cuda":
        return int(sampling.get("default_steps_cuda", min(DEFAULT_STEPS_CUDA, model_cfg.timesteps)))
    return int(sampling.get("default_steps_cpu", min(DEFAULT_STEPS_CPU, model_cfg.timesteps)))


def valence_guidance_settings(config: dict[str, Any]) -> ValenceGuidanceSettings:
    """The release's valence guidance (config.json sampling.valence_guidance); off when absent."""
    raw = config.get("sampling", {}).get("valence_guidance")
    if raw is None:
        return ValenceGuidanceSettings()
    try:
        if not isinstance(raw, dict):
            raise ValueError("it must be an object")
        return ValenceGuidanceSettings.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise SymdiffError(f"invalid sampling.valence_guidance in the release config ({err})") from None


def release_sample_config(config: dict[str, Any], model_cfg: ModelConfig, device_type: str) -> SampleConfig:
    """The sampling defaults of a checked config.json on "cpu" or "cuda": the step count, valence
    guidance, guidance interval and restart sampling of its `sampling` section, and the weight of its `guidance`
    section (1 without one)."""
    guidance = parse_guidance(config, model_cfg, CONFIG_FILE)
    return SampleConfig(steps=default_sampling_steps(config, model_cfg, device_type),
                        guidance_weight=1.0 if guidance is None else guidance[1],
                        valence_guidance=valence_guidance_settings(config),
                        guidance_max_t=release_guidance_max_t(config),
                        guidance_min_t=guided_interval_min_t(None, config),
                        restart=release_restart(config, model_cfg.timesteps))


def read_release_config(release_dir: Path) -> tuple[dict[str, Any], ModelConfig, dict[int, int]]:
    """Read and check config.json of a release directory."""
    config_path = release_dir / CONFIG_FILE
    if not config_path.is_file():
        raise SymdiffError(f"{release_dir} is not a symdiff release: {CONFIG_FILE} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise SymdiffError(f"cannot read {config_path}: {err}") from None
    except json.JSONDecodeError as err:
        raise SymdiffError(f"{config_path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    model_cfg, histogram = parse_release_config(config, str(config_path))
    return config, model_cfg, histogram


def is_release_directory(path: Path) -> bool:
    """Whether `path` holds a symdiff release (a config.json of the release format)."""
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        return False
    try:
        return json.loads(config_path.read_text(encoding="utf-8")).get("format") == RELEASE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False
