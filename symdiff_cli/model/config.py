"""Model configuration: one dataclass, a few presets, overrides from strings or JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from symdiff_cli.errors import SymdiffError

ORIENTATION_KERNELS = ("learned", "haar", "none")

# The orientation kernel's settings were once named after its symbol, gamma, which also names the
# noise schedule's log-SNR. Releases and checkpoints written then still load: from_dict reads
# the old keys under the new names.
RENAMED_MODEL_KEYS = {
    "gamma": "orientation_kernel", "gamma_hidden": "orientation_hidden", "gamma_depth": "orientation_depth",
    "gamma_heads": "orientation_heads", "gamma_mlp_hidden": "orientation_mlp_hidden",
    "gamma_noise_channels": "orientation_noise_channels",
}
# Grids of sampling timesteps (VPDiffusion.sampling_timesteps). A sampler setting, not part of a
# ModelConfig: any grid runs any model. Each name is the power p of t_i = T (1 - i/S)^p; the first
# is the default.
SPACING_POWERS = {"cubic": 3, "quadratic": 2, "uniform": 1}
SPACING_CHOICES = tuple(SPACING_POWERS)
DEFAULT_SPACING = SPACING_CHOICES[0]
# Autoguidance weight (model/guidance.py) that `symdiff convert --guide` writes into a release
# unless told otherwise; chosen on the shipped QM9 model (docs/training.md).
DEFAULT_GUIDANCE_WEIGHT = 5.0


@dataclass
class ModelConfig:
    # Data vocabulary: the one-hot order. Features per atom = len(atom_types) + 1 (charge).
    dataset: str = "qm9"
    atom_types: tuple[str, ...] = ("H", "C", "N", "O", "F")
    max_atoms: int = 29

    # Backbone DiT.
    hidden: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    swiglu: bool = True
    num_rbf: int = 16
    rbf_cutoff: float = 10.0  # Angstrom (normalised positions are x / 1)

    # Orientation kernel (the paper's gamma): learned (SymDiff), haar (DiT-Aug), none (plain DiT).
    orientation_kernel: str = "learned"
    orientation_hidden: int = 32
    orientation_depth: int = 4
    orientation_heads: int = 4
    orientation_mlp_hidden: int = 64
    orientation_noise_channels: int = 3

    # Self-conditioning (Chen et al. 2022, "Analog Bits"): the backbone also reads its own previous
    # estimate of the clean molecule (x0_hat, h0_hat) through a zero-initialised linear added to
    # the token embedding. False (the default, and every release without the key) adds no
    # parameters; True with the new weights at zero computes the same function as without.
    self_condition: bool = False

    # Property conditioning (EDM's conditional generation): the names of the QM9 properties
    # (data/properties.py) the backbone reads, and the mean and spread of each over the
    # training data, which normalise the raw values it is given. A zero-initialised linear adds
    # them to the timestep embedding, so a conditional model grown from an unconditional release
    # starts as exactly its function. Empty (the default, and every release without the key):
    # no parameters, no input.
    conditions: tuple[str, ...] = ()
    condition_mean: tuple[float, ...] = ()
    condition_std: tuple[float, ...] = ()

    # Diffusion: EDM's variance-preserving process (model/diffusion.py).
    timesteps: int = 1000
    noise_schedule: str = "polynomial_2"
    noise_precision: float = 1e-5
    norm_one_hot: float = 4.0
    norm_charge: float = 10.0

    @property
    def num_atom_types(self) -> int:
        return len(self.atom_types)

    @property
    def feature_dim(self) -> int:
        return self.num_atom_types + 1

    def validate(self) -> "ModelConfig":
        for f in dataclasses.fields(self):
            # A release's or a run's config.json is read without types: "hidden": "abc" would
            # otherwise fail deep in torch, or in the arithmetic below with an unrelated message.
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool) or isinstance(default, str):
                wrong = type(value) is not type(default)
            elif isinstance(default, int):
                wrong = isinstance(value, bool) or not isinstance(value, int)
            elif isinstance(default, float):
                wrong = isinstance(value, bool) or not isinstance(value, (int, float))
            else:
                continue
            if wrong:
                raise SymdiffError(f"model.{f.name} must be {type(default).__name__}, not {value!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not value > 0:
                raise SymdiffError(f"model.{f.name} must be positive, not {value}")
        if self.orientation_kernel not in ORIENTATION_KERNELS:
            raise SymdiffError(f"orientation_kernel must be one of {', '.join(ORIENTATION_KERNELS)}, "
                               f"not {self.orientation_kernel!r}")
        if self.hidden % self.heads:
            raise SymdiffError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.orientation_kernel == "learned" and self.orientation_hidden % self.orientation_heads:
            raise SymdiffError(f"orientation_hidden ({self.orientation_hidden}) must be divisible by "
                               f"orientation_heads ({self.orientation_heads})")
        if not (len(self.conditions) == len(self.condition_mean) == len(self.condition_std)):
            raise SymdiffError("conditions, condition_mean and condition_std must have one entry per property")
        if any(not s > 0 for s in self.condition_std):
            raise SymdiffError("condition_std must be positive")
        if self.noise_schedule != "polynomial_2":
            raise SymdiffError(f"unsupported noise schedule {self.noise_schedule!r} (polynomial_2)")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["atom_types"] = list(self.atom_types)
        # Written only when on: a model without it is described (in releases, checkpoints) as
        # before the setting existed, so earlier symdiff versions keep reading its release.
        if not self.self_condition:
            del d["self_condition"]
        if not self.conditions:
            for key in ("conditions", "condition_mean", "condition_std"):
                del d[key]
        else:
            for key in ("conditions", "condition_mean", "condition_std"):
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = with_current_model_keys(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SymdiffError(f"unknown model config field(s): {', '.join(sorted(unknown))}")
        for key in ("atom_types", "conditions"):
            if key in d:
                d[key] = tuple(d[key])
        for key in ("condition_mean", "condition_std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d).validate()


def with_current_model_keys(d: dict[str, Any]) -> dict[str, Any]:
    """A model config dict with renamed keys (RENAMED_MODEL_KEYS) under their current names, in its order."""
    return {RENAMED_MODEL_KEYS.get(key, key): value for key, value in d.items()}


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Trains in seconds: for tests and smoke runs.
    "tiny": dict(hidden=64, depth=3, heads=4, num_rbf=8, orientation_hidden=16, orientation_depth=1,
                 orientation_heads=2, orientation_mlp_hidden=16),
    # The small configuration of the authors' scripts (backbone 128 x 6, orientation kernel 32 x 4).
    "small": dict(hidden=128, depth=6, heads=4, orientation_hidden=32, orientation_depth=4, orientation_heads=4),
    # The published QM9 configuration ("dit_dit_gaussian", about 31M parameters).
    "paper": dict(hidden=384, depth=12, heads=6, orientation_hidden=128, orientation_depth=8, orientation_heads=4,
                  orientation_mlp_hidden=64),
}


def model_config_from_preset(preset: str, **overrides: Any) -> ModelConfig:
    if preset not in MODEL_PRESETS:
        raise SymdiffError(f"unknown preset {preset!r} (choose from {', '.join(MODEL_PRESETS)})")
    values = {**MODEL_PRESETS[preset], **overrides}
    return ModelConfig.from_dict(values)


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' with value parsed as JSON when possible (numbers, booleans, lists), else a string."""
    if "=" not in text:
        raise SymdiffError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def apply_overrides(obj: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of a dataclass with fields replaced, checking names and coercing types."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise SymdiffError(f"unknown setting {key!r} for {type(obj).__name__}")
        current = getattr(obj, key)
        # Nothing is rounded or guessed: depth=2.9 or swiglu=maybe is a ValueError, not 2 or False.
        if isinstance(current, bool):
            if isinstance(value, str):
                words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False,
                         "0": False}
                if value.strip().lower() not in words:
                    raise ValueError(f"{value!r} is not true or false")
                value = words[value.strip().lower()]
        elif isinstance(current, int) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{value!r} is not a whole number")
            value = int(value)
        elif isinstance(current, float):
            value = float(value)
        elif isinstance(current, tuple):
            value = (value,) if isinstance(value, str) else tuple(value)  # "alpha", not ('a', 'l', ...)
        changes[key] = value
    return dataclasses.replace(obj, **changes)


__all__ = [
    "ModelConfig", "MODEL_PRESETS", "ORIENTATION_KERNELS", "RENAMED_MODEL_KEYS", "with_current_model_keys", "model_config_from_preset", "parse_override",
    "apply_overrides",
]
