"""The model card's section on property conditioning: what a conditional release reads, how
to ask it for a value, and its EDM-protocol results (metrics.json `property_mae`, written by
benchmarks/conditional_mae.py):

    "property_mae": [
      {"name": "...", "property": "alpha", "unit": "Bohr^3", "date": "YYYY-MM-DD", "command": "...",
       "num_molecules": 1000, "mae": 2.9, "mae_standard_error": 0.08, "molecule_stability": 48.1,
       "references": {"shuffled": ..., "atom_count": ..., "real_molecules": ...}, "predictor": "..."}
    ]
"""

from __future__ import annotations

from typing import Any

from symdiff_cli.engine.metrics_file import is_number
from symdiff_cli.model.config import with_current_model_keys

# EDM (Hoogeboom et al. 2022), Table 3, in the units of data/properties.py.
EDM_ALPHA = {"shuffled": 9.01, "atom_count": 3.86, "edm": 2.76, "real_molecules": 0.10}


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if is_number(value) else "-"


def conditioning_section(config: dict[str, Any], name: str, metrics: dict[str, Any] | None) -> list[str]:
    """The card's "Property conditioning" section; empty for an unconditional release."""
    model_config = with_current_model_keys(config["model_config"])
    names = model_config.get("conditions") or []
    if not names:
        return []
    section = config.get("conditioning", {})
    means, spreads = model_config.get("condition_mean", []), model_config.get("condition_std", [])
    first = names[0]
    lines = [
        "## Property conditioning", "",
        f"Conditioned on {', '.join(f'`{n}`' for n in names)} (EDM's conditional generation, Hoogeboom et al. 2022, "
        "section 4.2): each requested value, normalised by "
        + "; ".join(f"{n} mean {_number(m, 5)}, s.d. {_number(s, 4)}" for n, m, s in zip(names, means, spreads))
        + ", enters the backbone's conditioning vector beside the timestep through a zero-initialised linear layer. "
        f"Trained on: {section.get('data', 'not recorded')}."
        + (f" Fine-tuned from the release `{config['provenance']['init_from']}`, whose training (and that of any "
           "release it was grown from) is part of this model's history: an unconditional model trained on the whole "
           "train split (both halves) at the start of that chain saw the property predictor's half too, without the "
           "property values." if config.get("provenance", {}).get("init_from") else "")
        + " Drawn values follow the training data's distribution for each molecule's atom count (config.json "
        "`conditioning.quantiles`: 21 quantiles per atom count, interpolated). Every SDF record carries its requested "
        f"value as the tag `symdiff_condition_{first}`.", "",
        "```bash",
        f"symdiff generate --model {name} --condition {first}=80 --n 100 --out mols.sdf   # one value for all",
        f"symdiff generate --model {name} --condition {first} --n 1000 --out mols.sdf     # values drawn with the atom count",
        f"symdiff evaluate mols.sdf --property {first}   # MAE to the requested values (qm9-{first}-predictor)",
        "```", "",
    ]
    results = [r for r in (metrics or {}).get("property_mae", []) if isinstance(r, dict) and is_number(r.get("mae"))]
    if not results:
        return lines
    refs = results[0].get("references", {})
    unit = results[0].get("unit", "")
    lines += [
        f"Results by EDM's protocol ({results[0].get('date', '?')}): the judge is a predictor trained on the first half "
        "of the QM9 train split only, so it never saw the half this model was conditioned on:", "",
        f"| MAE of {results[0].get('property', first)} ({unit}) | here | EDM, Table 3 |", "|---|---|---|",
    ]
    for index, r in enumerate(results):
        edm = EDM_ALPHA["edm"] if first == "alpha" and index == 0 else "-"
        se = f" ± {_number(r['mae_standard_error'], 2)}" if is_number(r.get("mae_standard_error")) else ""
        stability = (f"; molecule stability {_number(r['molecule_stability'], 3)} %"
                     if is_number(r.get("molecule_stability")) else "")
        lines.append(f"| {r.get('name', 'generated')} ({r.get('num_molecules', '?')} molecules{stability}) | "
                     f"{_number(r['mae'])}{se} | {edm} |")
    for key, label in (("shuffled", "predictor vs shuffled values (upper bound)"),
                       ("atom_count", "atom count alone"), ("real_molecules", "predictor on real molecules (lower bound)")):
        lines.append(f"| {label} | {_number(refs.get(key))} | {EDM_ALPHA[key] if first == 'alpha' else '-'} |")
    lines += ["", f"Reproduce it: `{results[0].get('command', '')}`", ""]
    notes = [r["notes"] for r in results if isinstance(r.get("notes"), str)]
    return lines + ([*notes, ""] if notes else [])
