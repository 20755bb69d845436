"""`symdiff evaluate --energy`: run the xtb energies and show them beside the QM9 reference."""

from __future__ import annotations

from typing import Optional

ENERGY_COLUMNS = ("relax_status", "energy_given_kcal_mol", "energy_relaxed_kcal_mol", "strain_kcal_mol",
                  "rmsd_angstrom")


def _bar(description: str, total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    return progress, progress.add_task(description, total=total)


def compute_energies(molecules: list, reference_count: int, workers: Optional[int]) -> tuple[list, dict]:
    """(per-molecule MoleculeEnergy, the JSON section: summary, and the reference's unless 0)."""
    from symdiff_cli.chem.energy import summarise_energies
    from symdiff_cli.engine.energy_reference import molecule_energies, qm9_energy_reference

    progress, task = _bar("xtb energies", len(molecules))
    with progress:
        energies = molecule_energies(molecules, workers, on_done=lambda k: progress.update(task, completed=k))
    section = summarise_energies(energies)
    section["method"] = "GFN2-xTB (tblite), ASE BFGS to 0.05 eV/A; strain = E(given) - E(relaxed)"
    if reference_count > 0:
        progress, task = _bar(f"QM9 test reference ({reference_count}, once)", reference_count)
        with progress:
            section["reference"] = qm9_energy_reference(reference_count, workers,
                                                        on_done=lambda k: progress.update(task, completed=k))
    return energies, section


def _cell(stats: dict) -> str:
    if stats["median"] is None:
        return "n/a"
    return f"{stats['median']:.2f} [{stats['q1']:.2f}, {stats['q3']:.2f}]"


def energy_table(section: dict):
    """Medians [quartiles] of strain and RMSD, for the molecules and the QM9 reference."""
    from rich.table import Table

    table = Table(title="GFN2-xTB relaxation: median [first, third quartile]")
    table.add_column("")
    table.add_column("Strain (kcal/mol)", justify="right")
    table.add_column("Heavy-atom RMSD (A)", justify="right")
    table.add_column("Relaxed / converged / failed", justify="right")
    sources = [("These molecules", section)]
    if "reference" in section:
        sources.append((f"QM9 test ({section['reference']['molecules']})", section["reference"]))
    for name, stats in sources:
        table.add_row(name, _cell(stats["strain_kcal_mol"]), _cell(stats["rmsd_angstrom"]),
                      f"{stats['relaxed']} / {stats['converged']} / {stats['failed']}")
    return table


def energy_cells(energy) -> list:
    """The per-molecule CSV cells of one MoleculeEnergy (empty where the calculation failed)."""
    def fmt(value):
        return "" if value is None else f"{value:.4f}"

    return [energy.status, fmt(energy.given), fmt(energy.relaxed), fmt(energy.strain), fmt(energy.rmsd)]


__all__ = ["ENERGY_COLUMNS", "compute_energies", "energy_cells", "energy_table"]
