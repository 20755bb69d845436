"""`symdiff convert IN OUT`: molecule files between XYZ, SDF, SMILES and npz.

Checkpoint conversion (a training checkpoint to the release format) belongs to this command
too; it is dispatched on the input before the molecule path (see `convert_command`).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from symdiff_cli.errors import UsageError
from symdiff_cli.model.config import DEFAULT_GUIDANCE_WEIGHT


class CheckpointWeights(str, Enum):
    """Which of a training checkpoint's two sets of weights a release gets."""

    ema = "ema"
    raw = "raw"


class BondPerception(str, Enum):
    """How bonds are found for inputs that carry none (XYZ, npz)."""

    benchmark = "benchmark"
    rdkit = "rdkit"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _convert_molecules(
    input_path: str,
    output_path: str,
    from_format: Optional[str],
    to_format: Optional[str],
    bonds: str,
    strict: bool,
    relax: str = "none",
    workers: Optional[int] = None,
    relax_steps: int = 300,
) -> None:
    """Read every molecule of IN and write them to OUT; a summary goes to stderr."""
    # Imported here so that `symdiff --help` does not load RDKit.
    from symdiff_cli.io.formats import resolve_format
    from symdiff_cli.io.reader import read_molecules
    from symdiff_cli.io.writer import write_molecules

    # Check the output format before reading anything: a typo should fail fast.
    output_format = resolve_format(output_path, to_format)
    if relax != "none":
        from symdiff_cli.commands.relax_convert import check_relax_options

        check_relax_options(relax, workers, relax_steps)
    molecules, unreadable = read_molecules(input_path, fmt=from_format, strict=strict)
    relax_note = None
    if relax != "none":
        from symdiff_cli.commands.relax_convert import relax_and_write

        left_out, relax_note = relax_and_write(molecules, output_path, output_format, bonds, relax, workers,
                                               relax_steps)
    else:
        # Atomic: on any error, Ctrl-C included, no output file is created or changed.
        left_out = write_molecules(output_path, molecules, fmt=output_format, bonds=bonds)
    written = len(molecules) - left_out

    source = "standard input" if input_path == "-" else input_path
    target = "standard output" if output_path == "-" else output_path
    summary = f"Converted {_plural(written, 'molecule')} from {source} to {target} ({output_format})"
    notes = []
    if unreadable:
        notes.append(f"skipped {_plural(unreadable, 'unreadable record')} (use --strict to stop at the first)")
    if left_out:
        notes.append(f"left out {_plural(left_out, 'molecule')} that RDKit cannot sanitise (no valid SMILES)")
    typer.echo(summary + ("; " + "; ".join(notes) if notes else "") + ".", err=True)
    if relax_note:
        typer.echo(relax_note, err=True)


