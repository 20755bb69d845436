"""`symdiff generate`: sample molecules from a release and stream them into a file.

Reproducibility: the molecules depend only on the model, --seed, --shard, --n, --num-atoms,
--batch-size, --steps, --spacing, --guidance, --guide and the device. Shard I of K derives its
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
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from symdiff_cli.errors import SymdiffError, UsageError
from symdiff_cli.model.config import DEFAULT_SPACING, SPACING_CHOICES

if TYPE_CHECKING:  # torch is imported only when a command runs, so that --help stays fast
    import torch

    from symdiff_cli.engine.release import ReleasedModel
    from symdiff_cli.model.config import ModelConfig
    from symdiff_cli.model.valence import ValenceGuidanceSettings

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
    # Relaxation and filtering (engine/keep.py): --relax, --workers, --relax-steps, --keep, --max-attempts.
    relax: str = "none"
    workers: int | None = None
    relax_steps: int | None = None
    keep: str = "all"
    max_attempts: int | None = None  # over all shards, like n; None: 10 n


@dataclass
class GenerateResult:
    """What a run produced. `interrupted`: a stop signal ended it early; the file holds `written` molecules."""

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

    @property
    def molecules_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0, or the shell's code for the stop signal (130 SIGINT, 143 SIGTERM, 129 SIGHUP)."""
        from symdiff_cli.engine.stop_signals import exit_code_for

        return 0 if self.stop_signal is None else exit_code_for(self.stop_signal)


# --------------------------------------------------------------------------------------
# Sharding and seeds


