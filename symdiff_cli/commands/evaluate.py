"""`symdiff evaluate`: the QM9 benchmark metrics of molecule files or of a dataset split."""

from __future__ import annotations

import csv
import io
import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from symdiff_cli.commands.evaluate_report import DEFAULT_DEPICTIONS
from symdiff_cli.commands.progress import progress_bar
from symdiff_cli.errors import SymdiffError, UsageError
from symdiff_cli.io.atomic import atomic_output


class DatasetChoice(str, Enum):
    qm9 = "qm9"
    geom = "geom"


class SplitChoice(str, Enum):
    train = "train"
    valid = "valid"
    test = "test"
    all = "all"


PER_MOLECULE_COLUMNS = (
    "index", "source", "num_atoms", "stable_atoms", "stable", "valid", "strict_valid", "smiles",
    "failure", "odd_electrons", "hydrogen_balance", "isolated_atoms",
)


def _write_text_atomic(path: str, text: str) -> None:
    """Write a file via a temp file in its folder and os.replace: never a half-written file."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise SymdiffError(f"cannot write {path}: folder {folder} does not exist")
    try:
        with atomic_output(path, "w") as handle:
            handle.write(text)
    except OSError as err:
        raise SymdiffError(f"cannot write {path}: {err.strerror or err}") from None


def _read_inputs(files: list[str], strict: bool, fmt: Optional[str] = None):
    """Molecules of every file, (source, record index in source) per molecule, and the number of
    unreadable records skipped; warns on skips."""
    from symdiff_cli.io.paths import same_file
    from symdiff_cli.io.reader import read_molecule_records

    if files.count("-") > 1:
        raise UsageError("standard input ('-') can be given only once")
    molecules, origins, skipped = [], [], 0
    for number, path in enumerate(files):
        if any(same_file(path, earlier) for earlier in files[:number]):  # pooled twice, it skews every rate
            typer.echo(f"Warning: {path} is given more than once: its molecules count once", err=True)
            continue
        mols, positions, unreadable = read_molecule_records(path, fmt=fmt, strict=strict)
        skipped += unreadable
        source = "stdin" if path == "-" else path
        if unreadable:
            typer.echo(f"Warning: {unreadable} of {len(mols) + unreadable} records in {source} unreadable (skipped; "
                       "--strict makes this an error)", err=True)
        molecules.extend(mols)
        origins.extend((source, k) for k in positions)
    return molecules, origins, skipped


def _warn_foreign_elements(molecules, dataset: str) -> None:
    """Tell the user when molecules hold elements outside the dataset's atom types."""
    import numpy as np

    from symdiff_cli.chem.elements import dataset_info, element_symbol

    info = dataset_info(dataset)
    known = np.array(info.atomic_numbers)
    foreign: set[int] = set()
    count = 0
    for mol in molecules:
        outside = ~np.isin(mol.atomic_numbers, known)
        if outside.any():
            count += 1
            foreign.update(int(z) for z in mol.atomic_numbers[outside])
    if count:
        symbols = " ".join(element_symbol(z) if 1 <= z <= 83 else str(z) for z in sorted(foreign))
        typer.echo(
            f"Warning: {count} molecules contain elements outside the {info.name} atom types ({symbols})",
            err=True,
        )


def _results_table(result, title: str):
    from rich.table import Table

    from symdiff_cli.chem.metric_rows import metric_rows

    table = Table(title=title)
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_column("Count", justify="right")
    for row in metric_rows(result):
        table.add_row(row.label, row.percent, row.count_text)
    return table


