"""Property predictors: the data they read, the predictor release format, predictions for
molecules (what `symdiff evaluate --property` reports) and EDM's references; training lives in
engine/predictor_train.py.

EDM's protocol (Hoogeboom et al. 2022, section 4.2) judges a conditional generator with a
predictor that never saw the generator's training half, and frames its error with three
references, all computed here on the second half when the predictor is trained:

- shuffled: the predictor's predictions against the values of other molecules (a random
  permutation of the second half): what a generator that ignores the request would score;
- atom count: the mean value of the first half's molecules with the same number of atoms,
  against the true values: what the atom count alone tells (EDM trains a network on it; the
  per-count mean is the best such predictor in squared error);
- real molecules: the predictor on the second half's own molecules: the floor its errors set.

A predictor release is a directory like a generator's (config.json, model.safetensors, README.md)
whose config.json has the format PREDICTOR_FORMAT, so the generator's loader refuses it by name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from symdiff_cli.errors import SymdiffError
from symdiff_cli.model.predictor import PredictorConfig, PropertyPredictor

PREDICTOR_FORMAT = "symdiff-property-predictor"
PREDICTOR_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
VALIDATION_SIZE = 2_500  # the last molecules of the first half: model selection never sees the second half
EVAL_BATCH = 256


def default_predictor_name(prop: str) -> str:
    """The name in weights/ of the shipped predictor of `prop`."""
    return f"qm9-{prop}-predictor"


# --------------------------------------------------------------------------------------
# Data


@dataclass
class TypedMolecules:
    """Molecules as type indices and positions, with one value each: what the predictor reads."""

    types: list[np.ndarray]
    positions: list[np.ndarray]
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.types)

    def by_size(self, batch: int) -> list[np.ndarray]:
        """Index batches of molecules of one atom count each, in a fixed order."""
        sizes = np.array([len(t) for t in self.types])
        out = []
        for n in np.unique(sizes):
            idx = np.flatnonzero(sizes == n)
            out.extend(idx[i:i + batch] for i in range(0, len(idx), batch))
        return out

    def tensors(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        types = torch.from_numpy(np.stack([self.types[i] for i in idx]))
        positions = torch.from_numpy(np.stack([self.positions[i] for i in idx]).astype(np.float32))
        return types, positions


def typed_molecules(atomic_numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], values: np.ndarray,
                    atom_types: Sequence[str], names: Sequence[str] | None = None) -> TypedMolecules:
    """Index each molecule's elements in `atom_types`; an element outside them is a one-line error."""
    from symdiff_cli.chem.elements import SYMBOL_TO_Z, element_symbol

    lookup = {SYMBOL_TO_Z[s]: i for i, s in enumerate(atom_types)}
    types = []
    for k, z in enumerate(atomic_numbers):
        try:
            types.append(np.array([lookup[int(v)] for v in z], dtype=np.int64))
        except KeyError as err:
            which = names[k] if names else f"molecule {k + 1}"
            try:
                symbol = element_symbol(int(err.args[0]))
            except SymdiffError:
                symbol = f"atomic number {err.args[0]}"
            raise SymdiffError(f"{which} contains {symbol}, which the predictor does not know "
                               f"(it reads {', '.join(atom_types)})") from None
    centred = [np.asarray(p, dtype=np.float64) - np.asarray(p, dtype=np.float64).mean(axis=0) for p in positions]
    return TypedMolecules(types, centred, np.asarray(values, dtype=np.float64))


def qm9_half_typed(half: str, prop: str, atom_types: Sequence[str]) -> TypedMolecules:
    from symdiff_cli.data.properties import qm9_half_with_properties

    data = qm9_half_with_properties(half, [prop])
    packed = data.molecules
    bounds = np.cumsum(packed.num_atoms)[:-1]
    z, x = np.split(packed.atomic_numbers, bounds), np.split(packed.positions, bounds)
    return typed_molecules(z, x, data.values[:, 0], atom_types)


def subset(data: TypedMolecules, idx: np.ndarray) -> TypedMolecules:
    return TypedMolecules([data.types[i] for i in idx], [data.positions[i] for i in idx], data.values[idx])


# --------------------------------------------------------------------------------------
# Predicting


