"""The release format: what `symdiff generate` loads and what gets published.

A release is a directory with three files, and guide files when it samples with a guide:

- `model.safetensors`: the EMA weights of a `SymmetrisedDenoiser` (safetensors only, so
  opening a release can never run code, unlike a pickled torch file);
- `config.json`: the format version, the model config (architecture, atom types, noise
  schedule, normalisation), the dataset name, the training-set atom-count histogram (the
  sizes sampled at generation time), training provenance, and the default sampling step
  counts for CPU and GPU;
- `README.md`: the model card, generated from `config.json` and `metrics.json` by whatever writes
  the release (`symdiff_cli/engine/card.py`), never edited by hand;
- `metrics.json` (optional): the measured results the card shows (per-seed values, seeds, sample
  sizes, the command, the date, the sampler settings; schema in `card.py`). The release format
  carries it over unchanged when a release is written again, and drops it when new weights are
  written over a release (its numbers describe the old weights);
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

This module saves and loads releases. config.json's schema is in engine/release_config.py, the
weights' checks in engine/release_tensors.py, file names in engine/release_layout.py, and guides
assembled from other releases in engine/guides.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from symdiff_cli.engine.release_config import (
    CHECKSUMS_KEY, Guide, check_atom_types, check_guidance_weight, check_guide_fits,
    default_sampling_steps, expected_checksum, histogram_from_json, is_release_directory, parse_guidance,
    read_release_config, release_config, release_sample_config,
)
from symdiff_cli.engine.sample_config import SampleConfig
from symdiff_cli.engine.release_layout import (
    CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, expected_tensor_shapes, guide_entries,
    guide_weights_file,
)
from symdiff_cli.engine.release_tensors import checked_tensors, file_sha256, read_weights, write_weights
from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.atomic import current_umask
from symdiff_cli.model.config import ModelConfig

_GUIDE_FILE_PATTERN = re.compile(r"guide(-[0-9]+)?\.safetensors")


# --------------------------------------------------------------------------------------
# Model card


def model_card(config: dict[str, Any], num_parameters: int | None = None,
               metrics: dict[str, Any] | None = None, name: str | None = None) -> str:
    """The model card README.md of a release config (`symdiff_cli/engine/card.py`); `metrics` is
    the release's checked metrics.json, which fills the results table, and `name` its name."""
    from symdiff_cli.engine.card import model_card as render

    return render(config, num_parameters, metrics, name)


def write_model_card(release_spec: str | os.PathLike) -> Path:
    """Render the model card of release `release_spec` (a name or directory) again from its
    config.json and metrics.json, and replace its README.md atomically; nothing else is
    written. Returns the card's path."""
    from symdiff_cli.engine.metrics_file import parse_metrics_text, read_metrics_text
    from symdiff_cli.engine.registry import resolve_model
    from symdiff_cli.io.atomic import atomic_output

    release_dir = resolve_model(str(release_spec), offline=True)
    config, model_cfg, _ = read_release_config(release_dir)
    metrics_text = read_metrics_text(release_dir)
    metrics = None if metrics_text is None else parse_metrics_text(metrics_text, str(release_dir))
    num_parameters = sum(math.prod(shape) for shape in expected_tensor_shapes(model_cfg).values())
    card = model_card(config, num_parameters, metrics, name=release_dir.resolve().name)
    try:
        with atomic_output(release_dir / CARD_FILE, "w") as handle:
            handle.write(card)
    except OSError as err:
        raise SymdiffError(f"cannot write {release_dir / CARD_FILE}: {err.strerror or err}") from None
    return release_dir / CARD_FILE


# --------------------------------------------------------------------------------------
# Saving


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


