"""`symdiff generate`: parse the options and hand them to symdiff_cli.engine.generate."""

from __future__ import annotations

from typing import List, Optional

import typer

from symdiff_cli.engine.generate import GenerateProgress, GenerateResult
from symdiff_cli.model.config import DEFAULT_SPACING, SPACING_CHOICES

_FORMATS = ("sdf", "xyz", "smi", "npz")


# Display (stderr only: stdout may carry the molecules)


class RichProgress(GenerateProgress):
    """A Rich progress bar on stderr in molecule-steps (a smooth ETA) showing molecules done / total."""

    def __init__(self, description: str):
        self.description = description
        self.steps = 1
        self._bar = None
        self._relax_task = None

    def start(self, total_molecules: int, steps: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.steps = steps
        self._bar = Progress(
            TextColumn(self.description),
            BarColumn(),
            TextColumn("{task.fields[done]}/{task.fields[total_molecules]} molecules"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task(self.description, total=total_molecules * steps, done=0,
                                        total_molecules=total_molecules)
        self._bar.start()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def note(self, message: str) -> None:
        from rich.console import Console

        Console(stderr=True, highlight=False).print(f"[yellow]Warning:[/yellow] {message}")

    def on_step(self, molecules: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, molecules)

    def batch_done(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, done=done, completed=done * self.steps)
            if self._relax_task is not None:
                self._bar.update(self._relax_task, visible=False)

    def relaxed(self, done: int, total: int) -> None:
        """A second line counts the molecules of the current batch as they are relaxed."""
        if self._bar is None:
            return
        if self._relax_task is None:
            self._relax_task = self._bar.add_task("relaxing", total=total, done=0, total_molecules=total)
        self._bar.update(self._relax_task, visible=True, total=total, done=done, total_molecules=total,
                         completed=done)


def print_summary(result: GenerateResult) -> None:
    """The closing lines on stderr: what was written where, how fast, and the metrics."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    where = "standard output" if result.out == "-" else result.out
    shard = f" (shard {result.shard[0]}/{result.shard[1]})" if result.shard[1] > 1 else ""
    head = "Wrote"
    if result.interrupted:
        import os
        import signal

        from symdiff_cli.engine.stop_signals import signal_name

        by = "" if result.stop_signal in (None, signal.SIGINT) else f" by {signal_name(result.stop_signal)}"
        if result.written + result.skipped == 0:
            as_it_was = f" ({where} is as it was)" if os.path.exists(result.out) else ""
            console.print(f"Interrupted{by} before a molecule was finished{shard}: nothing was written{as_it_was}")
            return
        head = f"Interrupted{by}: wrote"
    of = f" of {result.requested}" if result.interrupted else ""
    if result.written == 0 and result.pipeline is not None and not result.interrupted:
        console.print(f"No molecule passed --keep {result.pipeline.keep}{shard} in {result.seconds:.1f} s: "
                      "nothing was written")
    else:
        console.print(
            f"{head} {result.written}{of} molecules{shard} to {where} in {result.seconds:.1f} s "
            f"({result.molecules_per_second:.2f} molecules/s)"
            + (f"; {result.kept} was left as it was" if result.kept else "")
        )
    if result.non_finite:
        console.print(f"{result.non_finite} molecules with non-finite coordinates (a diverged sample) were left out; "
                      "the gaps in the numbering of the names show which")
    if result.skipped:
        console.print(f"{result.skipped} molecules without a valid SMILES were left out of the SMILES file")
    if result.metrics:
        m = result.metrics
        written = "of the written molecules: " if result.pipeline is not None else ""
        console.print(
            f"{written}atom stability {100 * m['atom_stability']:.1f} %, molecule stability "
            f"{100 * m['molecule_stability']:.1f} %, validity {100 * m['validity']:.1f} %"
        )
    if result.pipeline is not None:
        from symdiff_cli.commands.relax_summary import pipeline_lines

        for line in pipeline_lines(result.pipeline):
            console.print(line)


def generate_command(
    n: int = typer.Option(..., "--n", "-n", help="Number of molecules (with --shard: in all shards together)."),
    out: str = typer.Option(..., "--out", "-o", help="Output file, or '-' for standard output (SDF unless --format)."),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", help=f"Output format: {'|'.join(_FORMATS)} (default: from the --out extension)."
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Molecules per batch (default 256 on CPU, 1024 on CUDA); changes the molecules drawn."
    ),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="Denoising steps (default: the model's own for the device, config.json "
        "sampling.default_steps_cpu or _cuda; qm9: 50 on CPU, 100 on a GPU; 1000 on a GPU for releases that do not say)."
    ),
    spacing: str = typer.Option(
        DEFAULT_SPACING, "--spacing",
        help=f"{'|'.join(SPACING_CHOICES)}: where the --steps fall among the model's noise levels, "
             "step i of S at t = T (1 - i/S)^p with p = 3, 2 or 1. cubic (the default) and quadratic "
             "crowd them at low noise, where bond lengths are set (more stable molecules at the same "
             "cost); uniform spaces them evenly. At --steps 1000 all three are every noise level.",
    ),
    guidance: Optional[float] = typer.Option(
        None, "--guidance", metavar="W",
        help="Autoguidance weight: each step extrapolates from a weaker guide model towards the main "
             "one, eps_guide + W (eps_main - eps_guide), for more stable molecules at the guide's extra "
             "cost per step (each step also runs the guide's networks: two for the shipped model). "
             "1 samples the main model alone. Default: the model's own (qm9: 5; see its "
             "README.md).",
    ),
    guide: Optional[List[str]] = typer.Option(
        None, "--guide", metavar="MODEL",
        help="Another release (name, directory or Hub id) to guide with instead of the model's own "
             "guide; it must model the same atom types and noise schedule. Repeat it to guide with "
             "the mean of several releases' predictions. Needs --guidance for a model that ships no "
             "guide.",
    ),
    guidance_max_t: Optional[int] = typer.Option(
        None, "--guidance-max-t", metavar="T",
        help="Guide only the steps at timesteps <= T (of the model's 1000 noise levels); the noisier "
             "steps run the main model alone, which skips the guide's networks there. The model's "
             "own setting by default (qm9: 600; see its README.md); 1000 guides every step.",
        show_default=False,
    ),
    guidance_min_t: Optional[int] = typer.Option(
        None, "--guidance-min-t", metavar="T",
        help="Do not guide the steps at timesteps <= T: the last, quietest steps run the main model alone "
             "(the two networks nearly agree there, and skipping the guide saves its calls). The model's "
             "own setting by default (see its README.md; older releases guide to the end); 0 guides every "
             "step down to the clean molecule.",
        show_default=False,
    ),
    restart_rounds: Optional[int] = typer.Option(
        None, "--restart-rounds", metavar="N",
        help="Restart sampling of radicals: when the chain reaches t = 50 (of 1000), a molecule whose "
             "clean estimate has an odd number of electrons (a radical, which no geometry makes stable) "
             "is noised back to t = 400 and sampled again from there, at most N times; the check reads "
             "the network's own atom types, and no molecule is dropped or edited. Costs the re-run steps "
             "of the restarted molecules. 0 turns it off. Default: the model's own (qm9: see its "
             "README.md; off for older releases).",
        show_default=False,
    ),
    condition: Optional[List[str]] = typer.Option(
        None, "--condition", metavar="PROP[=VALUE]",
        help="For a conditional model (e.g. qm9-alpha): generate molecules with this property value, "
             "--condition alpha=80, in the property's units (alpha Bohr^3; gap, homo, lumo meV; mu D; "
             "Cv cal/(mol K)). --condition alpha, or no --condition, draws each molecule's value with its "
             "atom count from the model's training data. Each SDF record gets the tag "
             "symdiff_condition_PROP with its requested value, which `symdiff evaluate --property` reads.",
    ),
    condition_guidance: Optional[float] = typer.Option(
        None, "--condition-guidance", metavar="S",
        help="For a conditional model: guidance on the condition (classifier-free guidance), eps = "
             "eps_without + S (eps_with - eps_without), where 'without' is the same network with its "
             "condition left out; above 1 it follows the requested value more closely, at one more "
             "network call per step. 1 turns it off. Default: the model's own (see its README.md).",
        show_default=False,
    ),
    valence_guidance: Optional[float] = typer.Option(
        None, "--valence-guidance", metavar="S",
        help="Valence guidance scale: at every step below the model's noise threshold, move the "
             "predicted clean molecule down the gradient of a smooth valence energy (soft bond orders "
             "from the benchmark's distance thresholds against each atom type's valence), steering "
             "atom types and bonds towards molecules whose atoms all have their valence. 0 turns it "
             "off. Default: the model's own (see its README.md; none for older releases).",
        show_default=False,
    ),
    relax: str = typer.Option(
        "none", "--relax", metavar="xtb|mmff|none",
        help="Relax every sample before it is written: 'xtb' is GFN2-xTB (the tblite package, charge 0, "
             "singlet or, for an odd electron count, doublet) minimised by ASE's BFGS to 0.05 eV/A; "
             "needs pip install 'symdiff-cli\\[relax]'. 'mmff' is RDKit's MMFF94 for molecules whose bonds "
             "can be assigned (others are written as sampled and counted). SDF records get the tags "
             "symdiff_relax_method, _status, _converged, _energy_kcal_mol, _energy_drop_kcal_mol and "
             "_heavy_rmsd_angstrom; the stability and validity tags describe the relaxed molecule.",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers",
        help="Processes that relax molecules in parallel (default: the number of cores). The file is "
             "the same for any number.",
    ),
    relax_steps: int = typer.Option(
        300, "--relax-steps",
        help="Optimiser steps at most per molecule; one that has not converged by then is written as "
             "far as it got, tagged symdiff_relax_converged 0.",
    ),
    keep: str = typer.Option(
        "all", "--keep", metavar="all|valid|stable",
        help="Write only molecules that pass, and sample on until --n have: 'valid' (RDKit sanitises "
             "the perceived bonds) or 'stable' (the benchmark's molecule stability), judged after "
             "--relax if given. Rejected molecules leave gaps in the numbering of the names. The summary "
             "gives the acceptance rate and the metrics before filtering.",
    ),
    max_attempts: Optional[int] = typer.Option(
        None, "--max-attempts",
        help="With --keep valid|stable: sample at most this many molecules (over all shards, like "
             "--n; default 10 x --n). Fewer than --n passing by then is an error, with the ones that "
             "passed kept in the file.",
        show_default=False,
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed and options give the same file."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cpu, cuda or cuda:N."),
    num_atoms: Optional[int] = typer.Option(
        None, "--num-atoms", help="Atoms per molecule (default: drawn from the training-set size histogram)."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="A name in weights/, a release directory, or a Hugging Face Hub id org/name or "
             "org/name@revision (default: qm9).",
    ),
    offline: bool = typer.Option(False, "--offline", help="Use only the local Hugging Face cache for Hub models."),
    shard: Optional[str] = typer.Option(
        None, "--shard",
        help="I/K: generate shard I of K with its own seeds and share of --n "
             "(default: from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary on stderr."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for PyTorch (default: PyTorch's choice)."),
    precision: str = typer.Option(
        "auto", "--precision",
        help="auto|fp32|bf16: run the network in bf16 autocast (the update maths stays float32). "
             "auto: bf16 on CUDA, fp32 on CPU (where bf16 is no faster; docs/training.md).",
    ),
) -> None:
    """Sample 3D molecules from a SymDiff model.

    Molecules are written as their batches finish; the file appears complete or not at all.
    Ctrl-C, SIGTERM (timeout, Slurm) and SIGHUP keep the finished molecules in a complete file
    and exit with code 130, 143 and 129. A molecule whose sampled coordinates are not finite
    (NaN or infinity: the sample diverged) is left out and counted in the summary; the others
    keep their names, so the gap in the numbering shows which. With --out - and a reader that
    stops early (| head), the run ends quietly with code 141, as Unix tools do on SIGPIPE.
    SDF records carry perceived bonds and the tags symdiff_stable, symdiff_valid and smiles.

    --relax relaxes each sample (GFN2-xTB or MMFF94) and --keep writes only those that pass,
    sampling until --n have; same seed and options give the same file, and the summary shows
    the raw samples' metrics beside what relaxation and filtering changed.
    """
    from symdiff_cli.chem.quiet import quiet_library_warnings
    from symdiff_cli.engine.generate import GenerateOptions, generate

    # The SDF tags perceive every molecule with RDKit, which logs a warning for each odd one.
    with quiet_library_warnings():
        result = generate(GenerateOptions(
            n=n, out=out, fmt=fmt, batch_size=batch_size, steps=steps, seed=seed, device=device,
            num_atoms=num_atoms, model=model, offline=offline, shard=shard, quiet=quiet, threads=threads,
            precision=precision, spacing=spacing, guidance=guidance, guide=guide,
            guidance_max_t=guidance_max_t, guidance_min_t=guidance_min_t,
            valence_guidance=valence_guidance, relax=relax, workers=workers, relax_steps=relax_steps,
            keep=keep, max_attempts=max_attempts, condition=condition,
            condition_guidance=condition_guidance, restart_rounds=restart_rounds,
        ), progress=None if quiet else RichProgress("sampling"))
    if not quiet:
        print_summary(result)
    if result.exit_code:
        raise typer.Exit(result.exit_code)
    if result.pipeline is not None and result.pipeline.short:
        from symdiff_cli.errors import SymdiffError

        p = result.pipeline
        where = f"they are in {result.out}" if p.kept else "no file was written"
        raise SymdiffError(f"only {p.kept} of {p.target} molecules passed --keep {p.keep} in {p.attempts} attempts "
                           f"(acceptance {100 * p.acceptance:.1f} %); {where}. Raise --max-attempts")
