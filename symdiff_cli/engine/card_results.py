"""The results section of a model card, and how the card writes numbers and metric names."""

from __future__ import annotations

import json
import statistics
from typing import Any


# The benchmark metrics (symdiff evaluate) in the order cards list them, with their labels.
METRIC_LABELS = {
    "atom_stability": "atom stability",
    "molecule_stability": "molecule stability",
    "validity": "validity (largest fragment sanitises)",
    "strict_validity": "strict validity (one fragment)",
    "uniqueness": "uniqueness (of valid)",
    "valid_and_unique": "valid and unique",
    "novelty": "novelty (of unique valid, vs the training set)",
    "posebusters_pass_all": "PoseBusters pass-all (every check of its \"mol\" configuration)",
}

def number_text(value: Any) -> str:
    """A number as people write it: thousands separated, no trailing zeros after the point."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return repr(float(value))


def seeds_text(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def pooled_percent(metric: dict[str, Any]) -> float | None:
    """A metric's value over all seeds, in percent: stated, from counts, or the per-seed mean."""
    if "value" in metric:
        return float(metric["value"])
    if "count" in metric:
        return 100.0 * metric["count"] / metric["of"]
    if "per_seed" in metric:
        return statistics.fmean(metric["per_seed"])
    return None


def pooled_text(metric: dict[str, Any]) -> str:
    if "count" in metric:
        share = f"{number_text(metric['value'])} %" if "value" in metric else f"{100.0 * metric['count'] / metric['of']:.2f} %"
        return f"{share} ({number_text(metric['count'])} / {number_text(metric['of'])})"
    if "value" in metric:
        return f"{number_text(metric['value'])} %"
    return "-"


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name.replace("_", " "))


def short_metric_label(name: str) -> str:
    return metric_label(name).split(" (")[0]


def pooled_short_text(metric: dict[str, Any]) -> str:
    if "value" in metric:
        return f"{number_text(metric['value'])} %"
    return f"{pooled_percent(metric):.2f} %"


def sampler_text(sampler: dict[str, Any]) -> str:
    parts = []
    for key, value in sampler.items():
        if isinstance(value, list):
            value = " + ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        parts.append(f"{key.replace('_', ' ')} {number_text(value)}")
    return ", ".join(parts)


def results_section(measurements: list[dict[str, Any]]) -> list[str]:
    lines = ["## Results", ""]
    if not measurements:
        return lines + [
            "Not measured yet: `symdiff generate --model <this release> --n 1000 --seed S --out mols.sdf`, then",
            "`symdiff evaluate mols.sdf` gives the QM9 benchmark metrics (atom and molecule stability, validity,",
            "uniqueness, novelty). `python benchmarks/seed_metrics.py --model REL --name NAME --record REL` (in",
            "the symdiff repository) measures seeds and records them in `metrics.json` with this card re-rendered;",
            "an entry written by hand (its format: symdiff_cli/engine/metrics_file.py) shows after",
            "`symdiff convert REL REL --card-only`.",
            "",
        ]
    primary = measurements[0]
    seeds = primary["seeds"]
    what = f"sampling {primary['model']}" if "model" in primary else "this release"
    lines += [
        (f"{primary['name'].rstrip('.')}: " if primary.get("name") else "")
        + f"{what}, " + (f"seed {seeds[0]}, {number_text(primary['n_per_seed'])} molecules" if len(seeds) == 1 else
                         f"{len(seeds)} seeds ({seeds_text(seeds)}) of {number_text(primary['n_per_seed'])} molecules each")
        + f", measured {primary['date']}; evaluated by the QM9 benchmark rules (EDM's bond tables and margins).",
    ]
    if primary.get("sampler"):
        lines.append(f"Sampler: {sampler_text(primary['sampler'])}.")
    lines += [
        "",
        "| metric | mean ± s.d. over seeds | min - max | pooled |",
        "|---|---|---|---|",
    ]
    for key, metric in primary["metrics"].items():
        per_seed = metric.get("per_seed")
        if per_seed and len(per_seed) > 1:
            spread = f"{statistics.fmean(per_seed):.2f} ± {statistics.stdev(per_seed):.2f} %"
            extent = f"{number_text(min(per_seed))} - {number_text(max(per_seed))} %"
        elif per_seed:
            spread, extent = f"{number_text(per_seed[0])} %", "one seed"
        else:
            spread, extent = "-", "one seed" if len(seeds) == 1 else "-"
        lines.append(f"| {metric_label(key)} | {spread} | {extent} | {pooled_text(metric)} |")
    lines += ["", "Reproduce it" + (" (S = each seed):" if "S" in primary["command"].split() else ":"), "",
              "```bash", primary["command"], "```"]
    if primary.get("seconds_per_1000") is not None:
        lines += ["", f"Sampling time: {number_text(primary['seconds_per_1000'])} s per 1,000 molecules"
                  + (f" ({primary['timing']})" if primary.get("timing") else "") + "."]
    if primary.get("notes"):
        lines += ["", primary["notes"]]
    if len(measurements) > 1:
        lines += ["", "Also in `metrics.json`:", ""]
        for entry in measurements[1:]:
            shown = ", ".join(f"{short_metric_label(key)} {pooled_short_text(m)}" for key, m in entry["metrics"].items())
            seeds = entry["seeds"]
            lines.append(f"- {entry.get('name', 'Measurement').rstrip('.')}; {entry['date']}, "
                         f"{'seed' if len(seeds) == 1 else 'seeds'} {seeds_text(seeds)} of "
                         f"{number_text(entry['n_per_seed'])} molecules: {shown}"
                         + (f"; {number_text(entry['seconds_per_1000'])} s per 1,000 molecules"
                            if entry.get("seconds_per_1000") is not None else ""))
    return lines + [""]
