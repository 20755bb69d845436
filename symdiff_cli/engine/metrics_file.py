"""A release's measured results: metrics.json, read and checked.

metrics.json (format "symdiff-metrics", version 1) holds what was measured, never how long it
took to get there:

    {
      "format": "symdiff-metrics", "format_version": 1,
      "description": "optional paragraph for the card's summary",
      "limits": ["optional release-specific limits, one bullet each", ...],
      "measurements": [                       # the first is the card's results table
        {
          "name": "default sampler",          # optional
          "date": "2026-12-02",               # when measured (YYYY-MM-DD)
          "command": "symdiff generate ... --seed S ...",   # reproduces it, S = each seed
          "model": "...",                     # optional: what was sampled, when not this release
                                              # with its own defaults (e.g. another model guided by it)
          "sampler": {"steps": 100, "spacing": "cubic", ...},   # sampler settings
          "seeds": [0, 1, 2], "n_per_seed": 1000,
          "metrics": {
            "molecule_stability": {           # percentages; any of:
              "per_seed": [53.2, 52.1, 53.6], # one value per seed, in the order of "seeds"
              "count": 1589, "of": 3000,      # pooled over all seeds
              "value": 52.97                  # pooled, as a percentage
            }, ...
          },
          "seconds_per_1000": 153.6,          # optional, with "timing" saying where
          "notes": "..."                      # optional
        }, ...
      ]
    }

Unknown keys are kept: the release format carries the file over unchanged, byte for byte,
when a release is written again (`symdiff convert REL OUT`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from symdiff_cli.errors import SymdiffError

METRICS_FILE = "metrics.json"
METRICS_FORMAT = "symdiff-metrics"
METRICS_FORMAT_VERSION = 1
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_metrics(raw: Any, source: str) -> dict[str, Any]:
    """Check a loaded metrics.json; returns it unchanged. Errors are one line naming the field."""
    if not isinstance(raw, dict):
        raise SymdiffError(f"{source}: expected a JSON object")
    if raw.get("format") != METRICS_FORMAT:
        raise SymdiffError(f"{source} is not a symdiff metrics file (its 'format' is not {METRICS_FORMAT!r})")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= METRICS_FORMAT_VERSION:
        raise SymdiffError(f"{source}: format_version must be an integer in 1..{METRICS_FORMAT_VERSION}")
    if "description" in raw and not isinstance(raw["description"], str):
        raise SymdiffError(f"{source}: description must be a string")
    if "limits" in raw and (not isinstance(raw["limits"], list) or not all(isinstance(x, str) for x in raw["limits"])):
        raise SymdiffError(f"{source}: limits must be a list of strings")
    measurements = raw.get("measurements")
    if not isinstance(measurements, list) or not measurements:
        raise SymdiffError(f"{source}: measurements must be a non-empty list")
    for index, entry in enumerate(measurements):
        _check_measurement(entry, f"{source}: measurements[{index}]")
    return raw


def _check_measurement(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise SymdiffError(f"{where} must be an object")
    for key in ("command", "date"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise SymdiffError(f"{where}.{key} must be a non-empty string")
    if not _DATE.fullmatch(entry["date"]):
        raise SymdiffError(f"{where}.date must be a date written YYYY-MM-DD, not {entry['date']!r}")
    for key in ("name", "model", "notes", "timing"):
        if key in entry and not isinstance(entry[key], str):
            raise SymdiffError(f"{where}.{key} must be a string")
    if not isinstance(entry.get("sampler", {}), dict):
        raise SymdiffError(f"{where}.sampler must be an object")
    seeds = entry.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(_is_count(s) for s in seeds) or len(set(seeds)) != len(seeds):
        raise SymdiffError(f"{where}.seeds must be a non-empty list of distinct whole numbers >= 0")
    if not _is_count(entry.get("n_per_seed")) or entry["n_per_seed"] < 1:
        raise SymdiffError(f"{where}.n_per_seed must be a whole number >= 1")
    if "seconds_per_1000" in entry and (not is_number(entry["seconds_per_1000"]) or entry["seconds_per_1000"] <= 0):
        raise SymdiffError(f"{where}.seconds_per_1000 must be a positive number")
    metrics = entry.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise SymdiffError(f"{where}.metrics must be a non-empty object")
    for name, metric in metrics.items():
        _check_metric(metric, len(seeds), f"{where}.metrics.{name}")


def _check_metric(metric: Any, num_seeds: int, where: str) -> None:
    if not isinstance(metric, dict) or not any(key in metric for key in ("per_seed", "count", "value")):
        raise SymdiffError(f"{where} must be an object with per_seed, count and of, or value")
    if "per_seed" in metric:
        per_seed = metric["per_seed"]
        if not isinstance(per_seed, list) or len(per_seed) != num_seeds or not all(is_number(v) for v in per_seed):
            raise SymdiffError(f"{where}.per_seed must list one number per seed ({num_seeds})")
    if ("count" in metric) != ("of" in metric):
        raise SymdiffError(f"{where}: count and of go together")
    if "count" in metric and not (_is_count(metric["count"]) and _is_count(metric["of"])
                                  and 0 <= metric["count"] <= metric["of"] > 0):
        raise SymdiffError(f"{where}: count and of must be whole numbers with 0 <= count <= of, of >= 1")
    if "value" in metric and not is_number(metric["value"]):
        raise SymdiffError(f"{where}.value must be a number")


def read_metrics_text(release_dir: Path) -> str | None:
    """The text of a release's metrics.json after checking it, or None when it has none."""
    path = Path(release_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SymdiffError(f"cannot read {path}: {err}") from None
    parse_metrics_text(text, str(path))
    return text


def parse_metrics_text(text: str, source: str) -> dict[str, Any]:
    """A metrics.json's text, parsed and checked."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise SymdiffError(f"{source} is not valid JSON (line {err.lineno}: {err.msg})") from None
    return check_metrics(raw, source)


# --------------------------------------------------------------------------------------
# Formatting helpers
