"""What a conditional model is asked for: `--condition alpha=80` (a fixed value) or
`--condition alpha` (values drawn with the atom count from the training data's joint distribution).

A conditional release records, in config.json's `conditioning` section, each property's values
at QUANTILE_LEVELS for every atom count of its training data (data/properties.py
quantile_table). Atom counts are planned as for any model (from the release's histogram);
each batch then draws its values given its atom count from those quantiles, with a random
stream of its own seed, so a batch is reproducible on its own like its molecules.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from symdiff_cli.data.properties import draw_from_quantiles
from symdiff_cli.errors import SymdiffError, UsageError
from symdiff_cli.model.config import ModelConfig

CONDITIONING_KEY = "conditioning"


def conditioning_section(names: Sequence[str], quantiles: dict[str, dict[str, list[float]]], data: str) -> dict[str, Any]:
    """The config.json section of a conditional release."""
    return {"properties": list(names), "data": data, "quantiles": {n: quantiles[n] for n in names}}


def parse_condition_specs(specs: Sequence[str], cfg: ModelConfig, model_name: str) -> dict[str, float | None]:
    """{property: fixed value, or None to draw it} for each of the model's conditions, from
    --condition NAME=VALUE / --condition NAME options; unnamed conditions are drawn."""
    if specs and not cfg.conditions:
        raise UsageError(f"--condition needs a conditional model; {model_name} is unconditional "
                         "(a conditional one is trained with `symdiff train --condition PROPERTY`)")
    by_lower = {name.lower(): name for name in cfg.conditions}
    chosen: dict[str, float | None] = {name: None for name in cfg.conditions}
    named: set[str] = set()
    for spec in specs:
        raw_name, has_value, raw_value = spec.partition("=")
        name = by_lower.get(raw_name.strip().lower())
        if name is None:
            raise UsageError(f"--condition {spec}: {model_name} is conditioned on {', '.join(cfg.conditions)}, "
                             f"not {raw_name.strip()!r}")
        if name in named:
            raise UsageError(f"--condition names {name} twice")
        named.add(name)
        if has_value:
            try:
                value = float(raw_value)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise UsageError(f"--condition {spec}: the value must be a finite number")
            chosen[name] = value
    return chosen


def values_outside_training(specs: Sequence[str], release: Any, model_name: str | None = None) -> list[str]:
    """A line for each fixed value of `specs` (--condition NAME=VALUE) outside the values the
    ReleasedModel `release` was trained on (the extremes of its quantile tables over all atom
    counts): far from them the network extrapolates (alpha=300 gave no stable atom)."""
    from symdiff_cli.data.properties import PROPERTIES

    if not release.cfg.conditions or not specs:
        return []
    lines = []
    chosen = parse_condition_specs(specs, release.cfg, model_name or release.path.name)
    for name, value in chosen.items():
        if value is None:
            continue
        table = _checked_quantiles(release.config, name)
        low, high = min(q[0] for q in table.values()), max(q[-1] for q in table.values())
        if not low <= value <= high:
            unit = f" {PROPERTIES[name].unit}" if name in PROPERTIES else ""
            lines.append(f"{name}={value:g} lies outside the values the model was trained on ({low:g} to "
                         f"{high:g}{unit}): expect few stable or valid molecules")
    return lines


def _checked_quantiles(config: dict[str, Any], name: str) -> dict[int, list[float]]:
    section = config.get(CONDITIONING_KEY)
    table = section.get("quantiles", {}).get(name) if isinstance(section, dict) else None
    if not isinstance(table, dict) or not table:
        raise SymdiffError(f"the release config has no conditioning.quantiles for {name!r}: "
                           f"give a value with --condition {name}=VALUE")
    try:
        return {int(n): [float(v) for v in row] for n, row in table.items()}
    except (TypeError, ValueError):
        raise SymdiffError(f"the release config's conditioning.quantiles for {name!r} are not numbers") from None


class ConditionDraws:
    """The values of each batch: fixed ones, and the others drawn given the batch's atom count."""

    def __init__(self, cfg: ModelConfig, chosen: dict[str, float | None], quantiles: dict[str, dict[int, list[float]]]):
        self.names = tuple(cfg.conditions)
        self.chosen = chosen
        self.quantiles = quantiles

    @classmethod
    def for_release(cls, cfg: ModelConfig, config: dict[str, Any], chosen: dict[str, float | None]) -> "ConditionDraws":
        quantiles = {name: _checked_quantiles(config, name) for name, value in chosen.items() if value is None}
        return cls(cfg, chosen, quantiles)

    def __call__(self, num_atoms: int, batch_size: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, 0xC0])  # not the stream of the batch's noise
        columns = []
        for name in self.names:
            fixed = self.chosen[name]
            if fixed is not None:
                columns.append(np.full(batch_size, fixed))
                continue
            table = self.quantiles[name]
            # An atom count the training data lacks (--num-atoms): the nearest one it has.
            n = min(table, key=lambda k: (abs(k - num_atoms), k))
            columns.append(draw_from_quantiles(table[n], batch_size, rng))
        return np.stack(columns, axis=1)


__all__ = ["CONDITIONING_KEY", "ConditionDraws", "conditioning_section", "parse_condition_specs"]
