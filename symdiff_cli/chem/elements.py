"""Element symbols, atomic numbers and the atom-type vocabularies of the supported datasets."""

from __future__ import annotations

from dataclasses import dataclass

from symdiff_cli.errors import SymdiffError

# Symbols up to bismuth (Z = 83) cover every dataset vocabulary we support.
_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se "
    "Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy "
    "Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi"
).split()
SYMBOL_TO_Z = {s: i + 1 for i, s in enumerate(_SYMBOLS)}
_SYMBOL_LOWER = {s.lower(): s for s in _SYMBOLS}


def atomic_number(symbol: str) -> int:
    """Atomic number of an element symbol (case-insensitive); SymdiffError if unknown."""
    canonical = _SYMBOL_LOWER.get(symbol.strip().lower())
    if canonical is None:
        raise SymdiffError(f"unknown element {symbol!r}")
    return SYMBOL_TO_Z[canonical]


def element_symbol(z: int) -> str:
    """Element symbol of an atomic number; SymdiffError if outside 1..83."""
    if not 1 <= int(z) <= len(_SYMBOLS):
        raise SymdiffError(f"unknown atomic number {z}")
    return _SYMBOLS[int(z) - 1]


@dataclass(frozen=True)
class DatasetInfo:
    """The atom-type vocabulary of a dataset: the order defines the one-hot encoding."""

    name: str
    atom_types: tuple[str, ...]
    max_atoms: int

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        return tuple(SYMBOL_TO_Z[s] for s in self.atom_types)

    def type_index(self, z: int) -> int:
        """Index of atomic number z in this vocabulary; SymdiffError if the dataset lacks it."""
        try:
            return self.atomic_numbers.index(int(z))
        except ValueError:
            raise SymdiffError(
                f"element {element_symbol(z)} is not in the {self.name} atom types "
                f"({' '.join(self.atom_types)})"
            ) from None


QM9 = DatasetInfo("qm9", ("H", "C", "N", "O", "F"), 29)
GEOM = DatasetInfo(
    "geom",
    ("H", "B", "C", "N", "O", "F", "Al", "Si", "P", "S", "Cl", "As", "Br", "I", "Hg", "Bi"),
    181,
)
DATASETS = {d.name: d for d in (QM9, GEOM)}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise SymdiffError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})") from None
