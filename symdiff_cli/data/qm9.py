"""QM9 from the `qm9pack` wheel: parse its CSVs once into an npz cache, and the standard split.

The cache lives in `$SYMDIFF_CACHE` or `~/.cache/symdiff`. Positions are kept in float64 as
parsed: the benchmark compares distances against bond thresholds with strict '<', and
rounding coordinates to float32 moves molecules across thresholds.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable
from pathlib import Path

import numpy as np

from symdiff_cli.chem.elements import SYMBOL_TO_Z
from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.atomic import atomic_output
from symdiff_cli.io.molecule import PackedMolecules

# (done, total): how far a slow step (parsing QM9, building the novelty reference) has come.
ProgressCallback = Callable[[int, int], None]

# What load_qm9 and train_reference_smiles have read, kept for the life of the process.
_LOADED: dict[str, Any] = {}

NUM_MOLECULES = 130_831
NUM_TRAIN = 100_000
NUM_TEST = int(0.1 * NUM_MOLECULES)  # 13,083
NUM_VALID = NUM_MOLECULES - NUM_TRAIN - NUM_TEST  # 17,748
SPLITS = ("train", "valid", "test", "all")

# Bump when the cache layout or the parsing changes, so old caches are not reused.
CACHE_VERSION = 1
CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
# The scalar property columns of the qm9pack CSVs (per-atom arrays and text are not kept).
PROPERTY_COLUMNS = (
    "RotA_GHz",
    "RotB_GHz",
    "RotC_GHz",
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "HOMO_LUMO_gap_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
)


def cache_dir() -> Path:
    """Where processed data is cached: $SYMDIFF_CACHE, else ~/.cache/symdiff."""
    override = os.environ.get("SYMDIFF_CACHE")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "symdiff"


def cache_path() -> Path:
    return cache_dir() / f"qm9_v{CACHE_VERSION}.npz"


def reference_smiles_path() -> Path:
    return cache_dir() / f"qm9_v{CACHE_VERSION}_train_smiles.txt"


def _qm9pack_data_dir() -> Path:
    """The CSV folder inside the installed qm9pack wheel, found without importing qm9pack.

    qm9pack's __init__ imports pkg_resources, which recent setuptools no longer ships, and
    importlib.resources.files("qm9pack") imports the package; find_spec only locates it.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise SymdiffError("QM9 needs the qm9pack package: pip install qm9pack")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@dataclass
class QM9Data:
    """All 130,831 QM9 molecules, sorted by gdb9 index, in packed arrays."""

    positions: np.ndarray  # (total_atoms, 3) float64, Angstrom
    atomic_numbers: np.ndarray  # (total_atoms,) int64
    num_atoms: np.ndarray  # (M,) int64
    gdb9_index: np.ndarray  # (M,) int64
    smiles: np.ndarray  # (M,) str: the SMILES given by the dataset (not perceived from 3D)
    properties: dict[str, np.ndarray]  # name -> (M,) float64

    def __len__(self) -> int:
        return len(self.num_atoms)

    @property
    def packed(self) -> PackedMolecules:
        return PackedMolecules(self.positions, self.atomic_numbers, self.num_atoms)


def _parse_elements(text: str) -> list[int]:
    # The column looks like "['C','H','H']"; symbols need no general literal parser.
    return [SYMBOL_TO_Z[s.strip().strip("'\"")] for s in text.strip()[1:-1].split(",")]


def _parse_coordinates(text: str) -> list[list[float]]:
    # "[[x,y,z],...]" with numbers such as "0." that JSON rejects; Python's float() reads
    # every token exactly (correctly rounded), which the metrics need.
    values = [float(tok) for tok in text.replace("[", "").replace("]", "").split(",") if tok.strip()]
    if len(values) % 3:
        raise ValueError(f"coordinate list of length {len(values)} is not a multiple of 3")
    return [values[k : k + 3] for k in range(0, len(values), 3)]