def parse_shard(text: str | None, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(index, count) from "I/K", else from a Slurm job array, else (0, 1).

    Slurm numbers array tasks from SLURM_ARRAY_TASK_MIN (often 0 or 1), so the index is the
    task id minus that minimum; SLURM_ARRAY_TASK_COUNT is the number of tasks.
    """
    environ = os.environ if environ is None else environ
    if text is None or not text.strip():
        task_id, task_count = environ.get("SLURM_ARRAY_TASK_ID"), environ.get("SLURM_ARRAY_TASK_COUNT")
        if task_id is None or task_count is None:
            return 0, 1
        try:
            index = int(task_id) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = int(task_count)
        except ValueError:
            raise UsageError(
                f"cannot read the Slurm job array (SLURM_ARRAY_TASK_ID={task_id!r}, "
                f"SLURM_ARRAY_TASK_COUNT={task_count!r}); pass --shard I/K"
            ) from None
        source = f"the Slurm job array (task {task_id} of {task_count})"
    else:
        parts = text.strip().split("/")
        try:
            index, count = (int(p) for p in parts)
        except ValueError:
            raise UsageError(f"--shard must look like I/K (e.g. 0/4), not {text!r}") from None
        source = f"--shard {text}"
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"{source}: shard index must be in 0..K-1 with K >= 1, got {index}/{count}")
    return index, count


def shard_share(n: int, index: int, count: int) -> int:
    """Molecules shard `index` of `count` generates: n split as evenly as possible."""
    return n // count + (1 if index < n % count else 0)


def shard_seed_sequence(seed: int, index: int, count: int) -> np.random.SeedSequence:
    """The root of all randomness of one shard; distinct (seed, I, K) give independent streams."""
    return np.random.SeedSequence([int(seed), int(index), int(count)])


# Molecules planned at a time. A shard of up to this many molecules gets the plan it always had
# (every atom count drawn, then grouped by size); a larger one is planned chunk by chunk, so that
# memory follows the chunk and the first batch starts at once: planning --n 10^9 up front took
# 20 GB and 40 s before a single molecule.
PLAN_CHUNK = 1 << 20


def iter_plan_for_shard(histogram: dict[int, int], n: int, num_atoms: int | None, batch_size: int,
                        seed: int, shard: tuple[int, int],
                        chunk: int = PLAN_CHUNK) -> Iterator[tuple[int, int, int]]:
    """The batches (atom count, batch size, seed) of one shard, planned `chunk` molecules at a
    time: atom counts fixed or drawn from the histogram, grouped by size within each chunk."""
    from symdiff_cli.engine.sampling import draw_atom_counts, plan_batches

    counts_seq, batches_seq = shard_seed_sequence(seed, *shard).spawn(2)
    counts_rng = np.random.default_rng(counts_seq)
    plan_seed = int(batches_seq.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)
    for index, start in enumerate(range(0, n, chunk)):
        size = min(chunk, n - start)
        if num_atoms is not None:
            counts = np.full(size, int(num_atoms), dtype=np.int64)
        else:
            counts = draw_atom_counts(histogram, size, counts_rng)
        # The first chunk keeps the seed of the whole-run plan; later ones get their own streams.
        chunk_seed = plan_seed if index == 0 else int(
            np.random.SeedSequence(plan_seed, spawn_key=(index,)).generate_state(1, dtype=np.uint64)[0]
            & 0x7FFFFFFFFFFFFFFF)
        yield from plan_batches(counts, batch_size, chunk_seed).batches


def plan_for_shard(histogram: dict[int, int], n: int, num_atoms: int | None, batch_size: int,
                   seed: int, shard: tuple[int, int]):
    """The whole SamplePlan of one shard (see iter_plan_for_shard; for small n and tests)."""
    from symdiff_cli.engine.sampling import SamplePlan

    return SamplePlan(list(iter_plan_for_shard(histogram, n, num_atoms, batch_size, seed, shard)))


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
    if opts.valence_guidance is not None and not (math.isfinite(opts.valence_guidance) and opts.valence_guidance >= 0):
        raise UsageError(f"--valence-guidance must be a number >= 0 (0: off), not {opts.valence_guidance}")
    from symdiff_cli.engine.keep import check_keep_options

    check_keep_options(opts.keep, opts.n, opts.max_attempts, opts.relax, opts.workers, opts.relax_steps or 1)


def guided_denoiser(release: ReleasedModel, guidance: float | None, guide_specs: Sequence[str] | str | None,
                    offline: bool = False, show_progress: bool = True) -> tuple[torch.nn.Module, float]:
    """The network the sampler calls for a loaded release, and the guidance weight it applies.

    The release's own guide and weight unless overridden; several `guide_specs` guide with the
    mean of their networks. With weight 1 the guide is not called (nor loaded, for --guide), so
    the main model alone sets the cost.
    """
    from symdiff_cli.engine.release import load_guide_from_release
    from symdiff_cli.model.config import DEFAULT_GUIDANCE_WEIGHT
    from symdiff_cli.model.guidance import AutoGuidedDenoiser, mean_of

    if isinstance(guide_specs, str):
        guide_specs = [guide_specs]
    guide_specs = list(guide_specs or [])
    weight = release.guidance_weight if guidance is None else float(guidance)
    if guide_specs and guidance is None and not release.ships_guide:
        raise UsageError("--guide needs --guidance W (a weight above 1 steers away from the guide; the shipped "
                         f"model uses {DEFAULT_GUIDANCE_WEIGHT:g})")
    if weight == 1.0:
        return release.model, 1.0
    guide = release.guide
    if guide_specs:
        guide = mean_of([load_guide_from_release(spec, release.cfg, release.device, offline=offline,
                                                 show_progress=show_progress) for spec in guide_specs])
    if guide is None and release.ships_guide:
        raise RuntimeError("guided_denoiser needs the release loaded with load_guide=True")
    if guide is None:
        raise UsageError(f"--guidance {weight:g} needs a guide model: this release ships none; pass --guide MODEL")
    return AutoGuidedDenoiser(release.model, guide, weight), weight


def with_valence_guidance(denoiser: torch.nn.Module, cfg: ModelConfig,
                          settings: ValenceGuidanceSettings) -> torch.nn.Module:
    """`denoiser` wrapped in valence guidance (model/valence.py) at `settings`; as it is when off."""
    from symdiff_cli.chem.bonds import bond_thresholds_angstrom
    from symdiff_cli.model.diffusion import NoiseSchedule
    from symdiff_cli.model.valence import ValenceGuidedDenoiser

    if settings.scale == 0 and not settings.type_scale:
        return denoiser
    thresholds, valences = bond_thresholds_angstrom(cfg.atom_types)
    schedule = NoiseSchedule(cfg.timesteps, cfg.noise_precision)
    return ValenceGuidedDenoiser(denoiser, schedule, thresholds, valences, cfg.norm_one_hot,
                                 settings.scale, settings.max_t, settings.width, settings.temperature,
                                 settings.type_scale, settings.over_weight, settings.decisiveness)


def valence_guided(denoiser: torch.nn.Module, release: ReleasedModel, scale: float | None) -> torch.nn.Module:
    """Wrap the sampler's network in valence guidance at the release's settings.

    `scale` None keeps the release's own scale (none: off); 0 turns it off. A release that
    states no valence guidance samples exactly as before it existed.
    """
    from symdiff_cli.engine.release import valence_guidance_settings

    settings = valence_guidance_settings(release.config)
    if scale is not None:
        settings = settings.with_scale(scale)
    return with_valence_guidance(denoiser, release.cfg, settings)


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

    def stop(self) -> None:
        """Sampling ended (finished, interrupted or failed)."""


# --------------------------------------------------------------------------------------
# The run


def _finite_only(mols: list) -> list:
    """The molecules whose coordinates are all finite (a diverged sample has NaN or inf)."""
    return [mol for mol in mols if np.isfinite(mol.positions).all()]


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
    from symdiff_cli.engine.release import load_release
    from symdiff_cli.engine.sampling import Sampler
    from symdiff_cli.engine.stop_signals import StopSignals, signal_of
    from symdiff_cli.io.formats import STDIO_PATH, MoleculeWriter, resolve_format, round_to_stored_precision

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
    from symdiff_cli.engine.keep import BatchPipeline, MetricCounts

    if opts.relax != "none":
        require_method(opts.relax)  # a missing optional package fails before the model loads
    max_attempts = None if opts.max_attempts is None else shard_share(opts.max_attempts, *shard)
    pipeline = BatchPipeline(opts.relax, opts.keep, n_shard, max_attempts, opts.workers, opts.relax_steps,
                             on_relaxed=progress.relaxed)
    started = time.perf_counter()
    with StopSignals() as stops:
        # Deferred: a signal between creating the temporary file and holding it in `writer`
        # would leave a .partial file that nothing removes.
        with stops.deferred():
            writer = MoleculeWriter(opts.out, fmt)  # checks the output path before the slow model load
        sampled = 0  # molecules of the batches handed to the writer completely, non-finite ones included
        in_file, left_out, non_finite = 0, 0, 0  # counts after the last complete batch
        totals = MetricCounts()
        stop_signal: int | None = None
        try:
            stops.raise_if_received()
            # The release's own guide is read only when it will be called: --guidance 1 samples
            # the main model alone and --guide replaces it, so a damaged guide file blocks neither.
            release = load_release(opts.model, device, offline=opts.offline, show_progress=not opts.quiet,
                                   load_guide=opts.guidance != 1.0 and not opts.guide)
            cfg = release.cfg
            if opts.num_atoms is not None and opts.num_atoms > cfg.max_atoms:
                raise UsageError(f"--num-atoms {opts.num_atoms} is above this model's maximum of {cfg.max_atoms} atoms")
            steps = opts.steps if opts.steps is not None else release.default_steps(device.type)
            if steps > cfg.timesteps:
                raise UsageError(f"--steps {steps} is above the model's {cfg.timesteps} diffusion steps")
            batch_size = opts.batch_size or (DEFAULT_BATCH_SIZE_CUDA if device.type == "cuda" else DEFAULT_BATCH_SIZE_CPU)
            plan = iter_plan_for_shard(release.histogram, n_shard, opts.num_atoms, batch_size, opts.seed, shard)
            plan = pipeline.plan(plan, release.histogram, opts.num_atoms, batch_size,
                                 shard_seed_sequence(opts.seed, *shard))
            # On CPUs bf16 measured no faster end to end (elementwise work dominates at this model
            # size; docs/training.md), so auto keeps float32 there.
            use_bf16 = opts.precision == "bf16" or (opts.precision == "auto" and device.type == "cuda")
            denoiser, _ = guided_denoiser(release, opts.guidance, opts.guide, opts.offline, not opts.quiet)
            denoiser = valence_guided(denoiser, release, opts.valence_guidance)
            sampler = Sampler(denoiser, cfg, device, autocast_bf16=use_bf16, spacing=opts.spacing)
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
                        mol.props["name"] = f"{name_prefix}{sampled + k:07d}"
                    finite = _finite_only(mols)
                    pipeline.count_sampled(len(mols))
                    pipeline.relax_and_measure(finite, fmt)  # relaxes in place: the tags describe the result
                    batch_reports = _tag_molecules(finite, with_metrics)
                    kept, batch_reports = pipeline.keep_passing(finite, batch_reports)
                    with stops.deferred():
                        writer.write(kept)
                        totals.add(batch_reports)
                        non_finite += len(mols) - len(finite)
                        sampled += len(mols)
                        in_file, left_out = writer.written, writer.skipped
                    stops.raise_if_received()
                    progress.batch_done(pipeline.done(sampled))
            finally:
                progress.stop()
            if non_finite == sampled > 0:
                raise SymdiffError(f"all {sampled} sampled molecules have non-finite coordinates "
                                   "(the model diverged); nothing was written")
        except KeyboardInterrupt as interrupt:
            stop_signal = signal_of(interrupt)
            with stops.deferred():
                # The finished batches form a complete, shorter file; with none finished, no file.
                writer.abort(keep=in_file + left_out > 0)
        except BaseException:
            with stops.deferred():
                writer.abort(keep=False)
            raise
        else:
            with stops.deferred():
                pipeline.close()
                # --keep with nothing passing: no empty file (the error says so), the previous file stays.
                writer.abort(keep=False) if pipeline.nothing_kept else writer.close()
            in_file, left_out = writer.written, writer.skipped
        finally:
            pipeline.close(interrupted=True)  # after an error or a stop: end the relaxation workers at once
    seconds = time.perf_counter() - started
    result = GenerateResult(requested=n_shard, written=in_file, skipped=left_out, seconds=seconds, shard=shard,
                            out=opts.out, interrupted=stop_signal is not None, metrics=totals.as_dict(),
                            stop_signal=stop_signal, non_finite=non_finite,
                            pipeline=pipeline.summary if pipeline.active else None)
    return result


__all__ = ["GenerateOptions", "GenerateProgress", "GenerateResult", "generate", "parse_shard", "shard_share", "shard_seed_sequence",
           "plan_for_shard", "iter_plan_for_shard", "guided_denoiser", "valence_guided", "with_valence_guidance", "INTERRUPTED_EXIT_CODE"]