def convert_command(
    input_path: str = typer.Argument(
        ..., metavar="IN",
        help="Input file (.sdf/.mol, .xyz, .smi/.smiles, .npz), '-' for standard input, or a training checkpoint (.pt).",
    ),
    output_path: str = typer.Argument(
        ..., metavar="OUT",
        help="Output file (.sdf, .xyz, .smi, .npz), '-' for standard output, or a release directory for a checkpoint.",
    ),
    from_format: Optional[str] = typer.Option(
        None,
        "--from",
        metavar="FORMAT",
        help="Input format (sdf, xyz, smi, npz), overriding the extension. "
        "Standard input is guessed from its content when omitted (SMILES must be named).",
    ),
    to_format: Optional[str] = typer.Option(
        None,
        "--to",
        metavar="FORMAT",
        help="Output format (sdf, xyz, smi, npz), overriding the extension; required with OUT '-'.",
    ),
    bonds: BondPerception = typer.Option(
        BondPerception.benchmark,
        "--bonds",
        case_sensitive=False,
        help="How bonds are perceived for SDF/SMILES output when the input has none (XYZ, npz): "
        "'benchmark' uses the distance rules of the QM9 stability metric, which read many aromatic "
        "rings as single bonds (an SDF then marks the atoms short of a valence as radicals; a SMILES "
        "is the molecule the validity metric judges, hydrogens filled in); 'rdkit' assigns bond "
        "orders and charges as a chemist would (RDKit's rdDetermineBonds: benzene, zwitterions). "
        "Bonds present in the input are always kept.",
    ),
    weights: CheckpointWeights = typer.Option(
        CheckpointWeights.ema,
        "--weights",
        case_sensitive=False,
        help="For a training checkpoint: export its EMA weights (the default), or 'raw', the "
        "weights of its last step. At the end of a cosine decay to a small rate the two are close "
        "and either can be the better model; compare both with symdiff evaluate.",
    ),
    guide: Optional[List[str]] = typer.Option(
        None,
        "--guide",
        metavar="MODEL",
        help="For a checkpoint or a release directory IN: ship the main network of release MODEL "
        "(name, directory or Hub id) as the guide that OUT's sampler steers away from "
        "(autoguidance; a weaker model of the same data, e.g. an earlier release). Repeat it "
        "to ship several networks, whose mean prediction is then the guide.",
    ),
    guidance: Optional[float] = typer.Option(
        None,
        "--guidance",
        metavar="W",
        help=f"With --guide: the release's default guidance weight (default {DEFAULT_GUIDANCE_WEIGHT:g}). "
        "For a release IN without --guide: a new default weight for the guide it ships.",
    ),
    guidance_max_t: Optional[int] = typer.Option(
        None,
        "--guidance-max-t",
        metavar="T",
        help="For a release directory IN: its sampler guides only the steps at timesteps <= T "
        "(config.json sampling.guidance_max_t; generate --guidance-max-t overrides it); the model's "
        "number of diffusion steps (1000) or more guides every step.",
        show_default=False,
    ),
    guidance_min_t: Optional[int] = typer.Option(
        None,
        "--guidance-min-t",
        metavar="T",
        help="For a release directory IN: its sampler does not guide the steps at timesteps <= T "
        "(config.json sampling.guidance_min_t; generate --guidance-min-t overrides it); 0 guides down "
        "to the clean molecule.",
        show_default=False,
    ),
    restart_rounds: Optional[int] = typer.Option(
        None,
        "--restart-rounds",
        metavar="N",
        help="For a release directory IN: its sampler restarts chains heading for a radical at most N "
        "times (config.json sampling.restart; generate --restart-rounds overrides it); 0 turns it off.",
        show_default=False,
    ),
    default_steps: Optional[int] = typer.Option(
        None,
        "--default-steps",
        metavar="N",
        help="For a release directory IN: its default number of sampling steps on CPU (config.json "
        "sampling.default_steps_cpu; generate --steps overrides it).",
        show_default=False,
    ),
    default_steps_cuda: Optional[int] = typer.Option(
        None,
        "--default-steps-cuda",
        metavar="N",
        help="For a release directory IN: its default number of sampling steps on a GPU (config.json "
        "sampling.default_steps_cuda; generate --steps overrides it).",
        show_default=False,
    ),
    card_only: bool = typer.Option(
        False,
        "--card-only",
        help="For a release directory IN with OUT the same directory: only render its model card "
        "README.md again, from its config.json and metrics.json; no other file is written.",
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Stop with an error at the first unreadable SDF record or SMILES line instead of "
        "skipping and counting it.",
    ),
    relax: str = typer.Option(
        "none",
        "--relax",
        metavar="xtb|mmff|none",
        help="Relax every molecule before writing it: 'xtb' is GFN2-xTB (the tblite package; the "
        "charge is the input's formal charge, 0 when it has none; singlet or, for an odd electron "
        "count, doublet) minimised by ASE's BFGS to 0.05 eV/A, and needs pip install "
        "'symdiff-cli\\[relax]'; 'mmff' is RDKit's MMFF94 for molecules whose bonds can be assigned "
        "(the others are written as read and counted). SDF output gets the tags symdiff_relax_method, "
        "_status, _converged, _energy_kcal_mol, _energy_drop_kcal_mol and _heavy_rmsd_angstrom. "
        "Ctrl-C keeps the molecules relaxed so far in a complete file.",
    ),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        help="With --relax: processes that relax molecules in parallel (default: the number of cores). "
        "The file is the same for any number.",
    ),
    relax_steps: int = typer.Option(
        300,
        "--relax-steps",
        help="With --relax: optimiser steps at most per molecule; one not converged by then is written "
        "as far as it got, tagged symdiff_relax_converged 0.",
    ),
) -> None:
    """Convert molecule files between XYZ, SDF, SMILES and npz, or a training checkpoint to a release.

    A training checkpoint (IN ending in .pt) is exported to the release format in the
    directory OUT: model.safetensors (EMA weights, or the last step's with --weights raw),
    config.json and a model card README.md; with --guide, guide.safetensors too.

    A release directory IN is written again to OUT (which may be IN): as it is, with the guide
    of --guide, or with the new default weight of --guidance. Its metrics.json is carried over
    unchanged and its model card README.md regenerated from config.json and metrics.json;
    --card-only regenerates the card alone.

    Writing is atomic: after an error no output file is left behind.

    SMILES input is embedded in 3D by RDKit with a fixed seed.

    SMILES output: one canonical SMILES (largest fragment) per line; molecules that RDKit
    cannot sanitise are left out and counted.

    Example: symdiff generate --n 100 --out - | symdiff convert - mols.xyz --from sdf
    """
    from symdiff_cli.chem.quiet import quiet_library_warnings

    with quiet_library_warnings():
        _convert(input_path, output_path, from_format, to_format, bonds, weights, guide, guidance, strict, card_only,
                 relax, workers, relax_steps, guidance_max_t, restart_rounds, default_steps, guidance_min_t,
                 default_steps_cuda)


