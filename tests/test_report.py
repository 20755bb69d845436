"""`symdiff evaluate --report`: the HTML report of molecule files and of training runs.

The command runs as the installed console script against a stand-in QM9 cache (report_helpers);
the page is read back with html.parser. tests/test_report_browser.py opens it in chromium.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from report_helpers import (XYZ_BROKEN, XYZ_GOOD, assert_one_line_error, make_cache, parse_report, percent_text,
                            run_symdiff, write_run)
from symdiff_cli.chem.metrics import evaluate_molecules
from symdiff_cli.commands.evaluate_report import input_slices
from symdiff_cli.report.reference import Reference, build_reference
from symdiff_cli.report.stats import BOND_TYPES, DISTANCE_EDGES, SetStats, collect_stats, merge_stats


@pytest.fixture(scope="module")
def cache(tmp_path_factory, small_packed) -> Path:
    return make_cache(tmp_path_factory.mktemp("cache"), small_packed)


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    good, broken = tmp_path / "good.xyz", tmp_path / "broken.xyz"
    good.write_text(XYZ_GOOD)
    broken.write_text(XYZ_BROKEN)
    return good, broken


def assert_self_contained(page) -> None:
    assert page.external == []
    assert page.images and all(src.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,"))
                               for src in page.images)


def assert_column_matches_json(page, column: str, payload: dict) -> None:
    """Every metric cell of `column` holds exactly the fraction and count of evaluate --json."""
    fractions, counts = payload["fractions"], payload["counts"]
    count_key = {"atom_stability": "stable_atoms", "molecule_stability": "stable_molecules", "validity": "valid",
                 "strict_validity": "strict_valid", "uniqueness": "unique", "valid_and_unique": "unique",
                 "novelty": "novel"}
    cells = {metric: cell for (set_id, metric), cell in page.metrics.items() if set_id == column}
    assert set(cells) == set(fractions)
    for metric, cell in cells.items():
        assert float(cell["data-value"]) == fractions[metric], metric
        assert cell["text"] == percent_text(fractions[metric])
        assert int(cell["data-count"]) == counts[count_key[metric]]


def test_collect_stats_adds_up(small_packed):
    mols = small_packed.to_molecules()
    result = evaluate_molecules(mols)
    advanced = []
    stats = collect_stats("small", mols, result.reports, result, advanced.append)
    assert len(advanced) == len(mols)
    assert sum(stats.elements.values()) == result.num_atoms
    assert sum(stats.atom_counts.values()) == len(mols) == sum(stats.failures.values())
    assert set(stats.bond_hist) == set(BOND_TYPES)
    assert all(len(h) == len(DISTANCE_EDGES) - 1 for h in stats.bond_hist.values())
    # conftest's set holds one cyclopropane, one cyclobutane and one epoxide.
    assert stats.ring_sizes == {3: 2, 4: 1}
    # Pairs, not only bonds: the C-H bonds of these embedded molecules lie inside the 1.19 A
    # single-bond threshold, and the next C-H pairs are the 1-3 distances of the small rings.
    centres = (DISTANCE_EDGES[:-1] + DISTANCE_EDGES[1:]) / 2
    present = centres[np.asarray(stats.bond_hist["C-H"]) > 0]
    assert present[present < 1.19].size and not np.any((present > 1.19) & (present < 1.8))
    again = SetStats.from_json(json.loads(json.dumps(stats.to_json())))
    assert again == stats
    merged = merge_stats("both", [stats, stats], stats.metrics)
    assert merged.elements == {k: 2 * v for k, v in stats.elements.items()}


def test_reference_novelty_on_demand(small_packed):
    reference = build_reference("ref", small_packed.to_molecules()[:6])
    restored = Reference.from_json(json.loads(json.dumps(reference.to_json())))
    assert restored.stats == reference.stats
    plain = restored.with_novelty(None)
    assert plain.metrics["fractions"]["novelty"] is None
    counted = restored.with_novelty({reference.unique_smiles[0]})
    assert counted.metrics["counts"]["novel"] == len(reference.unique_smiles) - 1
    assert restored.stats.metrics["counts"]["novel"] is None  # the cached statistics are left alone


def test_input_slices_name_each_file():
    origins = [("a.sdf", 0), ("a.sdf", 1), ("b.sdf", 0), ("a.sdf", 0)]
    assert input_slices(origins) == [("a.sdf (1)", 0, 2), ("b.sdf", 2, 3), ("a.sdf (2)", 3, 4)]


def test_report_of_one_file_matches_json(cache, inputs, tmp_path):
    good, _ = inputs
    report, payload = tmp_path / "report.html", tmp_path / "metrics.json"
    result = run_symdiff(cache, "evaluate", str(good), "--report", str(report), "--json", str(payload))
    assert result.returncode == 0, result.stderr
    assert "Report written to" in result.stdout
    page = parse_report(report)
    assert_self_contained(page)
    assert page.headers == ["input-0", "reference"]
    assert_column_matches_json(page, "input-0", json.loads(payload.read_text()))
    assert len(page.molecules) == 3 and all(m["data-stable"] == "true" for m in page.molecules)
    # The folder holds the report and the JSON, no temporary file left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.xyz", "good.xyz", "metrics.json", "report.html"]


@pytest.mark.slow
def test_report_of_two_files_has_a_column_each(cache, inputs, tmp_path):
    good, broken = inputs
    report = tmp_path / "two.html"
    result = run_symdiff(cache, "evaluate", str(good), str(broken), "--report", str(report), "--report-molecules",
                         "1", "--json", "-")
    assert result.returncode == 0, result.stderr
    page = parse_report(report)
    assert page.headers == ["input-0", "input-1", "pooled", "reference"]
    assert_column_matches_json(page, "pooled", json.loads(result.stdout))
    for column, path in (("input-0", good), ("input-1", broken)):
        alone = run_symdiff(cache, "evaluate", str(path), "--json", "-")
        assert_column_matches_json(page, column, json.loads(alone.stdout))
    assert len(page.molecules) == 2  # --report-molecules 1 for each file
    html = report.read_text()
    assert "geometry molecules" in html and "C with bond-order sum 0" in html


@pytest.mark.slow
def test_report_of_training_runs(cache, tmp_path):
    first, second = write_run(tmp_path / "runs" / "small"), write_run(tmp_path / "other" / "small", 60, (30, 60), 3.0)
    report = tmp_path / "runs.html"
    result = run_symdiff(cache, "evaluate", str(first), str(second), "--report", str(report))
    assert result.returncode == 0, result.stderr
    assert "2 training runs" in result.stdout and "40" in result.stdout
    html = report.read_text()
    page = parse_report(report)
    assert_self_contained(page)
    assert len(page.images) == 2  # training curves and periodic evaluation
    # Two runs called "small": each is named by its path.
    assert f">{first}<" in html.replace("</span>", "") and str(second) in html
    assert 'data-field="molecule_stability" data-value="0.4"' in html
    assert 'data-field="loss" data-value="0.05"' in html  # 2.0 / 40, the last record


@pytest.mark.parametrize("args", [
    ["--report", "-"],
    ["--report", "{tmp}"],
    ["--report", "{tmp}/missing/report.html"],
    ["--report", "{good}"],
    ["{tmp}", "--report", "{tmp}/r.html"],
    ["{run}", "--report", "{tmp}/r.html", "--json", "{tmp}/j.json"],
    ["--report-molecules", "-1", "--report", "{tmp}/r.html"],
])
def test_report_usage_errors_are_one_line(cache, inputs, tmp_path, args):
    good, _ = inputs
    run = write_run(tmp_path / "run")
    args = [a.format(tmp=tmp_path, good=good, run=run) for a in args]
    files = [] if str(run) in args or str(tmp_path) == args[0] else [str(good)]
    result = run_symdiff(cache, "evaluate", *files, *args)
    if "--report-molecules" in args:  # Click's own message for a value out of range
        assert result.returncode == 2 and "Traceback" not in result.stderr
    else:
        assert_one_line_error(result)
    assert not (tmp_path / "r.html").exists()


def test_unreadable_run_log_is_one_line(cache, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\nnot json\n')
    assert_one_line_error(run_symdiff(cache, "evaluate", str(run), "--report", str(tmp_path / "r.html")))
    assert not (tmp_path / "r.html").exists()


def test_failed_write_keeps_the_old_report(cache, inputs, tmp_path, monkeypatch):
    """The page is written atomically: a failure while writing leaves the old file, no temp file."""
    from typer.testing import CliRunner

    from symdiff_cli.cli import app
    from symdiff_cli.errors import SymdiffError

    good, _ = inputs
    report = tmp_path / "report.html"
    report.write_text("old report")
    monkeypatch.setenv("SYMDIFF_CACHE", str(cache))

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    result = CliRunner().invoke(app, ["evaluate", str(good), "--report", str(report)])
    assert isinstance(result.exception, SymdiffError) and "No space left" in str(result.exception)
    assert report.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.xyz", "good.xyz", "report.html"]


@pytest.mark.slow
def test_qm9_reference_on_a_subsample(tmp_path, monkeypatch):
    """The real QM9 test split, 300 molecules of it: the numbers the report shows beside the inputs."""
    from symdiff_cli.data.qm9 import qm9_split

    test = qm9_split("test")
    reference = build_reference("QM9 test", test.subset(np.arange(300)).to_molecules())
    stats = reference.stats
    assert stats.num_molecules == 300
    assert stats.metrics["fractions"]["atom_stability"] > 0.98
    assert stats.metrics["fractions"]["molecule_stability"] > 0.85
    assert set(stats.elements) <= {"H", "C", "N", "O", "F"}
    assert max(stats.atom_counts) <= 29
    # QM9's C-H bonds sit near 1.09 A, well inside the 1.19 A single-bond threshold (the C-H
    # pairs further out are 1-3 distances across small rings).
    centres = (DISTANCE_EDGES[:-1] + DISTANCE_EDGES[1:]) / 2
    ch = np.where(centres < 1.19, np.asarray(stats.bond_hist["C-H"], float), 0.0)
    assert abs(float((centres * ch).sum() / ch.sum()) - 1.09) < 0.01


@pytest.mark.slow
def test_report_of_a_real_training_run(cache, tmp_path, small_npz):
    """The page of a run `symdiff train` wrote (not a hand-made log): what it logged is what it shows."""
    from symdiff_cli.engine.metrics_log import read_metrics

    run = tmp_path / "run"
    trained = run_symdiff(cache, "train", "--out", str(run), "--data", str(small_npz), "--preset", "tiny",
                          "--max-steps", "6", "--batch-size", "8", "--log-every", "2", "--eval-every", "3",
                          "--eval-samples", "4", "--eval-steps", "5", "--threads", "1", "--quiet")
    assert trained.returncode == 0, trained.stderr
    report = tmp_path / "run.html"
    result = run_symdiff(cache, "evaluate", str(run), "--report", str(report))
    assert result.returncode == 0, result.stderr
    page = parse_report(report)
    assert_self_contained(page)
    assert len(page.images) == 2
    last_eval = [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "eval"][-1]
    assert f'data-field="molecule_stability" data-value="{json.dumps(last_eval["molecule_stability"])}"' in report.read_text()


def test_page_escapes_names_and_smiles(small_packed):
    """File names and SMILES reach the page as text, never as markup."""
    from symdiff_cli.report.depict import Depiction
    from symdiff_cli.report.page import InputSection, render_molecule_report

    mols = small_packed.to_molecules()[:3]
    result = evaluate_molecules(mols)
    stats = collect_stats("<b>evil&name</b>.sdf", mols, result.reports, result)
    section = InputSection(stats.name, "#000", 3, [Depiction(0, 5, True, True, "<script>x</script>", "data:,")])
    html = render_molecule_report([stats], None, None, [], [section], "title <i>")
    assert "<b>evil" not in html and "&lt;b&gt;evil&amp;name&lt;/b&gt;.sdf" in html
    assert "<script>" not in html and "title &lt;i&gt;" in html
