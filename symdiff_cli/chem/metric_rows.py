"""The rows of the metrics table, in the order and wording `symdiff evaluate` prints them.

One list serves the terminal table and the HTML report, so the two cannot drift apart; each
row carries the key of its fraction in `EvaluationResult.as_dict()` so that a reader of the
report can match a cell to `evaluate --json`.
"""

from __future__ import annotations

from dataclasses import dataclass

from symdiff_cli.chem.metrics import EvaluationResult


@dataclass(frozen=True)
class MetricRow:
    """One metric: JSON key, label, fraction (None when not computed) and the count behind it."""

    key: str
    label: str
    value: float | None
    count: int | None
    of: int

    @property
    def percent(self) -> str:
        # A fraction of nothing (uniqueness when no molecule is valid) is undefined, not 0 %.
        return format_percent(None if self.count is not None and self.of == 0 else self.value)

    @property
    def count_text(self) -> str:
        return "n/a" if self.count is None else f"{self.count} / {self.of}"


def format_percent(value: float | None) -> str:
    """A fraction as evaluate prints it: two decimals and a percent sign, or n/a."""
    return "n/a" if value is None else f"{100 * value:.2f} %"


def metric_rows(result: EvaluationResult, with_novelty: bool | None = None) -> list[MetricRow]:
    """The table rows of `result`; novelty only when it was computed (or `with_novelty` says so,
    which keeps columns of several results aligned when only some have it)."""
    r = result
    rows = [
        MetricRow("atom_stability", "Atom stability", r.atom_stability, r.num_stable_atoms, r.num_atoms),
        MetricRow("molecule_stability", "Molecule stability", r.molecule_stability, r.num_stable_molecules,
                  r.num_molecules),
        MetricRow("validity", "Validity", r.validity, r.num_valid, r.num_molecules),
        MetricRow("strict_validity", "Strict validity (one fragment)", r.strict_validity, r.num_strict_valid,
                  r.num_molecules),
        MetricRow("uniqueness", "Uniqueness", r.uniqueness, r.num_unique, r.num_valid),
        MetricRow("valid_and_unique", "Valid and unique", r.valid_and_unique, r.num_unique, r.num_molecules),
    ]
    if with_novelty or (with_novelty is None and r.novelty is not None):
        rows.append(MetricRow("novelty", "Novelty", r.novelty, r.num_novel, r.num_unique))
    return rows


__all__ = ["MetricRow", "format_percent", "metric_rows"]