def _convert(input_path: str, output_path: str, from_format: Optional[str], to_format: Optional[str],
             bonds: BondPerception, weights: CheckpointWeights, guide: Optional[List[str]],
             guidance: Optional[float], strict: bool, card_only: bool = False, relax: str = "none",
             workers: Optional[int] = None, relax_steps: int = 300, guidance_max_t: Optional[int] = None,
             restart_rounds: Optional[int] = None, default_steps: Optional[int] = None,
             guidance_min_t: Optional[int] = None, default_steps_cuda: Optional[int] = None) -> None:
    """convert_command's dispatch: a checkpoint, a release directory, or molecule files."""
    from symdiff_cli.io.paths import refuse_overwriting_inputs

    for name, path in (("IN", input_path), ("OUT", output_path)):
        if not path.strip():  # an unset shell variable: Path("") is the current directory
            raise UsageError(f"{name} is empty: give a file, '-' or a directory")
    for option, value in (("--guidance-max-t", guidance_max_t), ("--guidance-min-t", guidance_min_t),
                          ("--restart-rounds", restart_rounds), ("--default-steps", default_steps),
                          ("--default-steps-cuda", default_steps_cuda)):
        if value is not None and (input_path.endswith(".pt") or not Path(input_path).is_dir()):
            raise UsageError(f"{option} applies only to a release directory IN")
        if value is not None and card_only:
            raise UsageError(f"--card-only writes the card alone: it cannot take {option}")
    if restart_rounds is not None and restart_rounds < 0:
        raise UsageError(f"--restart-rounds must be 0 (off) or more, not {restart_rounds}")
    if guidance_min_t is not None and guidance_min_t < 0:
        raise UsageError(f"--guidance-min-t must be a timestep >= 0 (0: guided to the end), not {guidance_min_t}")
    for option, value in (("--default-steps", default_steps), ("--default-steps-cuda", default_steps_cuda)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be at least 1, not {value}")

    is_model = input_path.endswith(".pt") or Path(input_path).is_dir()
    if is_model and (relax != "none" or workers is not None):
        raise UsageError("--relax and --workers apply to molecule files, not to a checkpoint or release")
    if is_model and output_path == "-":
        raise UsageError("a release is a directory of files and cannot go to standard output: give OUT a directory")
    if card_only and not (Path(input_path).is_dir() and not input_path.endswith(".pt")):
        raise UsageError("--card-only applies only to a release directory IN")
    if input_path.endswith(".pt"):
        from symdiff_cli.engine.export import convert_checkpoint_to_release
        from symdiff_cli.engine.guides import guide_from_releases

        if guidance is not None and not guide:
            raise UsageError("--guidance needs --guide MODEL for a training checkpoint")
        guide_model = guide_from_releases(guide, _weight(guidance)) if guide else None
        out = convert_checkpoint_to_release(input_path, output_path, weights=weights.value, guide=guide_model)
        kind = "EMA" if weights is CheckpointWeights.ema else "raw (last-step)"
        typer.echo(f"Exported the {kind} weights of {input_path} to the release {out}"
                   + (f", guided by {_names(guide)} with weight {guide_model.weight:g}" if guide_model else "") + ".",
                   err=True)
        return
    if Path(input_path).is_dir():
        from symdiff_cli.engine.release_config import is_release_directory

        if not is_release_directory(Path(input_path)):
            if (Path(input_path) / "checkpoint.pt").is_file():
                raise UsageError(f"IN {input_path} is a training run: give its checkpoint, "
                                 f"{Path(input_path) / 'checkpoint.pt'}, to export a release")
            raise UsageError(f"IN {input_path} is a directory but not a symdiff release: convert reads a molecule "
                             "file, a training checkpoint (.pt) or a release directory")
        if weights is not CheckpointWeights.ema:
            raise UsageError("--weights applies only to a training checkpoint (IN ending in .pt)")
        if card_only:
            _render_card(input_path, output_path, guide, guidance)
        else:
            _reguide_release(input_path, output_path, guide, guidance, guidance_max_t, restart_rounds, default_steps,
                             guidance_min_t, default_steps_cuda)
        return
    if weights is not CheckpointWeights.ema:
        raise UsageError("--weights applies only to a training checkpoint (IN ending in .pt)")
    if guide or guidance is not None:
        raise UsageError("--guide and --guidance apply only to a training checkpoint or a release directory")
    refuse_overwriting_inputs({"OUT": output_path}, [input_path])
    _convert_molecules(input_path, output_path, from_format, to_format, bonds.value, strict, relax, workers,
                       relax_steps)


def _weight(guidance: Optional[float]) -> float:
    return DEFAULT_GUIDANCE_WEIGHT if guidance is None else guidance


def _names(guides: List[str]) -> str:
    return " and ".join(guides)


def _render_card(input_path: str, output_path: str, guide: Optional[List[str]], guidance: Optional[float]) -> None:
    """--card-only: render release IN's model card again in place."""
    from symdiff_cli.engine.release import write_model_card

    if guide or guidance is not None:
        raise UsageError("--card-only writes the card alone: it cannot take --guide or --guidance")
    if not Path(output_path).is_dir() or not Path(output_path).samefile(input_path):
        raise UsageError("--card-only renders IN's own card: give OUT the same directory as IN")
    card = write_model_card(Path(input_path).absolute())
    typer.echo(f"Wrote the model card {card}.", err=True)


def _reguide_release(input_path: str, output_path: str, guide: Optional[List[str]], guidance: Optional[float],
                     guidance_max_t: Optional[int] = None, restart_rounds: Optional[int] = None,
                     default_steps: Optional[int] = None, guidance_min_t: Optional[int] = None,
                     default_steps_cuda: Optional[int] = None) -> None:
    """Write release IN to OUT as it is, with a new guide (--guide), a new default weight (--guidance),
    a new guided interval (--guidance-max-t, --guidance-min-t), restart sampling (--restart-rounds) or default
    steps on CPU (--default-steps) and GPU (--default-steps-cuda)."""
    from symdiff_cli.engine.guides import attach_guide, guide_from_releases, resave_release, shipped_guide

    interval = "" if guidance_max_t is None else f", guided at timesteps <= {guidance_max_t}"
    if guidance_min_t is not None:
        interval += f", not guided at timesteps <= {guidance_min_t}" if guidance_min_t else ", guided to the end"
    if restart_rounds is not None:
        interval += f", restart sampling {'off' if restart_rounds == 0 else f'at most {restart_rounds} rounds'}"
    if default_steps is not None:
        interval += f", {default_steps} sampling steps by default on CPU"
    if default_steps_cuda is not None:
        interval += f", {default_steps_cuda} sampling steps by default on a GPU"
    if not guide and guidance is None:
        out = resave_release(input_path, output_path, guidance_max_t, restart_rounds, default_steps, guidance_min_t,
                             default_steps_cuda)
        typer.echo(f"Wrote the release {out} again (same weights and settings{interval}, model card regenerated).",
                   err=True)
        return
    if guide:
        new_guide = guide_from_releases(guide, _weight(guidance))
    elif guidance is not None:
        new_guide = shipped_guide(input_path, guidance)
        if new_guide is None:
            raise UsageError(f"{input_path} ships no guide: pass --guide MODEL to add one")
    out = attach_guide(input_path, output_path, new_guide, guidance_max_t=guidance_max_t,
                       restart_rounds=restart_rounds, default_steps_cpu=default_steps, guidance_min_t=guidance_min_t,
                       default_steps_cuda=default_steps_cuda)
    typer.echo(f"Wrote the release {out} with guidance weight {new_guide.weight:g}"
               + (f" and the guide {_names(guide)}" if guide else "") + interval + ".", err=True)