@torch.no_grad()
def predict(model: PropertyPredictor, data: TypedMolecules,
            on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The model's prediction for every molecule of `data`, in its order."""
    model.eval()
    out = np.empty(len(data))
    done = 0
    for idx in data.by_size(EVAL_BATCH):
        types, positions = data.tensors(idx)
        out[idx] = model(types, positions).double().numpy()
        done += len(idx)
        if on_progress is not None:
            on_progress(done, len(data))
    return out


def reference_maes(model: PropertyPredictor, first: TypedMolecules, second: TypedMolecules,
                   on_progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """EDM's three references on the second half (see the module docstring)."""
    predicted = predict(model, second, on_progress)
    shuffled = second.values[np.random.default_rng(0).permutation(len(second))]
    sizes_first = np.array([len(t) for t in first.types])
    sizes_second = np.array([len(t) for t in second.types])
    by_count = {int(n): float(first.values[sizes_first == n].mean()) for n in np.unique(sizes_first)}
    overall = float(first.values.mean())
    from_count = np.array([by_count.get(int(n), overall) for n in sizes_second])
    return {"shuffled": float(np.abs(predicted - shuffled).mean()),
            "atom_count": float(np.abs(from_count - second.values).mean()),
            "real_molecules": float(np.abs(predicted - second.values).mean())}


# --------------------------------------------------------------------------------------
# The release


def is_predictor_directory(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")).get("format") == PREDICTOR_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def predictor_card(config: dict[str, Any], num_parameters: int) -> str:
    """The model card of a predictor release, from its config.json alone."""
    prop, unit = config["property"], config["unit"]
    refs, prov = config["references"], config["provenance"]
    lines = [
        f"# {prop} predictor (QM9)", "",
        f"An invariant transformer ({num_parameters:,} parameters; attention biased by interatomic distances) that",
        f"predicts {prop} in {unit} from atom types and 3D positions. It is the judge of",
        f"`symdiff evaluate mols.sdf --property {prop}` for molecules generated with `--condition {prop}`,",
        "following EDM's protocol (Hoogeboom et al. 2022, section 4.2): it was trained on the first half",
        "of the QM9 train split only and never saw the second half, on which conditional generators train.", "",
        f"Trained by `symdiff train --predictor {prop}`: {prov['steps']:,} steps, {prov['epochs']} epochs, "
        f"{prov['train_seconds'] / 60:.0f} min, batch {prov['batch_size']}, lr {prov['lr']:g}, seed {prov['seed']}; "
        f"{prov['data']}.", "",
        "## References (mean absolute error on the 50,000 molecules of the second half)", "",
        f"| reference | MAE ({unit}) |", "|---|---|",
        f"| predictor vs shuffled values (upper bound) | {refs['shuffled']:.4g} |",
        f"| mean value per atom count (first half) | {refs['atom_count']:.4g} |",
        f"| predictor on the real molecules (lower bound) | {refs['real_molecules']:.4g} |",
        f"| predictor on its validation molecules (first half) | {config['validation_mae']:.4g} |", "",
        "A conditional generator's MAE is meaningful between the lower bound and the atom-count reference:",
        "below the latter, it has used the requested value beyond choosing a size.", "",
    ]
    return "\n".join(lines)


def save_predictor(out: str | os.PathLike, model: PropertyPredictor, prop: str, unit: str, references: dict[str, float],
                   validation_mae: float, provenance: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    """Write a predictor release atomically (a temporary directory renamed into place)."""
    from symdiff_cli.engine.release_tensors import file_sha256, write_safetensors
    from symdiff_cli.io.atomic import current_umask

    out = Path(out)
    config = {"format": PREDICTOR_FORMAT, "format_version": PREDICTOR_FORMAT_VERSION, "property": prop, "unit": unit,
              "predictor_config": model.cfg.to_dict(), "references": {k: round(v, 6) for k, v in references.items()},
              "validation_mae": validation_mae, "provenance": provenance, "validation_history": history}
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.absolute().parent))
    try:
        tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        write_safetensors(staging / WEIGHTS_FILE, tensors, {"format": "pt"})
        config["sha256"] = {WEIGHTS_FILE: file_sha256(staging / WEIGHTS_FILE)}
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (staging / CARD_FILE).write_text(predictor_card(config, sum(t.numel() for t in tensors.values())),
                                         encoding="utf-8")
        os.chmod(staging, 0o777 & ~current_umask())
        for name in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE):
            os.chmod(staging / name, 0o666 & ~current_umask())
        if out.is_dir():  # an earlier predictor release or an empty directory (checked before training)
            # the release format's per-file atomic swap: the directory itself is never missing
            from symdiff_cli.engine.release import _swap_release_files

            _swap_release_files(staging, out, [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE], [])
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError):
            raise SymdiffError(f"cannot write the predictor to {out}: {err.strerror or err}") from None
        raise
    return out


@dataclass
class LoadedPredictor:
    model: PropertyPredictor
    config: dict[str, Any]
    path: Path

    @property
    def prop(self) -> str:
        return self.config["property"]


def load_predictor(spec: str) -> LoadedPredictor:
    """A predictor release by name in weights/ or directory, its weights checked against its digest."""
    from safetensors.torch import load_file

    from symdiff_cli.engine.registry import resolve_model
    from symdiff_cli.engine.release_tensors import file_sha256

    path = resolve_model(spec, offline=True)
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SymdiffError(f"cannot read {path / CONFIG_FILE}: {err}") from None
    if not isinstance(config, dict) or config.get("format") != PREDICTOR_FORMAT:
        raise SymdiffError(f"{spec} ({path}) is not a property predictor (train one with `symdiff train --predictor`)")
    if config.get("format_version", 0) > PREDICTOR_FORMAT_VERSION:
        raise SymdiffError(f"{path} has predictor format version {config['format_version']}: upgrade symdiff")
    try:
        cfg = PredictorConfig.from_dict(config["predictor_config"])
        expected = config["sha256"][WEIGHTS_FILE]
        _ = config["references"]["atom_count"], config["property"], config["unit"]
    except (KeyError, TypeError, ValueError) as err:
        raise SymdiffError(f"{path / CONFIG_FILE} is not a complete predictor config ({err})") from None
    if file_sha256(path / WEIGHTS_FILE) != expected:
        raise SymdiffError(f"{path / WEIGHTS_FILE} is damaged: its SHA-256 does not match {CONFIG_FILE}")
    model = PropertyPredictor(cfg)
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=True)
    except (RuntimeError, OSError) as err:
        raise SymdiffError(f"the weights in {path / WEIGHTS_FILE} do not fit its {CONFIG_FILE} "
                           f"({str(err).splitlines()[0]})") from None
    return LoadedPredictor(model.eval(), config, path)


__all__ = ["PREDICTOR_FORMAT", "load_predictor", "save_predictor", "predict", "reference_maes", "typed_molecules",
           "default_predictor_name", "is_predictor_directory", "qm9_half_typed", "subset"]
