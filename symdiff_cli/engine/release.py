"""The release format: what `symdiff generate` loads and what gets published.

A release is a directory with three files, and guide files when it samples with a guide:

- `model.safetensors`: the EMA weights of a `SymmetrisedDenoiser` (safetensors only, so
  opening a release can never run code, unlike a pickled torch file);
- `config.json`: the format version, the model config (architecture, atom types, noise
  schedule, normalisation), the dataset name, the training-set atom-count histogram (the
  sizes sampled at generation time), training provenance, and the default sampling step
  counts for CPU and GPU;
- `README.md`: a model card;
- `guide.safetensors` (optional, format version 2): the weights of a weaker model of the same
  data that the sampler guides away from (autoguidance, `symdiff_cli/model/guidance.py`), with
  its architecture, weight and provenance in the `guidance` section of `config.json`;
- `guide-2.safetensors`, `guide-3.safetensors`, ... (format version 3): further guide networks,
  listed with the first in `guidance.guides`; the guide's prediction is their mean.

Loading checks the config and every tensor name and shape against a freshly built network
and names what does not match, so a wrong or truncated download fails with one clear line
instead of a shape error deep inside PyTorch. `config.json` also records the SHA-256 of every
weights file (`sha256`: {file name: hex digest}); a file that no longer matches (a flipped
byte on disk or in transit, which still parses and would sample garbage) is refused by name.
Releases written before the digests were recorded have no `sha256` and load as they always did.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.atomic import current_umask
from symdiff_cli.model.config import ModelConfig
from symdiff_cli.model.valence import ValenceGuidanceSettings

RELEASE_FORMAT = "symdiff-release"
# Version 2 added the optional guide, version 3 a guide of several networks. Each release is
# written with the lowest version that holds it, so older symdiff versions keep reading every
# release they can sample as intended, and refuse the others.
RELEASE_FORMAT_VERSION = 3
_UNGUIDED_FORMAT_VERSION = 1
_ONE_GUIDE_FORMAT_VERSION = 2

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
GUIDE_WEIGHTS_FILE = "guide.safetensors"
RELEASE_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)

# Model settings a guide must share with the main model: both read and predict the same z_t.
GUIDE_SHARED_SETTINGS = ("dataset", "atom_types", "max_atoms", "timesteps", "noise_schedule", "noise_precision",
                         "norm_one_hot", "norm_charge")

# Sampling steps when the user gives none. On CPU fewer steps of the same schedule trade some
# quality for time (DESIGN.md 1.2); on a GPU the full chain is affordable.
DEFAULT_STEPS_CPU = 100
DEFAULT_STEPS_CUDA = 1000

# How many shape mismatches an error message lists before summarising the rest.
_MISMATCHES_SHOWN = 3

# The config.json key of the weights files' SHA-256 digests.
CHECKSUMS_KEY = "sha256"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_GUIDE_FILE_PATTERN = re.compile(r"guide(-[0-9]+)?\.safetensors")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as lowercase hex (read in chunks: weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# Checking weights against a config


def expected_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the state_dict of `SymmetrisedDenoiser(cfg)`.

    Built on the meta device, so even the paper-size network costs no memory or init time.
    """
    from symdiff_cli.model.dit import SymmetrisedDenoiser

    try:
        with torch.device("meta"):
            model = SymmetrisedDenoiser(cfg)
    except (NotImplementedError, RuntimeError):  # an init routine without meta support
        model = SymmetrisedDenoiser(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _name_list(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def state_dict_mismatch(
    actual: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> str | None:
    """A one-line description of how tensor shapes `actual` differ from `expected`, or None."""
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    wrong_shape = [
        f"{name}: file {tuple(actual[name])} vs config {tuple(expected[name])}"
        for name in expected
        if name in actual and tuple(actual[name]) != tuple(expected[name])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s) ({_name_list(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) ({_name_list(unexpected)})")
    if wrong_shape:
        shown = "; ".join(wrong_shape[:_MISMATCHES_SHOWN])
        more = len(wrong_shape) - _MISMATCHES_SHOWN
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {shown}" + (f"; ... ({more} more)" if more > 0 else ""))
    return "; ".join(problems) if problems else None


def _checked_tensors(state_dict: dict[str, torch.Tensor], cfg: ModelConfig, problem: str) -> dict[str, torch.Tensor]:
    """The tensors to write for `cfg`, named as the network names them; `problem` leads the error
    when their names or shapes do not fit it."""
    state_dict = _strip_wrapper_prefixes(dict(state_dict))
    mismatch = state_dict_mismatch({k: tuple(v.shape) for k, v in state_dict.items()}, expected_tensor_shapes(cfg))
    if mismatch:
        raise SymdiffError(f"{problem}: {mismatch}")
    # Contiguous private copies: safetensors refuses views and tensors that share storage.
    return {name: t.detach().to("cpu").contiguous().clone() for name, t in sorted(state_dict.items())}


def _strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DDP ("module.") and torch.compile ("_orig_mod.") wrap the network and prefix every name.
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(name.startswith(prefix) for name in state_dict):
            state_dict = {name[len(prefix):]: t for name, t in state_dict.items()}
    return state_dict


# --------------------------------------------------------------------------------------
# config.json


def _histogram_to_json(histogram: dict[int, int]) -> dict[str, int]:
    return {str(int(k)): int(v) for k, v in sorted(histogram.items(), key=lambda kv: int(kv[0]))}


def _histogram_from_json(raw: Any, cfg: ModelConfig, source: str) -> dict[int, int]:
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


def release_config(
    model_cfg: ModelConfig,
    histogram: dict[int, int],
    dataset: str,
    provenance: dict[str, Any],
    default_steps_cpu: int = DEFAULT_STEPS_CPU,
    default_steps_cuda: int = DEFAULT_STEPS_CUDA,
    guide: Guide | None = None,
) -> dict[str, Any]:
    """The content of a release's config.json."""
    config = {
        "format": RELEASE_FORMAT,
        "format_version": _format_version(guide),
        "model_config": model_cfg.to_dict(),
        "dataset": dataset,
        "atom_count_histogram": _histogram_to_json(histogram),
        "sampling": {"default_steps_cpu": int(default_steps_cpu), "default_steps_cuda": int(default_steps_cuda)},
        "provenance": dict(provenance),
    }
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
    return config


def _format_version(guide: Guide | None) -> int:
    if guide is None:
        return _UNGUIDED_FORMAT_VERSION
    return _ONE_GUIDE_FORMAT_VERSION if len(guide.networks) == 1 else RELEASE_FORMAT_VERSION


def guide_weights_file(index: int) -> str:
    """The weights file of a release's guide network number `index` (from 0)."""
    return GUIDE_WEIGHTS_FILE if index == 0 else f"guide-{index + 1}.safetensors"


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


def guide_entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The guide networks' entries of a config.json's guidance section (format 2 or 3 layout)."""
    raw = config.get("guidance")
    if not isinstance(raw, dict):
        return []
    return raw["guides"] if "guides" in raw else [raw]


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


def _check_atom_types(model_cfg: ModelConfig, source: str) -> None:
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
    _check_atom_types(model_cfg, source)
    histogram = _histogram_from_json(config.get("atom_count_histogram"), model_cfg, source)
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
    return model_cfg, histogram


# --------------------------------------------------------------------------------------
# Model card


def model_card(config: dict[str, Any], num_parameters: int | None = None,
               metrics: dict[str, float] | None = None) -> str:
    """A model-card README for a release config; `metrics` (fractions) fills the results table."""
    cfg = config["model_config"]
    prov = config.get("provenance", {})
    sampling = config.get("sampling", {})
    dataset = config.get("dataset", cfg.get("dataset", "?"))
    gamma_text = {
        "learned": "learned orientation kernel (SymDiff)",
        "haar": "Haar-random rotations (DiT-Aug baseline)",
        "none": "no symmetrisation (plain DiT)",
    }.get(cfg.get("gamma"), str(cfg.get("gamma")))
    lines = [
        "---",
        "library_name: symdiff",
        "tags: [molecule-generation, diffusion, 3d, chemistry, symdiff]",
        f"datasets: [{dataset}]",
        "---",
        "",
        f"# SymDiff {dataset} model",
        "",
        "A 3D molecule generator: E(3)-invariant diffusion (EDM-style, variance preserving) with a",
        "Diffusion Transformer made O(3)-equivariant in distribution by stochastic symmetrisation",
        "(Zhang et al., SymDiff, ICLR 2025).",
        "",
        "## Architecture",
        "",
        f"- Backbone DiT: hidden {cfg.get('hidden')}, depth {cfg.get('depth')}, {cfg.get('heads')} heads"
        + (", SwiGLU" if cfg.get("swiglu") else ""),
        f"- Orientation: {gamma_text}"
        + (f", transformer hidden {cfg.get('gamma_hidden')}, depth {cfg.get('gamma_depth')}"
           if cfg.get("gamma") == "learned" else ""),
        f"- Atom types: {' '.join(cfg.get('atom_types', []))}; at most {cfg.get('max_atoms')} atoms",
        f"- Diffusion: {cfg.get('timesteps')} steps, {cfg.get('noise_schedule')} schedule",
    ]
    if num_parameters is not None:
        lines.append(f"- Parameters: {num_parameters:,}")
    guidance = config.get("guidance")
    if guidance:
        entries = guide_entries(config)
        lines.append(
            f"- Sampling: autoguidance with weight {guidance.get('weight')} (Karras et al. 2024): each step "
            "extrapolates from a weaker guide model's prediction towards this model's, eps = eps_guide + "
            "w (eps_main - eps_guide), which adds the guide's cost to every step; `--guidance 1` samples "
            "this model alone"
            + (f"; the guide's prediction is the mean of {len(entries)} networks'" if len(entries) > 1 else ""))
        for index, entry in enumerate(entries):
            gcfg, gprov = entry.get("model_config", {}), entry.get("provenance", {})
            lines.append(
                f"- Guide model (`{guide_weights_file(index)}`): hidden {gcfg.get('hidden')}, depth {gcfg.get('depth')}"
                + (f", trained {gprov['step']} steps" if "step" in gprov else "")
                + (f", from the release {gprov['release']}" if "release" in gprov else ""))
    lines += ["", "## Training", ""]
    if prov:
        for key in sorted(prov):
            value = prov[key]
            if key in ("train_seconds", "train_cpu_seconds") and isinstance(value, (int, float)):
                value = f"{value / 3600:.2f} h"
            lines.append(f"- {key.replace('_', ' ')}: {value}")
    else:
        lines.append("- not recorded")
    lines += ["", "## Measured metrics", ""]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        for key, value in metrics.items():
            text = f"{100 * value:.2f} %" if isinstance(value, float) and 0 <= value <= 1 else str(value)
            lines.append(f"| {key.replace('_', ' ')} | {text} |")
    else:
        lines.append("Not measured yet: `symdiff generate --model <this release> --n 1000 --out mols.sdf`, then "
                     "`symdiff evaluate mols.sdf` computes the QM9 benchmark metrics (atom/molecule stability, "
                     "validity, uniqueness, novelty).")
    lines += [
        "",
        "## Usage",
        "",
        "```",
        "symdiff generate --n 1000 --out mols.sdf --model <name, directory or org/repo>",
        "```",
        "",
        f"Default sampling steps: {sampling.get('default_steps_cpu', DEFAULT_STEPS_CPU)} on CPU, "
        f"{sampling.get('default_steps_cuda', DEFAULT_STEPS_CUDA)} on GPU (`--steps` overrides).",
        "",
        f"Files: `model.safetensors` ({'raw last-step' if prov.get('weights') == 'raw' else 'EMA'} weights), "
        "`config.json` (architecture, atom types, schedule,",
        "normalisation, atom-count histogram, provenance).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Saving


def is_release_directory(path: Path) -> bool:
    """Whether `path` holds a symdiff release (a config.json of the release format)."""
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        return False
    try:
        return json.loads(config_path.read_text(encoding="utf-8")).get("format") == RELEASE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _stale_guide_files(out_dir: Path, written: list[str]) -> list[str]:
    """Guide files of the release in `out_dir` that the new release does not have: its own
    files, named in its config.json, not the user's."""
    try:
        old_config = json.loads((out_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        names = [entry.get("weights_file") for entry in guide_entries(old_config) if isinstance(entry, dict)]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return []
    return sorted({name for name in names if isinstance(name, str) and _GUIDE_FILE_PATTERN.fullmatch(name)
                   and name not in written and (out_dir / name).is_file()})


def _swap_release_files(staging: Path, out_dir: Path, names: list[str], stale: list[str]) -> None:
    """Move the release files `names` from `staging` into the existing directory `out_dir` and
    retire its `stale` guide files; every other file there (the user's notes, samples, ...)
    stays untouched.

    Each file is replaced atomically, config.json first: it records the digests of the new
    weights, so a reader between two renames gets a clear checksum error, never a silent mix
    of old and new weights. On an error the previous files are put back. A replaced file
    keeps its permission bits.
    """
    backup = staging / ".previous"
    backup.mkdir()
    moved: list[str] = []
    retired: list[str] = []
    try:
        for name in names:
            target = out_dir / name
            if target.is_file():
                os.chmod(staging / name, stat.S_IMODE(target.stat().st_mode))
                try:
                    os.link(target, backup / name)
                except OSError:  # a file system without hard links
                    shutil.copy2(target, backup / name)
            os.replace(staging / name, target)
            moved.append(name)
        for name in stale:
            os.replace(out_dir / name, backup / name)
            retired.append(name)
    except BaseException:
        for name in retired:
            os.replace(backup / name, out_dir / name)
        for name in reversed(moved):
            if (backup / name).exists():
                os.replace(backup / name, out_dir / name)
            else:
                (out_dir / name).unlink(missing_ok=True)
        raise


def save_release(
    out_dir: str | os.PathLike,
    model_cfg: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    histogram: dict[int, int],
    dataset: str,
    provenance: dict[str, Any],
    card_text: str | None = None,
    *,
    default_steps_cpu: int = DEFAULT_STEPS_CPU,
    default_steps_cuda: int = DEFAULT_STEPS_CUDA,
    guide: Guide | None = None,
) -> Path:
    """Write a release directory atomically and return its path.

    The weights (and a guide's) are checked against `model_cfg` first, so a release that cannot
    be loaded is never written; config.json records the SHA-256 of each weights file. A new
    `out_dir` is built in a temporary directory next to it and renamed into place. In an
    existing release (or empty directory) only the release's own files are replaced, one
    atomic rename each, and guide files the new release lacks are removed: anything else the
    user keeps there stays. Any other non-empty directory is refused (it is not ours to write
    into). `card_text` None writes a generated model card.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    model_cfg = model_cfg.validate()
    _check_atom_types(model_cfg, "the model config")
    tensors = _checked_tensors(state_dict, model_cfg, "the weights do not match the model config")
    if out_dir.exists() and not out_dir.is_dir():
        raise SymdiffError(f"cannot write a release to {out_dir}: it exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_release_directory(out_dir):
        raise SymdiffError(f"refusing to replace {out_dir}: it is a non-empty directory that is not a symdiff release")
    for steps in (default_steps_cpu, default_steps_cuda):
        if not 1 <= int(steps) <= model_cfg.timesteps:
            raise SymdiffError(f"default sampling steps must be in 1..{model_cfg.timesteps}, not {steps}")
    guide_tensors: list[dict[str, torch.Tensor]] = []
    if guide is not None:
        if not guide.networks:
            raise SymdiffError("the guide has no networks")
        check_guidance_weight(guide.weight, "the guide")
        for net in guide.networks:
            guide_cfg = net.model_cfg.validate()
            check_guide_fits(model_cfg, guide_cfg, "the guide")
            guide_tensors.append(_checked_tensors(net.state_dict, guide_cfg,
                                                  "the guide's weights do not match its model config"))

    config = release_config(model_cfg, histogram, dataset, provenance, default_steps_cpu, default_steps_cuda, guide)
    _histogram_from_json(config["atom_count_histogram"], model_cfg, "the histogram")  # same checks as loading
    if card_text is None:
        card_text = model_card(config, num_parameters=sum(t.numel() for t in tensors.values()))

    in_place = out_dir.is_dir()
    # Staging inside an existing directory keeps the renames on one file system, and needs no
    # write access to its parent.
    staging_parent = out_dir if in_place else out_dir.absolute().parent
    try:
        staging_parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=staging_parent))
    except OSError as err:
        raise SymdiffError(f"cannot write a release to {out_dir}: {err.strerror or err}") from None
    try:
        metadata = {"format": "pt", "symdiff_release": str(config["format_version"])}
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata=metadata)
        weights_files = [WEIGHTS_FILE]
        for index, tensors_of_guide in enumerate(guide_tensors):
            save_file(tensors_of_guide, str(staging / guide_weights_file(index)), metadata=metadata)
            weights_files.append(guide_weights_file(index))
        config[CHECKSUMS_KEY] = {name: file_sha256(staging / name) for name in weights_files}
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        (staging / CARD_FILE).write_text(card_text if card_text.endswith("\n") else card_text + "\n", encoding="utf-8")
        written = [CONFIG_FILE, *weights_files, CARD_FILE]
        for name in written:
            _fsync_file(staging / name)
            os.chmod(staging / name, 0o666 & ~current_umask())  # safetensors writes 0600
        if in_place:
            _swap_release_files(staging, out_dir, written, _stale_guide_files(out_dir, written))
        else:
            os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700; use what mkdir would
            os.replace(staging, out_dir)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError):
            raise SymdiffError(f"cannot write a release to {out_dir}: {err.strerror or err}") from None
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return out_dir


# --------------------------------------------------------------------------------------
# Loading


@dataclass
class ReleasedModel:
    """A loaded release: the network in eval mode on its device, and what generation needs."""

    model: torch.nn.Module
    cfg: ModelConfig
    histogram: dict[int, int]
    config: dict[str, Any]
    path: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    guide: torch.nn.Module | None = None  # the release's guide (a MeanDenoiser of several networks), eval mode
    guidance_weight: float = 1.0  # the release's default; 1 samples the main model alone
    ships_guide: bool = False  # whether the release has a guide, loaded into `guide` or not

    def default_steps(self, device_type: str) -> int:
        """The release's default number of sampling steps for "cpu" or "cuda"."""
        return default_sampling_steps(self.config, self.cfg, device_type)


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


def _read_weights(weights_path: Path, model_cfg: ModelConfig, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load the safetensors weights after checking every name and shape against the config and,
    when the release records one, the file's digest.

    The names and shapes come first: a weights file that does not fit its config is the more
    telling message. The digest then catches what still parses: flipped bytes in the data.
    """
    from safetensors import safe_open

    if not weights_path.is_file():
        raise SymdiffError(f"{weights_path.parent} is not a symdiff release: {weights_path.name} is missing")
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
            mismatch = state_dict_mismatch(shapes, expected_tensor_shapes(model_cfg))
            if mismatch:
                raise SymdiffError(f"the weights in {weights_path} do not match its {CONFIG_FILE}: {mismatch}")
            if expected_sha256 is not None and file_sha256(weights_path) != expected_sha256:
                raise SymdiffError(f"{weights_path} is damaged: its SHA-256 does not match the one in {CONFIG_FILE} "
                                   "(copy, download or export the release again)")
            tensors = {name: handle.get_tensor(name) for name in shapes}
    except SymdiffError:
        raise
    except Exception as err:  # safetensors raises its own error class, OSError or ValueError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SymdiffError(f"{weights_path} is not a readable safetensors file ({reason})") from None
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise SymdiffError(f"{weights_path}: tensor {name} has dtype {tensor.dtype}, expected floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise SymdiffError(f"{weights_path}: tensor {name} holds NaN or infinite values")
    return tensors


def load_release_state_dict(
    spec: str | os.PathLike | None, offline: bool = False
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The model config and checked weights of a release (a name, a directory or a Hub id)."""
    from symdiff_cli.engine.registry import resolve_model

    release_dir = resolve_model(None if spec is None else str(spec), offline=offline)
    config, model_cfg, _ = read_release_config(release_dir)
    return model_cfg, _read_weights(release_dir / WEIGHTS_FILE, model_cfg, expected_checksum(config, WEIGHTS_FILE))


def load_release(
    spec: str | os.PathLike | None, device: torch.device | str = "cpu", offline: bool = False,
    show_progress: bool = True, load_guide: bool = True,
) -> ReleasedModel:
    """Resolve, check and load a release; the model (and its guide, if any and `load_guide`) are
    in eval mode on `device`. The release's guidance weight is read either way."""
    from symdiff_cli.engine.registry import resolve_model
    from symdiff_cli.model.dit import SymmetrisedDenoiser
    from symdiff_cli.model.guidance import mean_of

    release_dir = resolve_model(None if spec is None else str(spec), offline=offline, show_progress=show_progress)
    config, model_cfg, histogram = read_release_config(release_dir)
    device = torch.device(device)

    def network(cfg: ModelConfig, weights_file: str) -> torch.nn.Module:
        model = SymmetrisedDenoiser(cfg)
        model.load_state_dict(_read_weights(release_dir / weights_file, cfg, expected_checksum(config, weights_file)),
                              strict=True)
        return model.to(device).eval()

    model = network(model_cfg, WEIGHTS_FILE)
    guide, weight = None, 1.0
    guidance = parse_guidance(config, model_cfg, str(release_dir / CONFIG_FILE))
    if guidance is not None:
        networks, weight = guidance
        # Not even opened unless wanted: a damaged guide must not block sampling without it.
        if load_guide:
            guide = mean_of([network(guide_cfg, weights_file) for guide_cfg, weights_file in networks])
    return ReleasedModel(model=model, cfg=model_cfg, histogram=histogram, config=config,
                         path=release_dir, device=device, guide=guide, guidance_weight=weight,
                         ships_guide=guidance is not None)


def load_guide_from_release(
    spec: str | os.PathLike, main_cfg: ModelConfig, device: torch.device | str = "cpu", offline: bool = False,
    show_progress: bool = True,
) -> torch.nn.Module:
    """Another release's main network as a guide for `main_cfg` (checked to fit), in eval mode."""
    guide = load_release(spec, device, offline=offline, show_progress=show_progress, load_guide=False)
    check_guide_fits(main_cfg, guide.cfg, f"--guide {spec}")
    return guide.model


# --------------------------------------------------------------------------------------
# Training checkpoint -> release


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
        state = _read_weights(release_dir / WEIGHTS_FILE, guide_cfg, expected_checksum(config, WEIGHTS_FILE))
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
    return Guide([GuideNetwork(guide_cfg, _read_weights(release_dir / weights_file, guide_cfg,
                                                        expected_checksum(config, weights_file)),
                               entry.get("provenance", {}))
                  for (guide_cfg, weights_file), entry in zip(networks, guide_entries(config))], weight)


def attach_guide(release_spec: str | os.PathLike, out_dir: str | os.PathLike, guide: Guide,
                 card_text: str | None = None) -> Path:
    """Write release `release_spec` again to `out_dir` (which may be where it is) with `guide`,
    replacing any guide it had; its weights, histogram, provenance and step defaults are kept."""
    from symdiff_cli.engine.registry import resolve_model

    release_dir = resolve_model(str(release_spec))
    config, model_cfg, histogram = read_release_config(release_dir)
    state = _read_weights(release_dir / WEIGHTS_FILE, model_cfg, expected_checksum(config, WEIGHTS_FILE))
    return save_release(
        out_dir, model_cfg, state, histogram, str(config.get("dataset", model_cfg.dataset)),
        config.get("provenance", {}), card_text,
        default_steps_cpu=default_sampling_steps(config, model_cfg, "cpu"),
        default_steps_cuda=default_sampling_steps(config, model_cfg, "cuda"),
        guide=guide,
    )


def convert_checkpoint_to_release(
    checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike, card_text: str | None = None,
    weights: str = "ema", guide: Guide | None = None,
) -> Path:
    """Export the EMA weights (or with weights="raw" the last step's own) of a training
    checkpoint (runs/NAME/checkpoint.pt or its directory) as a release directory, with `guide`
    if given; returns its path."""
    if weights not in ("ema", "raw"):
        raise SymdiffError(f"weights must be ema or raw, not {weights!r}")
    from symdiff_cli.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint_path)
    try:
        model_cfg = ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise SymdiffError(f"{checkpoint_path}: invalid model config ({err})") from None
    histogram = ckpt.get("atom_count_histogram")
    if not histogram:
        raise SymdiffError(f"{checkpoint_path} has no atom-count histogram; cannot make a release from it")
    state = ckpt.get("state") or {}
    train_cfg = ckpt.get("train_config") or {}
    provenance: dict[str, Any] = {
        "source": "symdiff train",
        "step": int(state.get("step", 0)),
        "epoch": int(state.get("epoch", 0)),
        "train_seconds": round(float(state.get("elapsed", 0.0)), 1),
    }
    if "cpu_time" in state:
        provenance["train_cpu_seconds"] = round(float(state["cpu_time"]), 1)
    for key in ("preset", "batch_size", "lr", "ema_decay", "seed"):
        if key in train_cfg:
            provenance[key] = train_cfg[key]
    # Under torchrun batch_size is per process and the CPU time is rank 0's: the process count
    # is what turns them into the run's totals.
    if int(ckpt.get("world_size", 1)) > 1:
        provenance["world_size"] = int(ckpt["world_size"])
    # Settings that only some runs use, recorded when they differ from TrainConfig's defaults:
    # above all, that the run continued an earlier release, whose own training is then part of
    # this model's history.
    from symdiff_cli.engine.train import TrainConfig

    defaults = TrainConfig()
    for key in ("init_from", "lr_schedule", "min_lr", "low_noise_fraction"):
        unused = getattr(defaults, key)
        if train_cfg.get(key, unused) != unused:
            provenance[key] = train_cfg[key]
    # Recorded only for raw weights, so that every earlier release reads as what it is: EMA.
    if weights == "raw":
        provenance["weights"] = "raw"
    dataset = str(ckpt.get("dataset") or model_cfg.dataset)
    state_dict = ckpt["ema"] if weights == "ema" else ckpt["model"]
    return save_release(out_dir, model_cfg, state_dict, {int(k): int(v) for k, v in histogram.items()},
                        dataset, provenance, card_text, guide=guide)


__all__ = [
    "RELEASE_FORMAT", "RELEASE_FORMAT_VERSION", "WEIGHTS_FILE", "CONFIG_FILE", "CARD_FILE",
    "DEFAULT_STEPS_CPU", "DEFAULT_STEPS_CUDA", "GUIDE_WEIGHTS_FILE", "Guide", "GuideNetwork", "ReleasedModel",
    "save_release", "load_release", "load_guide_from_release", "guide_from_release", "guide_from_releases",
    "shipped_guide", "attach_guide", "guide_weights_file",
    "load_release_state_dict", "read_release_config", "convert_checkpoint_to_release", "model_card",
    "release_config", "expected_tensor_shapes", "state_dict_mismatch", "CHECKSUMS_KEY", "expected_checksum",
    "file_sha256", "is_release_directory",
]
