"""QM9 properties for conditional generation, and the two halves of the train split.

EDM's benchmark (Hoogeboom et al. 2022, section 4.2) cuts the QM9 train split into two halves
of 50,000: a property predictor learns from the first, the conditional generator from the
second, so the judge has never seen the molecules the generator learned from. Our halves are
the first and the last 50,000 entries of EDM's train permutation (data/qm9.py split_positions
sorts them; here the permutation's own order decides), so they are reproducible and disjoint.

Units are EDM's: alpha in Bohr^3, gap / HOMO / LUMO in meV, mu in Debye, Cv in cal/(mol K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from symdiff_cli.errors import UsageError

HARTREE_TO_MEV = 27_211.386_245_988  # CODATA 2018


@dataclass(frozen=True)
class QM9Property:
    name: str
    column: str  # the qm9pack CSV column (data/qm9.py PROPERTY_COLUMNS)
    factor: float  # column value x factor = value in `unit`
    unit: str
    description: str


PROPERTIES: dict[str, QM9Property] = {p.name: p for p in (
    QM9Property("alpha", "Polarizability_bohr3", 1.0, "Bohr^3", "isotropic polarisability"),
    QM9Property("gap", "HOMO_LUMO_gap_au", HARTREE_TO_MEV, "meV", "HOMO-LUMO gap"),
    QM9Property("homo", "HOMO_au", HARTREE_TO_MEV, "meV", "HOMO energy"),
    QM9Property("lumo", "LUMO_au", HARTREE_TO_MEV, "meV", "LUMO energy"),
    QM9Property("mu", "Dipole_debye", 1.0, "D", "dipole moment"),
    QM9Property("Cv", "Heatcapacity_Cv_cal_mol_K", 1.0, "cal/(mol K)", "heat capacity at 298 K"),
)}
HALVES = ("first", "second")
HALF_SIZE = 50_000


def qm9_property(name: str) -> QM9Property:
    """The property called `name` (case-insensitive), or a one-line error naming the choices."""
    for key, prop in PROPERTIES.items():
        if key.lower() == name.strip().lower():
            return prop
    raise UsageError(f"unknown property {name!r} (choose from {', '.join(PROPERTIES)})")


def half_positions(half: str) -> np.ndarray:
    """Row numbers (into the gdb9-sorted QM9 data) of the first or second half of the train split,
    in the order of EDM's permutation."""
    if half not in HALVES:
        raise ValueError(f"half must be one of {HALVES}, not {half!r}")
    from symdiff_cli.data.qm9 import NUM_MOLECULES

    perm = np.random.RandomState(0).permutation(NUM_MOLECULES)  # the permutation of data/qm9.py
    return perm[:HALF_SIZE] if half == "first" else perm[HALF_SIZE:2 * HALF_SIZE]


@dataclass
class PropertyData:
    """Molecules of one half with their property values (M, K), one column per property."""

    molecules: object  # PackedMolecules
    values: np.ndarray
    names: tuple[str, ...]


def qm9_half_with_properties(half: str, names: tuple[str, ...] | list[str]) -> PropertyData:
    """The molecules of a half of the train split and the named properties, in EDM's units."""
    from symdiff_cli.data.qm9 import load_qm9

    props = [qm9_property(n) for n in names]
    data = load_qm9()
    rows = half_positions(half)
    values = np.stack([data.properties[p.column][rows] * p.factor for p in props], axis=1) if props \
        else np.zeros((len(rows), 0))
    return PropertyData(data.packed.subset(rows), values.astype(np.float64), tuple(p.name for p in props))


# How finely the release records each property's distribution per atom count: the values at
# these quantiles. Drawing u ~ U(0, 1) and interpolating between them reproduces the joint
# distribution of (atom count, value) up to the resolution of a 5 % grid.
QUANTILE_LEVELS = tuple(np.round(np.linspace(0.0, 1.0, 21), 2).tolist())


def quantile_table(num_atoms: np.ndarray, values: np.ndarray) -> dict[str, list[float]]:
    """{atom count: values at QUANTILE_LEVELS} of one property, for each atom count present."""
    table = {}
    for n in np.unique(num_atoms):
        column = values[num_atoms == n]
        table[str(int(n))] = [round(float(v), 6) for v in np.quantile(column, QUANTILE_LEVELS)]
    return table


def draw_from_quantiles(quantiles: list[float], size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` values drawn by inverse transform from a row of quantile_table."""
    return np.interp(rng.random(size), QUANTILE_LEVELS, quantiles)


__all__ = ["PROPERTIES", "QM9Property", "HALVES", "qm9_property", "half_positions", "qm9_half_with_properties",
           "quantile_table", "draw_from_quantiles", "QUANTILE_LEVELS", "PropertyData"]
