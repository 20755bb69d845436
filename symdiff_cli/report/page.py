"""The report as one self-contained HTML page, filled in from the templates in templates/.

Jinja2 escapes every value it inserts (file names and SMILES can hold '<' and '&'); images are
data URIs, styles are inline, and the page loads nothing, so it opens the same offline, attached
to an e-mail or years later. Each metric cell carries its exact value in data-* attributes
(data-metric, data-set, data-value, data-count, data-of) so that a script, or a test, can read
the numbers back without parsing the percentages shown.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from symdiff_cli import __version__
from symdiff_cli.chem.metric_rows import MetricRow, format_percent, metric_rows
from symdiff_cli.chem.metrics import EvaluationResult
from symdiff_cli.report.depict import Depiction
from symdiff_cli.report.plots import REFERENCE_COLOUR, Image, colour, unstable_categories
from symdiff_cli.report.runs import EVAL_METRICS, Run, evaluation_figure, run_summary, training_figure
from symdiff_cli.report.stats import FAILURES, SetStats


@dataclass(frozen=True)
class Column:
    """One set of molecules in the tables: an input file, all inputs pooled, or the reference."""

    id: str
    name: str
    colour: str
    stats: SetStats
    rows: list[MetricRow]
    is_reference: bool = False


@dataclass(frozen=True)
class InputSection:
    """An input's depiction grid."""

    name: str
    colour: str
    num_molecules: int
    depictions: list[Depiction]


def result_from_counts(counts: dict[str, Any]) -> EvaluationResult:
    """An EvaluationResult (without per-molecule reports) from `as_dict()["counts"]`."""
    return EvaluationResult(
        num_molecules=counts["molecules"], num_atoms=counts["atoms"], num_stable_atoms=counts["stable_atoms"],
        num_stable_molecules=counts["stable_molecules"], num_valid=counts["valid"],
        num_strict_valid=counts["strict_valid"], num_unique=counts["unique"], num_novel=counts["novel"],
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("symdiff_cli.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name in a template fails loudly, not blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # json.dumps writes the shortest text that reads back as the same float: exact data-value.
    env.filters["exact"] = lambda value: "" if value is None else json.dumps(value)
    env.filters["percent"] = format_percent
    env.filters["thousands"] = lambda value: "n/a" if value is None else f"{value:,}"
    return env


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def molecule_columns(inputs: Sequence[SetStats], pooled: SetStats | None, reference: SetStats | None) -> list[Column]:
    """Table columns: each input, the pooled inputs (when several), the reference last."""
    sets: list[tuple[str, str, SetStats, bool]] = [(f"input-{k}", colour(k), s, False) for k, s in enumerate(inputs)]
    if pooled is not None:
        sets.append(("pooled", "#333333", pooled, False))
    if reference is not None:
        sets.append(("reference", REFERENCE_COLOUR, reference, True))
    with_novelty = any(s.metrics["counts"]["novel"] is not None for _, _, s, _ in sets)
    return [Column(cid, s.name, col, s, metric_rows(result_from_counts(s.metrics["counts"]), with_novelty), ref)
            for cid, col, s, ref in sets]


def failure_rows(columns: Sequence[Column]) -> list[dict[str, Any]]:
    """The failure table: molecule counts by cause plus the composition diagnostics."""
    rows = [{"label": f"{cause} molecules", "key": cause,
             "cells": [(c.stats.failures.get(cause, 0), c.stats.num_molecules) for c in columns]} for cause in FAILURES]
    rows.append({"label": "odd electron count", "key": "odd_electrons",
                 "cells": [(c.stats.odd_electrons, c.stats.num_molecules) for c in columns]})
    rows.append({"label": "with an atom that has no bond", "key": "isolated_atoms",
                 "cells": [(c.stats.with_isolated_atoms, c.stats.num_molecules) for c in columns]})
    return rows


def unstable_rows(columns: Sequence[Column]) -> list[dict[str, Any]]:
    """Unstable atoms by element and bond-order sum: count and share of that element's atoms."""
    rows = []
    for element, valence in unstable_categories([c.stats for c in columns], most=16):
        rows.append({"label": f"{element} with bond-order sum {valence}", "key": f"{element}{valence}",
                     "cells": [(c.stats.unstable.get(element, {}).get(valence, 0), c.stats.elements.get(element, 0))
                               for c in columns]})
    return rows


def render_molecule_report(inputs: Sequence[SetStats], pooled: SetStats | None, reference: SetStats | None,
                           figures: Sequence[Image], sections: Sequence[InputSection], title: str,
                           notes: Sequence[str] = ()) -> str:
    columns = molecule_columns(inputs, pooled, reference)
    template = _environment().get_template("molecules.html")
    return template.render(
        title=title, version=__version__, stamp=_stamp(), columns=columns, metric_labels=columns[0].rows,
        figures=figures, sections=sections, failure_rows=failure_rows(columns),
        unstable_rows=unstable_rows(columns), notes=list(notes),
    )


def render_training_report(runs: Sequence[Run], title: str) -> str:
    figures = [training_figure(runs)]
    if any(run.evals for run in runs):
        figures.append(evaluation_figure(runs))
    template = _environment().get_template("runs.html")
    return template.render(
        title=title, version=__version__, stamp=_stamp(), figures=figures,
        runs=[{**run_summary(run), "colour": colour(k)} for k, run in enumerate(runs)],
        eval_metrics=EVAL_METRICS,
    )


__all__ = ["Column", "InputSection", "molecule_columns", "render_molecule_report", "render_training_report",
           "result_from_counts"]