def _per_molecule_csv(result, origins, energies: Optional[list] = None,
                      property_values: Optional[list] = None) -> str:
    from symdiff_cli.commands.energy_report import ENERGY_COLUMNS, energy_cells
    from symdiff_cli.commands.property_report import PROPERTY_COLUMNS

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_MOLECULE_COLUMNS + (ENERGY_COLUMNS if energies is not None else ())
                    + (PROPERTY_COLUMNS if property_values is not None else ()))
    for k, ((source, index), report) in enumerate(zip(origins, result.reports)):
        writer.writerow(
            [
                index,
                source,
                report.num_atoms,
                report.num_stable_atoms,
                int(report.stable),
                int(report.valid),
                int(report.strict_valid),
                report.smiles or "",
                report.failure,
                int(report.odd_electrons),
                report.hydrogen_balance,
                report.isolated_atoms,
                *(energy_cells(energies[k]) if energies is not None else []),
                *([f"{v:.6g}" for v in property_values[k]] if property_values is not None else []),
            ]
        )
    return buffer.getvalue()


def evaluate_command(
    files: Optional[list[str]] = typer.Argument(
        None,
        metavar="FILE",
        help="Molecule files to evaluate (.sdf, .xyz, .npz, .smi), or '-' for standard input. "
        "Leave out and give --split to evaluate the dataset itself. Folders are read as training run "
        "directories: their metrics.jsonl is summarised (and plotted with --report).",
        show_default=False,
    ),
    dataset: DatasetChoice = typer.Option(
        DatasetChoice.qm9,
        "--dataset",
        help="Dataset whose atom types and novelty reference apply (novelty is computed for qm9 only).",
    ),
    split: Optional[SplitChoice] = typer.Option(
        None,
        "--split",
        help="Evaluate this split of the dataset instead of files (the reference numbers of the data).",
        show_default=False,
    ),
    json_path: Optional[str] = typer.Option(
        None,
        "--json",
        metavar="PATH",
        help="Also write counts and fractions as JSON to PATH ('-' for standard output, the table then goes to stderr).",
        show_default=False,
    ),
    per_molecule: Optional[str] = typer.Option(
        None,
        "--per-molecule",
        metavar="CSV",
        help="Write one CSV row per molecule (index: the record's 0-based position in its file, unreadable "
        "records counted; source, atoms, stable atoms, stable, valid, strict_valid, "
        "SMILES, and why it is unstable: failure = stable|composition|geometry, where composition means no "
        "geometry can make it stable (e.g. an odd electron count); odd_electrons; hydrogen_balance = hydrogens "
        "minus those the heavy atoms' valences need; isolated_atoms) to CSV ('-' for standard output).",
        show_default=False,
    ),
    from_format: Optional[str] = typer.Option(
        None,
        "--from",
        metavar="FORMAT",
        help="Format of every FILE (sdf, xyz, smi, npz), overriding the extension; needed for SMILES "
        "on standard input, e.g. echo CCO | symdiff evaluate - --from smi.",
        show_default=False,
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Treat an unreadable record in an input file as an error instead of skipping it with a warning.",
    ),
    no_novelty: bool = typer.Option(
        False,
        "--no-novelty",
        help="Skip novelty (it needs the QM9 training SMILES, built once and cached on first use).",
    ),
    energy: bool = typer.Option(
        False,
        "--energy",
        help="Also relax every molecule with GFN2-xTB (tblite, ASE BFGS to 0.05 eV/A; needs pip install "
        "'symdiff-cli\\[relax]') and report the energy of the given and the relaxed geometry, the strain "
        "energy (their difference, kcal/mol) and the heavy-atom RMSD: medians and quartiles in the "
        "table and the JSON, per molecule in --per-molecule, beside the same for a subsample of the "
        "QM9 test split (--energy-reference).",
    ),
    energy_reference: int = typer.Option(
        200,
        "--energy-reference",
        metavar="N",
        help="With --energy: QM9 test molecules (drawn with seed 0) relaxed as the reference, computed "
        "once and cached; 0 leaves the reference out.",
    ),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        help="With --energy: processes that relax molecules in parallel (default: the number of cores).",
        show_default=False,
    ),
    report: Optional[str] = typer.Option(
        None,
        "--report",
        metavar="HTML",
        help="Also write a self-contained HTML report to HTML: the metrics beside QM9's, bond-length, "
        "atom-count, element and ring-size distributions against the QM9 test split, the failures, and "
        "drawings of some molecules; each FILE is its own column. Given training run directories "
        "(folders with a metrics.jsonl) instead of files, plots their loss, learning rate, throughput and "
        "periodic evaluations.",
        show_default=False,
    ),
    property_name: Optional[str] = typer.Option(
        None,
        "--property",
        metavar="PROP",
        help="For molecules generated with --condition PROP (alpha, gap, homo, lumo, mu, Cv): predict each "
        "molecule's PROP with a property predictor and report the mean absolute error to the value it was "
        "generated for (its symdiff_condition_PROP tag), beside the predictor's references (shuffled values, "
        "atom count alone, real molecules) and EDM's published numbers; per molecule in --per-molecule "
        "(columns requested, predicted) and in the JSON under 'property'.",
        show_default=False,
    ),
    predictor: Optional[str] = typer.Option(
        None,
        "--predictor",
        metavar="MODEL",
        help="With --property: the predictor release (name in weights/ or directory; default qm9-PROP-predictor, "
        "trained with `symdiff train --predictor PROP`).",
        show_default=False,
    ),
    report_molecules: int = typer.Option(
        DEFAULT_DEPICTIONS,
        "--report-molecules",
        metavar="N",
        min=0,
        help="How many molecules of each FILE the report draws (picked at random, seed 0; 0 draws none).",
    ),
) -> None:
    """Stability, validity, uniqueness and novelty of molecules, by the QM9 benchmark rules (EDM);
    with --energy, GFN2-xTB strain energies and relaxation RMSDs too; with --property, how close
    conditionally generated molecules come to their requested values (EDM's protocol)."""
    from symdiff_cli.chem.quiet import quiet_library_warnings

    if energy:
        from symdiff_cli.commands.relax_convert import check_relax_options

        check_relax_options("xtb", workers, 1)
        if energy_reference < 0:
            raise UsageError(f"--energy-reference must be 0 or more, not {energy_reference}")
    elif workers is not None:
        raise UsageError("--workers applies only with --energy")
    if predictor is not None and property_name is None:
        raise UsageError("--predictor applies only with --property")
    if property_name is not None:
        from symdiff_cli.data.properties import qm9_property

        qm9_property(property_name)  # an unknown name fails before anything is read
        if split is not None:
            raise UsageError("--property judges generated molecules against the values they were generated for; "
                             "give molecule files, not --split")
    with quiet_library_warnings():
        _evaluate(list(files or []), dataset, split, json_path, per_molecule, from_format, strict, no_novelty,
                  energy_reference if energy else None, workers, report, report_molecules, property_name, predictor)