def _parse_csvs(on_progress: ProgressCallback | None = None) -> QM9Data:
    """Read the qm9pack CSVs (about 230 MB) into a QM9Data sorted by gdb9 index, calling
    `on_progress(done, total)` every thousand molecules."""
    data_dir = _qm9pack_data_dir()
    index, smiles, counts, elements, coordinates = [], [], [], [], []
    props: dict[str, list[float]] = {name: [] for name in PROPERTY_COLUMNS}
    csv.field_size_limit(1 << 24)
    for name in CSV_FILES:
        source = data_dir / name
        if not source.is_file():
            raise SymdiffError(f"qm9pack is missing {name}; reinstall it (pip install --force-reinstall qm9pack)")
        with source.open("r", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                atoms = _parse_elements(row["Elements"])
                xyz = _parse_coordinates(row["XYZ_Ang"])
                if len(atoms) != int(row["N_atoms"]) or len(xyz) != len(atoms):
                    raise SymdiffError(f"qm9pack {name}: inconsistent atom count for gdb9 index {row['Index']}")
                index.append(int(row["Index"]))
                smiles.append(row["SMILES"])
                counts.append(len(atoms))
                elements.extend(atoms)
                coordinates.extend(xyz)
                for key in PROPERTY_COLUMNS:
                    props[key].append(float(row[key]))
                if len(index) % 1000 == 0 and on_progress is not None:
                    on_progress(len(index), NUM_MOLECULES)
    if len(index) != NUM_MOLECULES or len(set(index)) != NUM_MOLECULES:
        raise SymdiffError(f"qm9pack holds {len(index)} molecules ({len(set(index))} distinct), expected {NUM_MOLECULES}")

    num_atoms = np.array(counts, dtype=np.int64)
    positions = np.array(coordinates, dtype=np.float64)
    atomic_numbers = np.array(elements, dtype=np.int64)
    gdb9_index = np.array(index, dtype=np.int64)
    order = np.argsort(gdb9_index, kind="stable")
    packed = PackedMolecules(positions, atomic_numbers, num_atoms).subset(order)
    return QM9Data(
        positions=packed.positions,
        atomic_numbers=packed.atomic_numbers,
        num_atoms=packed.num_atoms,
        gdb9_index=gdb9_index[order],
        smiles=np.array(smiles)[order],
        properties={key: np.array(values, dtype=np.float64)[order] for key, values in props.items()},
    )


def _atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same folder and os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb") as handle:
        write(handle)


def _save_cache(data: QM9Data, path: Path) -> None:
    arrays = {
        "positions": data.positions,
        # Small integer types keep the file compact; loading widens them to int64 again.
        "atomic_numbers": data.atomic_numbers.astype(np.uint8),
        "num_atoms": data.num_atoms.astype(np.int16),
        "gdb9_index": data.gdb9_index,
        "smiles": data.smiles,
    }
    arrays.update({f"prop_{key}": value for key, value in data.properties.items()})
    _atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _load_cache(path: Path) -> QM9Data:
    with np.load(path, allow_pickle=False) as npz:
        return QM9Data(
            positions=npz["positions"],
            atomic_numbers=npz["atomic_numbers"].astype(np.int64),
            num_atoms=npz["num_atoms"].astype(np.int64),
            gdb9_index=npz["gdb9_index"],
            smiles=npz["smiles"],
            properties={key[5:]: npz[key] for key in npz.files if key.startswith("prop_")},
        )


def load_qm9(on_progress: ProgressCallback | None = None) -> QM9Data:
    """All of QM9, from the cache (built from the qm9pack CSVs on first use, reporting
    `on_progress(done, total)` molecules as it parses them); held in memory after the first call."""
    if "qm9" not in _LOADED:
        _LOADED["qm9"] = _read_or_build_cache(on_progress)
    return _LOADED["qm9"]


def _read_or_build_cache(on_progress: ProgressCallback | None) -> QM9Data:
    path = cache_path()
    if path.is_file():
        try:
            return _load_cache(path)
        except (OSError, ValueError, KeyError):
            pass  # A damaged cache is rebuilt below.
    data = _parse_csvs(on_progress)
    try:
        _save_cache(data, path)
    except OSError as err:
        # A read-only cache folder should not stop evaluation; it only costs re-parsing.
        sys.stderr.write(f"Warning: could not write the QM9 cache {path}: {err}\n")
    return data


def split_positions() -> dict[str, np.ndarray]:
    """Row numbers (into the gdb9-sorted data) of each split, each sorted ascending.

    The EDM/Cormorant split: np.random.seed(0); perm = np.random.permutation(130831);
    train, valid, test = perm[:100000], perm[100000:117748], perm[117748:]. RandomState(0)
    gives the same permutation without touching numpy's global random state.
    """
    perm = np.random.RandomState(0).permutation(NUM_MOLECULES)
    bounds = (NUM_TRAIN, NUM_TRAIN + NUM_VALID)
    train, valid, test = np.split(perm, bounds)
    return {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}


def _check_split(split: str | None) -> str:
    split = "all" if split is None else split.lower()
    if split not in SPLITS:
        raise SymdiffError(f"unknown QM9 split {split!r} (choose from {', '.join(SPLITS)})")
    return split


def split_gdb9_indices(split: str) -> np.ndarray:
    """gdb9 indices of a split, ascending (the layout of reference/qm9_split.npz)."""
    split = _check_split(split)
    data = load_qm9()
    if split == "all":
        return data.gdb9_index.copy()
    return data.gdb9_index[split_positions()[split]]


def qm9_split(split: str | None = "all", on_progress: ProgressCallback | None = None) -> PackedMolecules:
    """The molecules of a split (train, valid, test or all), in gdb9-index order; `on_progress`
    follows the parsing of QM9 when its cache is built (load_qm9)."""
    split = _check_split(split)
    data = load_qm9(on_progress)
    if split == "all":
        return data.packed
    return data.packed.subset(split_positions()[split])


def atom_count_histogram(split: str = "train") -> dict[int, int]:
    """How many molecules of the split have each number of atoms (hydrogens included)."""
    counts = Counter(qm9_split(split).num_atoms.tolist())
    return {int(n): int(c) for n, c in sorted(counts.items())}


def train_reference_smiles(on_progress: ProgressCallback | None = None) -> frozenset[str]:
    """Canonical SMILES of the training molecules, perceived from their 3D structures.

    The novelty reference: the same bond perception and largest-fragment SMILES as the
    metrics, so a generated copy of a training molecule counts as not novel. Cached as a
    text file next to the npz, and in memory after the first call. `on_progress(done, total)`
    follows the evaluation of the training molecules when the file is built.
    """
    if "reference_smiles" not in _LOADED:
        _LOADED["reference_smiles"] = _read_or_build_reference_smiles(on_progress)
    return _LOADED["reference_smiles"]


def _read_or_build_reference_smiles(on_progress: ProgressCallback | None) -> frozenset[str]:
    path = reference_smiles_path()
    if path.is_file():
        return frozenset(line for line in path.read_text(encoding="utf-8").splitlines() if line)
    from symdiff_cli.chem.metrics import evaluate_molecules

    result = evaluate_molecules(qm9_split("train"), on_progress=on_progress)
    smiles = sorted({r.smiles for r in result.reports if r.valid and r.smiles})
    text = "".join(s + "\n" for s in smiles).encode("utf-8")
    try:
        _atomic_write(path, lambda handle: handle.write(text))
    except OSError as err:
        sys.stderr.write(f"Warning: could not write the reference SMILES cache {path}: {err}\n")
    return frozenset(smiles)
