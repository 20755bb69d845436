"""The QM9 column of the report: the report's statistics of the QM9 test split, cached.

The test split is what generated molecules are compared with in the literature (EDM and
after); its statistics take some seconds to gather, so they are kept as JSON next to the QM9
cache (data/qm9.py) and rebuilt only when the statistics or the QM9 cache change version.
Novelty needs the training SMILES, which the user may have turned off (--no-novelty): the
cache keeps the split's distinct SMILES instead of a novelty count, and the count is taken
against whatever reference the report is given.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from symdiff_cli.chem.metrics import evaluate_molecule, summarise
from symdiff_cli.data.qm9 import CACHE_VERSION, NUM_TEST, cache_dir, qm9_split
from symdiff_cli.io.atomic import atomic_output
from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.report.stats import STATS_VERSION, SetStats, collect_stats

REFERENCE_NAME = "QM9 test"


@dataclass
class Reference:
    """Statistics of a reference set and its distinct valid SMILES (for novelty on demand)."""

    stats: SetStats
    unique_smiles: list[str]

    def with_novelty(self, train_smiles: frozenset[str] | set[str] | None) -> SetStats:
        """The statistics with novelty counted against `train_smiles` (None: no novelty)."""
        metrics = json.loads(json.dumps(self.stats.metrics))  # a deep copy
        unique = len(self.unique_smiles)
        novel = None if train_smiles is None else sum(s not in train_smiles for s in self.unique_smiles)
        metrics["counts"]["novel"] = novel
        metrics["fractions"]["novelty"] = None if novel is None else (novel / unique if unique else 0.0)
        return SetStats(**{**self.stats.__dict__, "metrics": metrics})

    def to_json(self) -> dict:
        return {"stats": self.stats.to_json(), "unique_smiles": self.unique_smiles}

    @classmethod
    def from_json(cls, raw: dict) -> "Reference":
        return cls(SetStats.from_json(raw["stats"]), list(raw["unique_smiles"]))


def build_reference(name: str, molecules: list[Molecule], advance: Callable[[int], None] | None = None) -> Reference:
    """Evaluate and gather the statistics of a set of molecules; `advance(1)` twice per molecule
    (once evaluated, once gathered)."""
    reports = []
    for mol in molecules:
        reports.append(evaluate_molecule(mol))
        if advance is not None:
            advance(1)
    result = summarise(reports)
    stats = collect_stats(name, molecules, reports, result, advance)
    unique = sorted({r.smiles for r in reports if r.valid and r.smiles})
    return Reference(stats, unique)


def reference_cache_path() -> Path:
    return cache_dir() / f"qm9_v{CACHE_VERSION}_report_test_v{STATS_VERSION}.json"


def qm9_reference_steps() -> int:
    """How many times building the QM9 reference calls `advance` (for a progress bar's total)."""
    return 2 * NUM_TEST


def cached_qm9_reference() -> Reference | None:
    """The cached QM9 test-split reference, or None when there is none (or it is unreadable)."""
    path = reference_cache_path()
    if not path.is_file():
        return None
    try:
        reference = Reference.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged or foreign cache is rebuilt
    return reference if reference.stats.version == STATS_VERSION else None


def qm9_reference(advance: Callable[[int], None] | None = None) -> Reference:
    """The QM9 test split's reference statistics, from the cache or built (and cached) now."""
    cached = cached_qm9_reference()
    if cached is not None:
        return cached
    reference = build_reference(REFERENCE_NAME, qm9_split("test").to_molecules(), advance)
    path = reference_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, "w") as handle:
            json.dump(reference.to_json(), handle)
    except OSError as err:
        # A read-only cache only costs rebuilding next time; the report can still be written.
        sys.stderr.write(f"Warning: could not write the report's QM9 reference cache {path}: {err}\n")
    return reference


__all__ = ["REFERENCE_NAME", "Reference", "build_reference", "cached_qm9_reference", "qm9_reference",
           "qm9_reference_steps", "reference_cache_path"]