def _evaluate(files: list[str], dataset: DatasetChoice, split: Optional[SplitChoice], json_path: Optional[str],
              per_molecule: Optional[str], from_format: Optional[str], strict: bool, no_novelty: bool,
              energy_reference: Optional[int] = None, workers: Optional[int] = None,
              report: Optional[str] = None, report_molecules: int = DEFAULT_DEPICTIONS,
              property_name: Optional[str] = None, predictor: Optional[str] = None) -> None:
    """energy_reference None: no --energy; else the size of the QM9 reference (0: none)."""
    from rich.console import Console

    from symdiff_cli.commands import evaluate_report

    from symdiff_cli.chem.metrics import evaluate_molecules
    from symdiff_cli.io.paths import refuse_overwriting_inputs

    if files and split is not None:
        raise UsageError("give molecule files or --split, not both")
    if not files and split is None:
        raise UsageError("nothing to evaluate: give molecule files (or '-' for stdin), or --split to evaluate the dataset")
    if json_path == "-" and per_molecule == "-":
        raise UsageError("--json and --per-molecule cannot both write to standard output")
    from symdiff_cli.io.formats import require_stdout, write_stdout

    for option, path, example in (("--json", json_path, "metrics.json"), ("--per-molecule", per_molecule, "mols.csv")):
        if path == "-":
            require_stdout(f"the {option} output")
        elif path is not None:
            evaluate_report.check_output_path(option, path, example)
    if from_format is not None and split is not None:
        raise UsageError("--from applies to molecule files, not to --split")
    refuse_overwriting_inputs({"--per-molecule": per_molecule, "--json": json_path, "--report": report}, files)
    if report is not None:
        evaluate_report.check_report_path(report)
    if files and any(evaluate_report.is_folder(f) for f in files):
        if json_path is not None or per_molecule is not None or from_format is not None:
            raise UsageError("--json, --per-molecule and --from apply to molecule files, not to training runs")
        if property_name is not None:
            raise UsageError("--property applies to molecule files, not to training runs")
        evaluate_report.training_runs_report(files, report, _write_text_atomic, Console())
        return

    if split is not None:
        if dataset is not DatasetChoice.qm9:
            raise UsageError(f"the {dataset.value} data is not available here; --split works with --dataset qm9")
        from symdiff_cli.data.qm9 import qm9_split

        with progress_bar("processing QM9 (once)", show_elapsed=True) as on_progress:
            packed = qm9_split(split.value, on_progress)
        molecules = packed.to_molecules()
        origins = [(f"qm9:{split.value}", k) for k in range(len(molecules))]
        unreadable = 0
        title = f"QM9 {split.value} split ({len(molecules)} molecules)"
    else:
        molecules, origins, unreadable = _read_inputs(files, strict, from_format)
        _warn_foreign_elements(molecules, dataset.value)
        sources = ", ".join("stdin" if f == "-" else f for f in files)
        title = f"{len(molecules)} molecule{'' if len(molecules) == 1 else 's'} from {sources}"
    if report is not None and not molecules:
        raise SymdiffError("no molecules to report on")
    property_predictor = None
    if property_name is not None:  # a missing or wrong predictor fails before the slow metrics
        from symdiff_cli.commands.property_report import load_property_predictor

        property_predictor = load_property_predictor(property_name, predictor)

    reference = None
    if dataset is DatasetChoice.qm9 and not no_novelty:
        from symdiff_cli.data.qm9 import qm9_split, reference_smiles_path, train_reference_smiles

        if not reference_smiles_path().is_file():  # built from the training split, parsed first if need be
            with progress_bar("processing QM9 (once)", show_elapsed=True) as on_progress:
                qm9_split("train", on_progress)
        with progress_bar("building the QM9 novelty reference (once)") as on_progress:
            reference = train_reference_smiles(on_progress)
    with progress_bar("evaluating") as on_progress:
        result = evaluate_molecules(molecules, reference_smiles=reference, on_progress=on_progress)

    # Machine-readable output on stdout must stay parseable: the table then goes to stderr.
    table_console = Console(stderr="-" in (json_path, per_molecule))
    table_console.print(_results_table(result, title))
    energies, energy_section = None, None
    if energy_reference is not None:
        from symdiff_cli.commands.energy_report import compute_energies, energy_table

        energies, energy_section = compute_energies(molecules, energy_reference, workers)
        table_console.print(energy_table(energy_section))
    property_values, property_section = None, None
    if property_name is not None:
        from symdiff_cli.commands.property_report import compute_property_section, property_table

        property_values, property_section = compute_property_section(molecules, property_name, property_predictor)
        table_console.print(property_table(property_section))

    if per_molecule == "-":
        write_stdout(_per_molecule_csv(result, origins, energies, property_values))
    elif per_molecule is not None:
        _write_text_atomic(per_molecule, _per_molecule_csv(result, origins, energies, property_values))
    if json_path is not None:
        payload = {
            "dataset": dataset.value,
            "split": None if split is None else split.value,
            "files": files,
            "unreadable_records": unreadable,
            **result.as_dict(),
        }
        if energy_section is not None:
            payload["energy"] = energy_section
        if property_section is not None:
            payload["property"] = property_section
        text = json.dumps(payload, indent=2) + "\n"
        if json_path == "-":
            write_stdout(text)
        else:
            _write_text_atomic(json_path, text)
    if report is not None:
        html = evaluate_report.molecule_report_html(molecules, origins, result, reference, dataset.value,
                                                    report_molecules, title)
        _write_text_atomic(report, html)
        table_console.print(f"Report written to {report}")
