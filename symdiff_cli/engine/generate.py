"""`symdiff generate`: sample molecules from a release and stream them into a file.

Reproducibility: the molecules depend only on the model, --seed, --shard, --n, --num-atoms,
--batch-size, --steps, --spacing, --guidance, --guide, --restart-rounds, --condition and the device. Shard I of K derives its
own seed from (seed, I, K), so shards of a job array never share a random stream, and it
generates its own share of n (n split as evenly as possible). Every batch of the plan carries
its own seed, so the file is the same however the run is scheduled. --relax, --relax-steps,
--keep and --max-attempts change the file too (not --workers); engine/keep.py says how --keep
plans its further rounds.

Output is streamed batch by batch through MoleculeWriter, which writes a temporary file and
renames it into place: an error leaves no file; Ctrl-C, SIGTERM (timeout, Slurm's time limit,
pre-emption) and SIGHUP leave a complete file holding the finished batches and exit with the
shell's code for the signal (130, 143, 129), so a pipeline or job script can tell the output is
short. Planning is lazy (PLAN_CHUNK molecules at a time) and the summary keeps running sums, so
memory does not grow with --n.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

# generate() looks these up here, so tests can watch what reaches the sampler.
from symdiff_cli.engine.conditions import values_outside_training
from symdiff_cli.engine.denoiser import autoguided_denoiser, valence_guided
from symdiff_cli.engine.keep import BatchPipeline, MetricCounts, check_keep_options
from symdiff_cli.engine.shards import iter_plan_for_shard, parse_shard, shard_seed_sequence, shard_share
from symdiff_cli.errors import SymdiffError, UsageError
from symdiff_cli.model.config import DEFAULT_SPACING, SPACING_CHOICES

if TYPE_CHECKING:  # torch is imported only when a command runs, so that --help stays fast
    import torch

    from symdiff_cli.engine.release import ReleasedModel
    from symdiff_cli.engine.sample_config import SampleConfig
    from symdiff_cli.engine.sampling import Sampler
    from symdiff_cli.engine.stop_signals import StopSignals
    from symdiff_cli.io.writer import MoleculeWriter

PRECISION_CHOICES = ("auto", "fp32", "bf16")
DEFAULT_BATCH_SIZE_CPU = 256
DEFAULT_BATCH_SIZE_CUDA = 1024
INTERRUPTED_EXIT_CODE = 130


@dataclass
class GenerateOptions:
    """Everything `symdiff generate` was asked to do (the CLI's options, unparsed defaults None)."""

    n: int
    out: str
    fmt: str | None = None
    batch_size: int | None = None
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    num_atoms: int | None = None
    model: str | None = None
    offline: bool = False
    shard: str | None = None
    quiet: bool = False
    threads: int | None = None
    precision: str = "auto"
    spacing: str = DEFAULT_SPACING
    guidance: float | None = None  # autoguidance weight; None: the release's (1 = the main model alone)
    guide: Sequence[str] | None = None  # other releases as the guide (their mean), in place of the release's own
    valence_guidance: float | None = None  # valence-guidance scale; None: the release's (0 = off)
    guidance_max_t: int | None = None  # noisiest guided timestep; None: the release's (its T: every one)
    guidance_min_t: int | None = None  # no guide at timesteps <= it; None: the release's (0: guided to the end)
    restart_rounds: int | None = None  # restart sampling of radicals (engine/restart.py); None: the release's
    # Relaxation and filtering (engine/keep.py): --relax, --workers, --relax-steps, --keep, --max-attempts.
    relax: str = "none"
    workers: int | None = None
    relax_steps: int | None = None
    keep: str = "all"
    max_attempts: int | None = None  # over all shards, like n; None: 10 n
    # A conditional model's requests: "alpha=80" (fixed) or "alpha" (drawn); unnamed ones are drawn.
    condition: Sequence[str] | None = None
    condition_guidance: float | None = None  # guidance on the condition; None: the release's (1 = off)


@dataclass
class GenerateResult:
    """What a run produced: `out` holds `written` molecules (none: no file; beside --out, `kept`, after a stop)."""

    requested: int
    written: int
    skipped: int
    seconds: float
    shard: tuple[int, int]
    out: str
    interrupted: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    stop_signal: int | None = None  # the signal that stopped the run (SIGINT, SIGTERM, SIGHUP)
    non_finite: int = 0  # molecules left out because their sampled coordinates were not finite
    pipeline: Any = None  # engine/keep.py PipelineSummary when relaxing or filtering, else None
    kept: str | None = None  # the file at --out, left as it was by an interrupted run

    @property
    def molecules_per_second(self) -> float:
        return (self.written + self.skipped) / self.seconds if self.seconds > 0 else 0.0  # sampled, not kept

    @property
    def exit_code(self) -> int:
        """0, or the shell's code for the stop signal (130 SIGINT, 143 SIGTERM, 129 SIGHUP)."""
        from symdiff_cli.engine.stop_signals import exit_code_for

        return 0 if self.stop_signal is None else exit_code_for(self.stop_signal)


# --------------------------------------------------------------------------------------
# Options


def _check_options(opts: GenerateOptions) -> None:
    """The checks that need no model, done before anything slow."""
    if opts.n < 1:
        raise UsageError(f"--n must be at least 1, not {opts.n}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {opts.batch_size}")
    if opts.steps is not None and opts.steps < 1:
        raise UsageError(f"--steps must be at least 1, not {opts.steps}")
    if opts.num_atoms is not None and opts.num_atoms < 1:
        raise UsageError(f"--num-atoms must be at least 1, not {opts.num_atoms}")
    if opts.threads is not None and opts.threads < 1:
        raise UsageError(f"--threads must be at least 1, not {opts.threads}")
    if opts.seed < 0:
        raise UsageError(f"--seed must not be negative, not {opts.seed}")
    if opts.precision not in PRECISION_CHOICES:
        raise UsageError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, not {opts.precision!r}")
    if opts.spacing not in SPACING_CHOICES:
        raise UsageError(f"--spacing must be one of {', '.join(SPACING_CHOICES)}, not {opts.spacing!r}")
    if opts.guidance is not None and not (math.isfinite(opts.guidance) and opts.guidance >= 0):
        raise UsageError(f"--guidance must be a number >= 0 (1: no guidance), not {opts.guidance}")
    if opts.guidance_max_t is not None and opts.guidance_max_t < 0:
        raise UsageError(f"--guidance-max-t must be a timestep >= 0, not {opts.guidance_max_t}")
    if opts.guidance_min_t is not None and opts.guidance_min_t < 0:
        raise UsageError(f"--guidance-min-t must be a timestep >= 0 (0: guided to the end), not {opts.guidance_min_t}")
    if opts.restart_rounds is not None and opts.restart_rounds < 0:
        raise UsageError(f"--restart-rounds must be 0 (off) or more, not {opts.restart_rounds}")
    if opts.condition_guidance is not None and not (math.isfinite(opts.condition_guidance)
                                                    and opts.condition_guidance >= 0):
        raise UsageError(f"--condition-guidance must be a number >= 0 (1: off), not {opts.condition_guidance}")
    if opts.valence_guidance is not None and not (math.isfinite(opts.valence_guidance) and opts.valence_guidance >= 0):
        raise UsageError(f"--valence-guidance must be a number >= 0 (0: off), not {opts.valence_guidance}")
    check_keep_options(opts.keep, opts.n, opts.max_attempts, opts.relax, opts.workers,
                       1 if opts.relax_steps is None else opts.relax_steps)


def _tag_molecules(mols: list, with_metrics: bool) -> list:
    """Give each molecule the per-molecule metric tags; returns the metric reports (empty when
    not computed)."""
    from symdiff_cli.chem.metrics import evaluate_molecule
    from symdiff_cli.chem.rdkit_mol import heavy_atom_smiles

    reports = []
    for mol in mols:
        if with_metrics:
            report = evaluate_molecule(mol)
            reports.append(report)
            mol.props["symdiff_stable"] = "1" if report.stable else "0"
            mol.props["symdiff_valid"] = "1" if report.valid else "0"
            mol.props["smiles"] = heavy_atom_smiles(report.smiles) or ""
    return reports


# --------------------------------------------------------------------------------------
# Progress reports (shown by the CLI, commands/generate.py)


class GenerateProgress:
    """What `generate` reports while it samples. This base reports to no one; the command line
    shows a progress bar by overriding it, so the engine never draws on the terminal itself."""

    def start(self, total_molecules: int, steps: int) -> None:
        """Sampling begins: `total_molecules` in this shard, `steps` denoising steps each."""

    def on_step(self, molecules: int) -> None:
        """One denoising step advanced `molecules` molecules."""

    def batch_done(self, done: int) -> None:
        """`done` molecules are finished and in the file."""

    def relaxed(self, done: int, total: int) -> None:
        """`done` of the current batch's `total` molecules are relaxed (--relax)."""

    def note(self, message: str) -> None:
        """A warning before sampling: the run goes ahead, but may not give what was meant."""

    def stop(self) -> None:
        """Sampling ended (finished, interrupted or failed)."""


# --------------------------------------------------------------------------------------
# The run


def _finite_only(mols: list) -> list:
    """The molecules whose coordinates are all finite (a diverged sample has NaN or inf)."""
    return [mol for mol in mols if np.isfinite(mol.positions).all()]


@dataclass
class _RunCounts:
    """What the file holds after the last complete batch, and the metric sums of those molecules."""

    sampled: int = 0  # molecules of the batches handed to the writer completely, non-finite ones included
    in_file: int = 0
    left_out: int = 0  # left out by the writer (SMILES output: no valid SMILES)
    non_finite: int = 0
    totals: MetricCounts = field(default_factory=MetricCounts)


def _sample_config(opts: GenerateOptions, release: ReleasedModel, device: torch.device,
                   guidance_weight: float) -> SampleConfig:
    """The release's sampling defaults on this device, overridden by the options."""
    from symdiff_cli.engine.release_config import guided_interval_max_t, guided_interval_min_t
    from symdiff_cli.engine.sample_config import SampleConfig

    defaults = release.sample_config(device.type)
    steps = opts.steps if opts.steps is not None else defaults.steps  # defaults are checked at load
    # On CPUs bf16 measured no faster end to end: the network is faster in bf16 at large
    # batches, but a run's batches (one atom count each) are mostly too small to pay for the
    # casts (docs/training.md), so auto keeps float32 there.
    use_bf16 = opts.precision == "bf16" or (opts.precision == "auto" and device.type == "cuda")
    max_t = None if guidance_weight == 1.0 else guided_interval_max_t(opts.guidance_max_t, release.config,
                                                                      release.cfg.timesteps)
    min_t = None if guidance_weight == 1.0 else guided_interval_min_t(opts.guidance_min_t, release.config)
    return SampleConfig(steps=steps, spacing=opts.spacing, guidance_weight=guidance_weight,
                        valence_guidance=defaults.valence_guidance, autocast_bf16=use_bf16,
                        guidance_max_t=max_t, guidance_min_t=min_t, restart=defaults.restart,
                        ).with_valence_scale(opts.valence_guidance).with_restart_rounds(opts.restart_rounds)


def release_sampler(opts: GenerateOptions, release: ReleasedModel,
                    device: torch.device) -> tuple[Sampler, SampleConfig, int]:
    """The sampler of a loaded release at the options' settings, those settings, and the batch size."""
    from symdiff_cli.engine.sampling import Sampler

    cfg = release.cfg
    if opts.num_atoms is not None and opts.num_atoms > cfg.max_atoms:
        raise UsageError(f"--num-atoms {opts.num_atoms} is above this model's maximum of {cfg.max_atoms} atoms")
    if opts.steps is not None and opts.steps > cfg.timesteps:
        raise UsageError(f"--steps {opts.steps} is above the model's {cfg.timesteps} diffusion steps")
    batch_size = opts.batch_size or (DEFAULT_BATCH_SIZE_CUDA if device.type == "cuda" else DEFAULT_BATCH_SIZE_CPU)
    if opts.guidance_max_t is not None and opts.guidance_max_t > cfg.timesteps:
        raise UsageError(f"--guidance-max-t {opts.guidance_max_t} is above the model's {cfg.timesteps} diffusion steps")
    denoiser, weight = autoguided_denoiser(release, opts.guidance, opts.guide, opts.offline, not opts.quiet,
                                           opts.guidance_max_t, _condition_guidance(opts, release),
                                           opts.guidance_min_t)
    denoiser = valence_guided(denoiser, release, opts.valence_guidance)
    sample_config = _sample_config(opts, release, device, weight)
    return (Sampler.from_config(denoiser, cfg, device, sample_config, _condition_source(opts, release)),
            sample_config, batch_size)


def _condition_guidance(opts: GenerateOptions, release: ReleasedModel) -> float:
    """The scale of guidance on the condition: the option, else the release's (config.json
    sampling.condition_guidance), else 1 (off)."""
    from symdiff_cli.engine.release_config import CONDITION_GUIDANCE_KEY

    scale = opts.condition_guidance
    if scale is None:
        scale = release.config.get("sampling", {}).get(CONDITION_GUIDANCE_KEY, 1.0)
    if scale != 1.0 and not release.cfg.conditions:
        raise UsageError("--condition-guidance needs a conditional model")
    return float(scale)


def _condition_source(opts: GenerateOptions, release: ReleasedModel):
    """What a conditional release is asked for (engine/conditions.py); None for an unconditional one."""
    from symdiff_cli.engine.conditions import ConditionDraws, parse_condition_specs

    chosen = parse_condition_specs(list(opts.condition or []), release.cfg, opts.model or release.path.name)
    return ConditionDraws.for_release(release.cfg, release.config, chosen) if release.cfg.conditions else None


def _sample_into(writer: MoleculeWriter, opts: GenerateOptions, fmt: str, shard: tuple[int, int], n_shard: int,
                 device: torch.device, stops: StopSignals, progress: GenerateProgress, counts: _RunCounts,
                 pipeline: BatchPipeline) -> None:
    """Load the release, sample this shard batch by batch and hand each batch to `writer`;
    `counts` follows every complete batch, so an interruption knows what the file holds."""
    from symdiff_cli.engine.release import load_release
    from symdiff_cli.io.formats import round_to_stored_precision

    # The release's own guide is read only when it will be called: --guidance 1 samples
    # the main model alone and --guide replaces it, so a damaged guide file blocks neither.
    release = load_release(opts.model, device, offline=opts.offline, show_progress=not opts.quiet,
                           load_guide=opts.guidance != 1.0 and not opts.guide)
    sampler, sample_config, batch_size = release_sampler(opts, release, device)
    for line in values_outside_training(list(opts.condition or []), release, opts.model):
        progress.note(line)
    steps = sample_config.steps
    plan = iter_plan_for_shard(release.histogram, n_shard, opts.num_atoms, batch_size, opts.seed, shard)
    plan = pipeline.plan(plan, release.histogram, opts.num_atoms, batch_size, shard_seed_sequence(opts.seed, *shard))
    # Metrics feed the SDF tags and the summary; skip them when neither is wanted.
    with_metrics = fmt == "sdf" or not opts.quiet or pipeline.needs_metrics
    name_prefix = f"symdiff-seed{opts.seed}-" + (f"shard{shard[0]}of{shard[1]}-" if shard[1] > 1 else "")
    progress.start(n_shard, steps)
    try:
        for mols in sampler.sample(plan, steps, on_step=progress.on_step):
            # Tags and summary from the coordinates the file will hold, so that `symdiff
            # evaluate` on the file agrees with them molecule by molecule.
            round_to_stored_precision(mols, fmt)
            # Names are given before the non-finite ones are dropped: the gap in the
            # numbering shows which were left out, and the others keep their names.
            for k, mol in enumerate(mols):
                mol.props["name"] = f"{name_prefix}{counts.sampled + k:07d}"
            finite = _finite_only(mols)
            pipeline.count_sampled(len(mols))
            pipeline.relax_and_measure(finite, fmt)  # relaxes in place: the tags describe the result
            batch_reports = _tag_molecules(finite, with_metrics)
            kept, batch_reports = pipeline.keep_passing(finite, batch_reports)
            with stops.deferred():
                writer.write(kept)
                counts.totals.add(batch_reports)
                counts.non_finite += len(mols) - len(finite)
                counts.sampled += len(mols)
                counts.in_file, counts.left_out = writer.written, writer.skipped
            stops.raise_if_received()
            progress.batch_done(pipeline.done(counts.sampled))
    finally:
        progress.stop()
    if counts.non_finite == counts.sampled > 0:
        raise SymdiffError(f"all {counts.sampled} sampled molecules have non-finite coordinates "
                           "(the model diverged); nothing was written")


def generate(opts: GenerateOptions, progress: GenerateProgress | None = None) -> GenerateResult:
    """Sample `opts.n` molecules (this shard's share) and write them to `opts.out`, reporting to
    `progress` as batches advance.

    SIGINT, SIGTERM and SIGHUP stop the run with the finished batches kept in a complete file
    (`stop_signal` says which). Molecules with non-finite coordinates are left out and counted
    in `non_finite`; a run in which every molecule is non-finite is an error.
    """
    import torch

    progress = progress or GenerateProgress()
    from symdiff_cli.engine.device import resolve_device
    from symdiff_cli.engine.stop_signals import StopSignals, signal_of
    from symdiff_cli.io.formats import STDIO_PATH, resolve_format
    from symdiff_cli.io.writer import MoleculeWriter

    _check_options(opts)
    shard = parse_shard(opts.shard)
    n_shard = shard_share(opts.n, *shard)
    if n_shard == 0:
        raise UsageError(f"shard {shard[0]}/{shard[1]} gets no molecules: --n {opts.n} is less than the {shard[1]} shards")
    fmt = opts.fmt or ("sdf" if opts.out == STDIO_PATH else None)
    fmt = resolve_format(opts.out, fmt)
    device = resolve_device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    from symdiff_cli.chem.relax import require_method

    if opts.relax != "none":
        require_method(opts.relax)  # a missing optional package fails before the model loads
    max_attempts = None if opts.max_attempts is None else shard_share(opts.max_attempts, *shard)
    pipeline = BatchPipeline(opts.relax, opts.keep, n_shard, max_attempts, opts.workers, opts.relax_steps,
                             on_relaxed=progress.relaxed)

    started = time.perf_counter()
    counts = _RunCounts()
    stop_signal: int | None = None
    with StopSignals() as stops:
        # Deferred: a signal between creating the temporary file and holding it in `writer`
        # would leave a .partial file that nothing removes.
        with stops.deferred():
            writer = MoleculeWriter(opts.out, fmt)  # checks the output path before the slow model load
        try:
            stops.raise_if_received()
            _sample_into(writer, opts, fmt, shard, n_shard, device, stops, progress, counts, pipeline)
        except KeyboardInterrupt as interrupt:
            stop_signal = signal_of(interrupt)
            with stops.deferred():
                # The finished batches form a complete, shorter file; with none finished, no file.
                writer.abort(keep=counts.in_file + counts.left_out > 0)
        except BaseException:
            with stops.deferred():
                writer.abort(keep=False)
            raise
        else:
            with stops.deferred():
                pipeline.close()
                # --keep with nothing passing: no empty file (the error says so), the previous file stays.
                writer.abort(keep=False) if pipeline.nothing_kept else writer.close()
            counts.in_file, counts.left_out = writer.written, writer.skipped
        finally:
            pipeline.close(interrupted=True)  # after an error or a stop: end the relaxation workers at once
    return GenerateResult(requested=n_shard, written=counts.in_file, skipped=counts.left_out,
                          seconds=time.perf_counter() - started, shard=shard, out=writer.final_path,
                          kept=None if writer.final_path == opts.out else opts.out, interrupted=stop_signal is not None,
                          metrics=counts.totals.as_dict(), stop_signal=stop_signal, non_finite=counts.non_finite,
                          pipeline=pipeline.summary if pipeline.active else None)