def _checked_release_weights(
    out_dir: Path, model_cfg: ModelConfig, state_dict: dict[str, torch.Tensor], guide: Guide | None,
    default_steps: tuple[int, int],
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The tensors of the main network and of each guide network, checked to fit their configs,
    after the checks of `out_dir` and the settings: everything `save_release` refuses, refused
    before anything is written."""
    check_atom_types(model_cfg, "the model config")
    tensors = checked_tensors(state_dict, model_cfg, "the weights do not match the model config")
    if out_dir.exists() and not out_dir.is_dir():
        raise SymdiffError(f"cannot write a release to {out_dir}: it exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_release_directory(out_dir):
        raise SymdiffError(f"refusing to replace {out_dir}: it is a non-empty directory that is not a symdiff release")
    for steps in default_steps:
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
            guide_tensors.append(checked_tensors(net.state_dict, guide_cfg,
                                                 "the guide's weights do not match its model config"))
    return tensors, guide_tensors


def _write_release_files(staging: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                         guide_tensors: list[dict[str, torch.Tensor]], card_text: str,
                         metrics_text: str | None, replaced: Path | None) -> list[str]:
    """Write every file of a release into the directory `staging`, synced to disk; returns their
    names, config.json first. Records the weights' digests in `config`. A weights file of the
    release in `replaced` that holds the same tensors is kept byte for byte."""
    from symdiff_cli.engine.metrics_file import METRICS_FILE

    weights_files = [WEIGHTS_FILE, *(guide_weights_file(index) for index in range(len(guide_tensors)))]
    for name, tensors_of_file in zip(weights_files, [tensors, *guide_tensors]):
        write_weights(staging / name, tensors_of_file, None if replaced is None else replaced / name)
    config[CHECKSUMS_KEY] = {name: file_sha256(staging / name) for name in weights_files}
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    (staging / CARD_FILE).write_text(card_text if card_text.endswith("\n") else card_text + "\n", encoding="utf-8")
    written = [CONFIG_FILE, *weights_files, CARD_FILE]
    if metrics_text is not None:
        with open(staging / METRICS_FILE, "w", encoding="utf-8", newline="") as handle:
            handle.write(metrics_text)
        written.append(METRICS_FILE)
    for name in written:
        _fsync_file(staging / name)
        os.chmod(staging / name, 0o666 & ~current_umask())  # safetensors writes 0600
    return written


def save_release(
    out_dir: str | os.PathLike,
    model_cfg: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    histogram: dict[int, int],
    dataset: str,
    provenance: dict[str, Any],
    card_text: str | None = None,
    *,
    default_steps_cpu: int | None = None,
    default_steps_cuda: int | None = None,
    guide: Guide | None = None,
    metrics_text: str | None = None,
    sampling: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a release directory atomically and return its path.

    The weights (and a guide's) are checked against `model_cfg` first, so a release that cannot
    be loaded is never written; config.json records the SHA-256 of each weights file. A new
    `out_dir` is built in a temporary directory next to it and renamed into place. In an
    existing release (or empty directory) only the release's own files are replaced, one
    atomic rename each, and guide files the new release lacks are removed: anything else the
    user keeps there stays. Any other non-empty directory is refused (it is not ours to write
    into). `card_text` None writes a generated model card.

    `metrics_text` is the text of the release's metrics.json, written byte for byte (checked
    first); None writes none and removes the one an existing release in `out_dir` has, since its
    numbers were measured with other weights. `sampling` and `extra_config` are further
    config.json settings (see `release_config`). `default_steps_cpu` and `default_steps_cuda`
    None: the defaults, at most the model's diffusion steps (a model of fewer cannot sample more).
    """
    from symdiff_cli.engine.metrics_file import METRICS_FILE, parse_metrics_text

    out_dir = Path(out_dir)
    model_cfg = model_cfg.validate()
    if default_steps_cpu is None:
        default_steps_cpu = default_sampling_steps({}, model_cfg, "cpu")
    if default_steps_cuda is None:
        default_steps_cuda = default_sampling_steps({}, model_cfg, "cuda")
    tensors, guide_tensors = _checked_release_weights(out_dir, model_cfg, state_dict, guide,
                                                      (default_steps_cpu, default_steps_cuda))
    config = release_config(model_cfg, histogram, dataset, provenance, default_steps_cpu, default_steps_cuda, guide,
                            sampling=sampling, extra=extra_config)
    histogram_from_json(config["atom_count_histogram"], model_cfg, "the histogram")  # same checks as loading
    metrics = None if metrics_text is None else parse_metrics_text(metrics_text, f"the {METRICS_FILE}")
    if card_text is None:
        card_text = model_card(config, num_parameters=sum(t.numel() for t in tensors.values()), metrics=metrics,
                               name=out_dir.resolve().name)

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
        written = _write_release_files(staging, config, tensors, guide_tensors, card_text, metrics_text,
                                       out_dir if in_place and is_release_directory(out_dir) else None)
        if in_place:
            stale = _stale_guide_files(out_dir, written)
            if metrics_text is None and (out_dir / METRICS_FILE).is_file() and is_release_directory(out_dir):
                stale.append(METRICS_FILE)
            _swap_release_files(staging, out_dir, written, stale)
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

    def sample_config(self, device_type: str) -> SampleConfig:
        """The release's own sampling settings on "cpu" or "cuda" (config.json)."""
        return release_sample_config(self.config, self.cfg, device_type)


def load_release_state_dict(
    spec: str | os.PathLike | None, offline: bool = False
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The model config and checked weights of a release (a name, a directory or a Hub id)."""
    from symdiff_cli.engine.registry import resolve_model

    release_dir = resolve_model(None if spec is None else str(spec), offline=offline)
    config, model_cfg, _ = read_release_config(release_dir)
    return model_cfg, read_weights(release_dir / WEIGHTS_FILE, model_cfg, expected_checksum(config, WEIGHTS_FILE))


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
        model.load_state_dict(read_weights(release_dir / weights_file, cfg, expected_checksum(config, weights_file)),
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
