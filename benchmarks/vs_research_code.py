"""Speed of our network against the SymDiff research code, side by side in one process.

The research code is github.com/leozhangML/symdiff at commit f70cba9: the network is
`DiT_DitGaussian_dynamics` of sym_nn/sym_nn.py (its DiT in sym_nn/dit.py), called as EDM's
diffusion calls it, `_forward(t, xh, node_mask, edge_mask, context=None)`. It is cloned into
--research-code at run time when that folder does not exist, and imported from there; none of it
is copied into this project. Ours is `symdiff_cli.model.dit.SymmetrisedDenoiser`. Both run in
this process, on the same torch, on the CPU, with --threads threads, in float32 unless
--precision bf16 (bfloat16 autocast, as `symdiff train/generate --precision bf16` run ours) or
--their-precision says otherwise; --their-precision defaults to --precision, the same
configuration on both sides.

Four measurements, each the median of --repetitions timed passes after --warmup untimed ones,
ours and theirs alternating (and which of the two goes first alternating too, so a drift of the
machine's speed falls on both). One pass processes the same --batches x --batch-size molecules
on both sides; times are reported per 1,000 molecules:

1. sampling forward (no grad), each code in its own batch layout. Theirs: --batches random
   batches of --batch-size molecules of the data, each padded to its largest molecule, with
   node_mask and edge_mask (EDM's shuffling loader and collate). Ours: the first --batches
   batches our batcher (data/batching.py) cuts from the whole data, one atom count each, no
   padding and no mask, as our trainer and sampler run them (nearly all full). The two sides
   see different molecules of the same size distribution; each is timed per its own molecules.
2. training step (forward, backward of an MSE against the noise that made the input, optimiser
   step), each code in its own layout and with its own optimiser: ours
   `engine.optim.make_optimizer` (AMSGrad Adam), theirs `qm9.models.get_optim` (AMSGrad AdamW,
   --use_amsgrad as in their runs). No gradient clipping on either side.
3. and 4. the same two on the same padded tensors given to both networks (ours with its mask).

Inputs are QM9 training molecules (--tiny: a few synthetic ones) in model units, noised to a
uniformly drawn timestep of the polynomial_2 schedule; batching and noising happen before timing.

Configurations (the settings of both sides are printed, with their parameter counts):
  --config small  our `small` preset, and theirs set to the same sizes: hidden size, depth, heads,
                  MLP width, orientation kernel (their gamma_enc / gamma_dec) width, depth, heads,
                  head width, noise channels, and their K (Gaussians per distance) = our RBF count.
                  Their MLP ratio is set so that its SwiGLU has our inner width (the two codes
                  count the ratio differently). Settings that only theirs has take the values of
                  the authors' small run (train_dit_dit_gaussian_5.sh).
  --config paper  our `paper` preset, and theirs as the authors trained the published QM9 model:
                  main_qm9.py's argparse defaults overridden by the flags of
                  train_dit_dit_gaussian_6.sh (about 31M parameters).
  --tiny          both tiny (hidden 32, depth 1), a few synthetic molecules, one repetition: for
                  the test (tests/test_vs_research_code.py).

Why float32 cannot reach 2x on the same tensors: on a CPU the linear layers (matrix products)
take about four fifths of a forward at these widths and already run at the core's float32 peak
(docs/training.md, "Speed against the research code"), so a network of the same sizes can only
win on the rest, and on padding it does not compute.

The research DiT needs timm (`pip install --no-deps timm`: timm's torchvision requirement would
replace torch, and is not needed for the two MLP classes used here; see import_research_network).

    python benchmarks/vs_research_code.py --research-code ../symdiff-research --config small --json small.json
    python benchmarks/vs_research_code.py --research-code ../symdiff-research --config paper --json paper.json
    python benchmarks/vs_research_code.py --research-code ../symdiff-research --config paper --precision bf16
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import types
import warnings
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from symdiff_cli.chem.elements import QM9
from symdiff_cli.data.batching import MoleculeTensors, SizeGroupedBatches
from symdiff_cli.engine.optim import make_optimizer
from symdiff_cli.errors import SymdiffError
from symdiff_cli.io.molecule import PackedMolecules
from symdiff_cli.model.config import ModelConfig, model_config_from_preset
from symdiff_cli.model.diffusion import Batch, NoiseSchedule, VPDiffusion
from symdiff_cli.model.dit import SymmetrisedDenoiser, count_parameters
from symdiff_cli.model.geometry import remove_mean

RESEARCH_URL = "https://github.com/leozhangML/symdiff"
RESEARCH_COMMIT = "f70cba9"
# What _forward reads of main_qm9.py's parsed arguments: a molecule model (atom features as well
# as positions; main_qm9.py sets it) on the centre-of-mass-free subspace (--com_free, in all their
# run scripts). sigma_data, which it reads otherwise, is then unused.
RESEARCH_ARGS = Namespace(molecule=True, com_free=True)
# Learning rate and weight decay of both optimisers: our training defaults (engine/train_config.py),
# which are also the authors' published run's. They do not change the work of a step.
LR, WEIGHT_DECAY = 2e-4, 1e-12

# The published QM9 model as the authors trained it: main_qm9.py's defaults overridden by the
# flags of train_dit_dit_gaussian_6.sh (about 31M parameters). Keyword arguments of
# DiT_DitGaussian_dynamics, named as there (their flags carry the same names).
PAPER_RESEARCH_SETTINGS: dict[str, Any] = dict(
    xh_hidden_size=184, K=184, pos_embedder_test=184,
    enc_hidden_size=128, enc_depth=8, enc_num_heads=4, enc_mlp_ratio=4.0, dec_hidden_features=64,
    hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0,
    noise_dims=3, noise_std=1.0, mlp_type="swiglu", fix_qr=True,
)
# What the authors' small run (train_dit_dit_gaussian_5.sh) gives the parts of their network that
# ours does not have: of the backbone's token width, all but 2 channels embed (x, h) and 2 embed
# the summed distance features; the orientation kernel reads 2 distance channels.
SMALL_RUN_DISTANCE_CHANNELS = 2
SMALL_RUN_KERNEL_DISTANCE_CHANNELS = 2
# Each measurement: (what is timed, the batch layouts), in the order of the report.
MEASUREMENTS = {
    "sampling_forward_own_layout": ("sampling forward", "own: ours size-grouped, theirs padded"),
    "training_step_own_layout": ("training step", "own: ours size-grouped, theirs padded"),
    "sampling_forward_same_padded": ("sampling forward", "the same padded batches"),
    "training_step_same_padded": ("training step", "the same padded batches"),
}


class BenchmarkError(Exception):
    """A problem the user can fix (no research code, no timm): reported in one line."""


# ---------------------------------------------------------------------------------------------
# The research code: fetched, pinned, imported


def ensure_research_code(directory: Path, url: str) -> None:
    """Clone the research code into `directory` at RESEARCH_COMMIT unless the folder exists."""
    if directory.exists():
        if not (directory / "sym_nn" / "sym_nn.py").is_file():
            raise BenchmarkError(f"{directory} exists but holds no sym_nn/sym_nn.py: not the SymDiff research code")
        return
    # No credential prompt: a URL that needs one fails at once rather than waiting for input.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    clone = ["git", "clone", url, str(directory)]
    checkout = ["git", "-C", str(directory), "checkout", "-q", RESEARCH_COMMIT]
    for command in (clone, checkout):
        print("$ " + " ".join(command), flush=True)
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env)
        except FileNotFoundError:
            raise BenchmarkError("git is not installed: it is needed to fetch the research code") from None
        if result.returncode != 0:
            # The folder did not exist before: a half-made clone, or one at another commit, would be
            # taken for the pinned code on the next run.
            shutil.rmtree(directory, ignore_errors=True)
            raise BenchmarkError(f"could not fetch the research code ({' '.join(command[:2])} failed: "
                                 f"{git_failure(result.stderr)})")


def git_failure(stderr: str) -> str:
    """The line of git's output that says what went wrong: its first `fatal:`, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("fatal:")), lines[-1] if lines else "no message")


def git_answer(directory: Path, *args: str) -> str | None:
    """What `git -C directory ARGS` prints, or None when the folder is not a git work tree."""
    if not (directory / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@contextlib.contextmanager
def temporarily_importable(directory: Path, stand_ins: dict[str, types.ModuleType]) -> Iterator[None]:
    """`directory` first on sys.path and `stand_ins` in sys.modules, both undone on exit.

    The research modules stay imported (the classes need them); only the path and the stand-ins go.
    """
    sys.path.insert(0, str(directory))
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        sys.path.remove(str(directory))
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def transformers_stand_in() -> types.ModuleType:
    """Stands in for `transformers`, which qm9/models.py imports only for
    `get_cosine_schedule_with_warmup`, a learning-rate schedule that get_scheduler builds for
    --scheduler cosine. The network never touches it; calling the stand-in raises."""
    module = types.ModuleType("transformers")

    def get_cosine_schedule_with_warmup(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("stand-in for transformers.get_cosine_schedule_with_warmup (not used by the benchmark)")

    module.get_cosine_schedule_with_warmup = get_cosine_schedule_with_warmup
    return module


def timm_mlp_stand_ins() -> dict[str, types.ModuleType]:
    """The real `Mlp` and `SwiGLUPacked` of timm, without running timm's package __init__.

    sym_nn imports both from `timm.models.vision_transformer`, which re-exports them from
    timm/layers/mlp.py. Importing anything under `timm` runs timm/__init__.py, which imports every
    model and timm.data, and those import torchvision (FrozenBatchNorm2d for frozen-BN ResNets,
    image transforms for data loading), which is not installed: installing it would replace torch.
    The two MLP classes use only torch. So `timm`, `timm.layers` and `timm.models` stand in as empty
    packages over timm's real folders, timm/layers/mlp.py (and the two helpers it imports,
    grn.py and helpers.py) is imported from the installed timm as it is, and
    `timm.models.vision_transformer` stands in as a module holding just those two classes. The
    network runs timm's own code.
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkError("the research code needs timm for its DiT's MLPs: pip install --no-deps timm")
    timm_folder = Path(list(spec.submodule_search_locations)[0])
    packages = {}
    for name in ("timm", "timm.layers", "timm.models"):
        folder = timm_folder.joinpath(*name.split(".")[1:])
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        packages[name] = package
    already_imported = set(sys.modules)
    sys.modules.update(packages)
    try:
        mlp = importlib.import_module("timm.layers.mlp")
    finally:  # nothing imported under the stand-in packages is left behind for anyone else
        for name in [n for n in sys.modules if n.split(".")[0] == "timm" and n not in already_imported]:
            del sys.modules[name]
    vision_transformer = types.ModuleType("timm.models.vision_transformer")
    vision_transformer.Mlp = mlp.Mlp
    vision_transformer.SwiGLUPacked = mlp.SwiGLUPacked
    return {**packages, "timm.models.vision_transformer": vision_transformer}


def import_research_network(directory: Path) -> tuple[type, Callable[..., torch.optim.Optimizer], list[str]]:
    """(DiT_DitGaussian_dynamics, their get_optim, notes on each stand-in used).

    The real transformers and timm are used when they import; stand-ins only for what is missing.
    """
    stand_ins: dict[str, types.ModuleType] = {}
    notes = []
    if importlib.util.find_spec("transformers") is None:
        stand_ins["transformers"] = transformers_stand_in()
        notes.append("transformers: qm9/models.py imports it only for get_cosine_schedule_with_warmup, "
                     "a learning-rate schedule; a stand-in that raises if called")
    if importlib.util.find_spec("timm") is None:
        raise BenchmarkError("the research code needs timm for its DiT's MLPs: pip install --no-deps timm")
    if importlib.util.find_spec("torchvision") is None:
        stand_ins.update(timm_mlp_stand_ins())
        notes.append("timm.models.vision_transformer: holds timm's real Mlp and SwiGLUPacked (timm/layers/mlp.py); "
                     "timm's package __init__ is skipped because it imports torchvision, which those classes never use")
    with temporarily_importable(directory, stand_ins):
        # qm9.models first: sym_nn.sym_nn imports qm9.models, which imports sym_nn.sym_nn back
        # (a circular import that only resolves in this order).
        models = importlib.import_module("qm9.models")
        sym_nn = importlib.import_module("sym_nn.sym_nn")
    return sym_nn.DiT_DitGaussian_dynamics, models.get_optim, notes


# ---------------------------------------------------------------------------------------------
# Matched settings


@dataclass
class Comparison:
    """One configuration of both networks."""

    name: str
    ours: ModelConfig
    theirs: dict[str, Any]  # keyword arguments of DiT_DitGaussian_dynamics, besides `args`
    theirs_from: str


def tiny_config() -> ModelConfig:
    return model_config_from_preset("tiny", hidden=32, depth=1, heads=2, num_rbf=8, orientation_hidden=16,
                                    orientation_depth=1, orientation_heads=2, orientation_mlp_hidden=16)


def our_mlp_inner_width(hidden: int, cfg: ModelConfig) -> int:
    """The width between the two linears of one of our MLPs (model/dit.py Mlp)."""
    inner = int(hidden * cfg.mlp_ratio)
    return int(2 * inner / 3) if cfg.swiglu else inner


def their_mlp_ratio_for_width(hidden: int, inner: int, swiglu: bool) -> float:
    """Their `mlp_ratio` giving an MLP of inner width `inner`.

    Both count the ratio on hidden, but their SwiGLU (timm's SwiGLUPacked) splits fc1's
    int(hidden * ratio) outputs into value and gate, so its inner width is half of it; ours takes
    2/3 of hidden * ratio (same parameters as the GELU MLP). The half channel keeps int() from
    rounding down a product that floating point puts just under the integer.
    """
    return (2 * inner + 0.5) / hidden if swiglu else (inner + 0.5) / hidden


def matched_research_settings(cfg: ModelConfig) -> dict[str, Any]:
    """Their network with every size that ours also has set to ours."""
    def mlp_ratio(hidden: int) -> float:
        return their_mlp_ratio_for_width(hidden, our_mlp_inner_width(hidden, cfg), cfg.swiglu)

    return dict(
        xh_hidden_size=cfg.hidden - SMALL_RUN_DISTANCE_CHANNELS, K=cfg.num_rbf,
        pos_embedder_test=SMALL_RUN_KERNEL_DISTANCE_CHANNELS,
        enc_hidden_size=cfg.orientation_hidden, enc_depth=cfg.orientation_depth, enc_num_heads=cfg.orientation_heads,
        enc_mlp_ratio=mlp_ratio(cfg.orientation_hidden), dec_hidden_features=cfg.orientation_mlp_hidden,
        hidden_size=cfg.hidden, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=mlp_ratio(cfg.hidden),
        noise_dims=cfg.orientation_noise_channels, noise_std=1.0, mlp_type="swiglu" if cfg.swiglu else "mlp",
        fix_qr=False,  # as in the small run; --fix_qr transposes a 3x3 matrix, no change in work
    )


def make_comparison(config: str, tiny: bool) -> Comparison:
    if tiny:
        cfg = tiny_config()
        return Comparison("tiny", cfg, matched_research_settings(cfg), "matched to ours")
    cfg = model_config_from_preset(config)
    if config == "paper":
        return Comparison(config, cfg, dict(PAPER_RESEARCH_SETTINGS),
                          "the authors' published QM9 run (main_qm9.py defaults + train_dit_dit_gaussian_6.sh)")
    return Comparison(config, cfg, matched_research_settings(cfg),
                      "matched to ours; split of the token width from the authors' small run "
                      "(train_dit_dit_gaussian_5.sh)")


def build_research_network(network_class: type, comparison: Comparison) -> nn.Module:
    cfg = comparison.ours
    with warnings.catch_warnings():
        # Their orientation encoder is a DiT built with out_channels=0 and used without its final
        # layer; initialising that empty linear warns, harmlessly.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return network_class(
            RESEARCH_ARGS, in_node_nf=cfg.feature_dim, context_node_nf=0,
            gamma_mlp_dropout=0.0, mlp_dropout=0.0, n_dims=3, device="cpu", use_gamma_for_sampling=True,
            **comparison.theirs,
        )


def settings_rows(comparison: Comparison, ours: SymmetrisedDenoiser, theirs: nn.Module) -> list[tuple[str, str, str]]:
    """(setting, ours, theirs), sizes read from the constructed networks where they have them."""
    cfg, t = comparison.ours, comparison.theirs
    our_kernel, their_kernel = ours.orientation.transformer, theirs.gamma_enc
    mlp_name = "SwiGLU" if cfg.swiglu else "GELU MLP"

    def mlp(ratio: float, inner: int) -> str:
        return f"{mlp_name}, ratio {ratio:.3g}, inner width {inner}"

    return [
        ("backbone hidden / depth / heads", f"{cfg.hidden} / {cfg.depth} / {cfg.heads}",
         f"{t['hidden_size']} / {t['depth']} / {t['num_heads']}"),
        ("backbone MLP", mlp(cfg.mlp_ratio, ours.backbone.transformer.blocks[0].mlp.fc2.in_features),
         mlp(t["mlp_ratio"], theirs.backbone.blocks[0].mlp.fc2.in_features)),
        ("orientation kernel hidden / depth / heads",
         f"{cfg.orientation_hidden} / {cfg.orientation_depth} / {cfg.orientation_heads}",
         f"{t['enc_hidden_size']} / {t['enc_depth']} / {t['enc_num_heads']} (gamma_enc)"),
        ("orientation kernel MLP", mlp(cfg.mlp_ratio, our_kernel.blocks[0].mlp.fc2.in_features),
         mlp(t["enc_mlp_ratio"], their_kernel.blocks[0].mlp.fc2.in_features)),
        ("orientation head hidden", f"{cfg.orientation_mlp_hidden}", f"{t['dec_hidden_features']} (gamma_dec)"),
        ("orientation noise channels", f"{cfg.orientation_noise_channels}", f"{t['noise_dims']} (noise_dims)"),
        ("distance features", f"{cfg.num_rbf} RBFs, mean over the other atoms, one set shared by both networks",
         f"K={t['K']} Gaussians per atom pair, each network its own: linear to "
         f"{t['hidden_size'] - t['xh_hidden_size']} (backbone) / {t['pos_embedder_test']} (kernel) "
         "per pair, then summed / N"),
        ("backbone token embedding", f"linear({3 + cfg.feature_dim + cfg.num_rbf} -> {cfg.hidden})",
         f"linear({3 + cfg.feature_dim} -> {t['xh_hidden_size']}) + the distance channels"),
        ("attention padding mask", "none without padding", "always (node_mask)"),
        ("parameters", f"{count_parameters(ours):,}", f"{count_parameters(theirs):,}"),
    ]


# ---------------------------------------------------------------------------------------------
# Data: the same molecules in both layouts


def synthetic_molecules(seed: int = 0) -> PackedMolecules:
    """Four molecules of each of 3 to 6 atoms, random elements and positions (for --tiny)."""
    rng = np.random.default_rng(seed)
    sizes = np.repeat(np.arange(3, 7), 4)
    total = int(sizes.sum())
    return PackedMolecules(rng.normal(size=(total, 3)) * 1.5, rng.choice([1, 6, 7, 8, 9], total), sizes)


def draw_batches(num_atoms: np.ndarray, batch_size: int, num_batches: int,
                 seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(ours, theirs): molecule indices of each code's batches.

    Theirs: `num_batches` random batches of the data, as EDM's shuffling loader draws them. Ours:
    the first `num_batches` batches of one epoch of our batcher over the whole data (one atom
    count each, at most `batch_size`), as our trainer draws them.
    """
    molecules = batch_size * num_batches
    if molecules > len(num_atoms):
        raise BenchmarkError(f"{num_batches} batches of {batch_size} need {molecules} molecules; "
                             f"the data has {len(num_atoms)}")
    chosen = np.random.default_rng(seed).choice(len(num_atoms), molecules, replace=False)
    theirs = [chosen[i:i + batch_size] for i in range(0, molecules, batch_size)]
    ours = list(SizeGroupedBatches(num_atoms, batch_size, seed=seed).epoch(0)[:num_batches])
    return ours, theirs


@dataclass
class GroupedBatch:
    """Ours: molecules of one atom count, no padding. Noised input, timestep, and the noise as target."""

    x: torch.Tensor
    h: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor  # (B, n, 3 + F): eps_x then eps_h


@dataclass
class PaddedBatch:
    """EDM's layout: padded to the largest molecule, with the masks their code takes."""

    x: torch.Tensor
    h: torch.Tensor
    mask: torch.Tensor  # (B, N) bool, ours
    t: torch.Tensor  # (B,) integer timesteps, ours
    target: torch.Tensor
    xh: torch.Tensor  # (B, N, 3 + F), theirs
    node_mask: torch.Tensor  # (B, N, 1) float
    edge_mask: torch.Tensor  # (B * N * N, 1) float, no self-pairs
    t_fraction: torch.Tensor  # (B, 1) t / T, theirs


def padded_positions_and_features(data: MoleculeTensors, indices: np.ndarray, cfg: ModelConfig):
    """x (B, N, 3) CoM-free, h (B, N, F) in model units and mask (B, N), zero on padding."""
    counts = torch.from_numpy(data.num_atoms[indices])
    n_max = int(counts.max())
    slot = torch.arange(n_max)
    mask = slot < counts.unsqueeze(1)
    rows = torch.where(mask, data.offsets[torch.from_numpy(indices)].unsqueeze(1) + slot, 0)
    x = remove_mean(data.positions[rows], mask)
    one_hot = F.one_hot(data.type_index[rows], data.num_types).float()
    h = torch.cat([one_hot / cfg.norm_one_hot, data.charges[rows].unsqueeze(-1) / cfg.norm_charge], dim=-1)
    return x, h * mask.unsqueeze(-1), mask


def noised(diffusion: VPDiffusion, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor | None,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, h_t, t, target): the molecules noised to a random timestep, and that noise (eps_x then eps_h)."""
    t = diffusion.training_timesteps(x.shape[0], x.device, generator)
    x_t, h_t, eps_x, eps_h = diffusion.noise(Batch(x, h, mask), t, generator)
    return x_t, h_t, t, torch.cat([eps_x, eps_h], dim=-1)


def make_batches(packed: PackedMolecules, cfg: ModelConfig, ours: list[np.ndarray], theirs: list[np.ndarray],
                 seed: int = 0) -> tuple[list[GroupedBatch], list[PaddedBatch]]:
    data = MoleculeTensors(packed, QM9)
    diffusion = VPDiffusion(NoiseSchedule(cfg.timesteps, cfg.noise_precision))
    generator = torch.Generator().manual_seed(seed)
    grouped = []
    for indices in ours:
        x, h = data.gather(indices, cfg.norm_one_hot, cfg.norm_charge)
        grouped.append(GroupedBatch(*noised(diffusion, x, h, None, generator)))
    padded = []
    for indices in theirs:
        x, h, mask = padded_positions_and_features(data, indices, cfg)
        x_t, h_t, t, target = noised(diffusion, x, h, mask, generator)
        n = mask.shape[1]
        pairs = mask.unsqueeze(1) & mask.unsqueeze(2) & ~torch.eye(n, dtype=torch.bool).unsqueeze(0)
        padded.append(PaddedBatch(
            x_t, h_t, mask, t, target, xh=torch.cat([x_t, h_t], dim=-1), node_mask=mask.float().unsqueeze(-1),
            edge_mask=pairs.float().view(-1, 1), t_fraction=(t.float() / cfg.timesteps).unsqueeze(-1),
        ))
    return grouped, padded


# ---------------------------------------------------------------------------------------------
# Timing


def sampling_pass(forward: Callable[[Any], torch.Tensor], batches: list) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            for batch in batches:
                forward(batch)
    return run


def training_pass(forward: Callable[[Any], torch.Tensor], optimiser: torch.optim.Optimizer,
                  batches: list) -> Callable[[], None]:
    def run() -> None:
        for batch in batches:
            optimiser.zero_grad(set_to_none=True)
            F.mse_loss(forward(batch), batch.target).backward()
            optimiser.step()
    return run


def interleaved_times(ours: Callable[[], None], theirs: Callable[[], None], repetitions: int,
                      warmup: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each timed pass of each side; the two alternate, and so does who goes first."""
    for _ in range(warmup):
        ours()
        theirs()
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for repetition in range(repetitions):
        order = [("ours", ours), ("theirs", theirs)]
        for side, run in order if repetition % 2 == 0 else reversed(order):
            start = time.perf_counter()
            run()
            times[side].append(1000 * (time.perf_counter() - start))
    return times["ours"], times["theirs"]


def check_outputs(ours: SymmetrisedDenoiser, theirs: nn.Module, grouped: GroupedBatch, padded: PaddedBatch) -> None:
    """Both networks take both layouts and give finite outputs of the target's shape, zero on padding."""
    with torch.no_grad():
        outputs = {
            "ours, own layout": (torch.cat(ours(grouped.x, grouped.h, grouped.t), dim=-1), grouped.target, None),
            "ours, padded": (torch.cat(ours(padded.x, padded.h, padded.t, padded.mask), dim=-1), padded.target,
                             padded.mask),
            "theirs, padded": (theirs._forward(padded.t_fraction, padded.xh, padded.node_mask, padded.edge_mask, None),
                               padded.target, padded.mask),
        }
    for name, (output, target, mask) in outputs.items():
        if output.shape != target.shape or not torch.isfinite(output).all():
            raise RuntimeError(f"{name}: output of shape {tuple(output.shape)} (expected {tuple(target.shape)}) "
                               "or not finite")
        if mask is not None and output[~mask].abs().max() > 0:
            raise RuntimeError(f"{name}: non-zero output on padding")


@dataclass
class Measurement:
    key: str
    name: str
    layout: str
    our_batches: int
    their_batches: int
    our_molecules: int
    their_molecules: int
    ours_ms: list[float]
    theirs_ms: list[float]

    @property
    def ours_median_ms(self) -> float:
        return statistics.median(self.ours_ms)

    @property
    def theirs_median_ms(self) -> float:
        return statistics.median(self.theirs_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "ours_median_ms": self.ours_median_ms, "theirs_median_ms": self.theirs_median_ms,
            "ours_ms_per_batch": self.ours_median_ms / self.our_batches,
            "theirs_ms_per_batch": self.theirs_median_ms / self.their_batches,
            "ours_ms_per_1000_molecules": self.ours_median_ms * 1000 / self.our_molecules,
            "theirs_ms_per_1000_molecules": self.theirs_median_ms * 1000 / self.their_molecules,
            "theirs_over_ours": (self.theirs_median_ms / self.their_molecules)
                                / (self.ours_median_ms / self.our_molecules),
        }


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on the CPU for "bf16" (what --precision bf16 does in our trainer and
    sampler); nothing for "fp32"."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def measure(comparison: Comparison, network_class: type, get_optim: Callable, packed: PackedMolecules, batch_size: int,
            num_batches: int, repetitions: int, warmup: int, our_precision: str = "fp32",
            their_precision: str = "fp32") -> tuple[list[Measurement], dict[str, Any], list[tuple[str, str, str]]]:
    """The four measurements, a description of the data, and the settings table. Each side's
    forward runs under its precision's autocast; losses are taken in float32."""
    torch.manual_seed(0)
    ours = SymmetrisedDenoiser(comparison.ours)
    torch.manual_seed(0)
    theirs = build_research_network(network_class, comparison)
    rows = settings_rows(comparison, ours, theirs)

    our_indices, their_indices = draw_batches(packed.num_atoms, batch_size, num_batches)
    grouped, padded = make_batches(packed, comparison.ours, our_indices, their_indices)
    check_outputs(ours, theirs, grouped[0], padded[0])
    real_atoms = int(sum(b.mask.sum() for b in padded))
    slots = sum(b.mask.numel() for b in padded)
    data = {"batch_size": batch_size, "molecules": sum(len(b) for b in their_indices),
            "our_molecules": sum(len(b) for b in our_indices),
            "atoms": real_atoms, "their_padded_atom_slots": slots, "their_padding_fraction": 1 - real_atoms / slots,
            "our_batches": len(grouped), "our_batch_sizes": [len(b) for b in our_indices],
            "our_atom_counts": [int(packed.num_atoms[b[0]]) for b in our_indices],
            "their_batches": len(padded), "their_padded_sizes": [int(b.mask.shape[1]) for b in padded]}

    def our_grouped(b: GroupedBatch) -> torch.Tensor:
        with autocast(our_precision):
            return torch.cat(ours(b.x, b.h, b.t), dim=-1).float()

    def our_padded(b: PaddedBatch) -> torch.Tensor:
        with autocast(our_precision):
            return torch.cat(ours(b.x, b.h, b.t, b.mask), dim=-1).float()

    def their_padded(b: PaddedBatch) -> torch.Tensor:
        with autocast(their_precision):
            return theirs._forward(b.t_fraction, b.xh, b.node_mask, b.edge_mask, None).float()

    their_molecules = sum(len(b) for b in their_indices)

    def measurement(key: str, our_pass: Callable[[], None], their_pass: Callable[[], None],
                    our_batches: int, our_molecules: int) -> Measurement:
        ours_ms, theirs_ms = interleaved_times(our_pass, their_pass, repetitions, warmup)
        return Measurement(key, *MEASUREMENTS[key], our_batches, len(padded), our_molecules, their_molecules,
                           ours_ms, theirs_ms)

    grouped_molecules = sum(len(b) for b in our_indices)

    # Sampling first, training after: the optimiser steps change the weights, not the work.
    ours.eval()
    theirs.eval()
    measured = [
        measurement("sampling_forward_own_layout", sampling_pass(our_grouped, grouped),
                    sampling_pass(their_padded, padded), len(grouped), grouped_molecules),
        measurement("sampling_forward_same_padded", sampling_pass(our_padded, padded),
                    sampling_pass(their_padded, padded), len(padded), their_molecules),
    ]
    ours.train()
    theirs.train()
    our_optimiser = make_optimizer(ours, lr=LR, weight_decay=WEIGHT_DECAY)
    their_optimiser = get_optim(Namespace(lr=LR, use_amsgrad=True, weight_decay=WEIGHT_DECAY), theirs)
    measured += [
        measurement("training_step_own_layout", training_pass(our_grouped, our_optimiser, grouped),
                    training_pass(their_padded, their_optimiser, padded), len(grouped), grouped_molecules),
        measurement("training_step_same_padded", training_pass(our_padded, our_optimiser, padded),
                    training_pass(their_padded, their_optimiser, padded), len(padded), their_molecules),
    ]
    measurements = sorted(measured, key=lambda m: list(MEASUREMENTS).index(m.key))
    return measurements, data, rows


# ---------------------------------------------------------------------------------------------
# Report


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(summary: dict[str, Any], measurements: list[Measurement], rows: list[tuple[str, str, str]]) -> str:
    research, data = summary["research_code"], summary["data"]
    lines = [
        f"## Our network vs the SymDiff research code: {summary['config']}",
        "",
        f"torch {summary['torch']}, precision: ours {summary['precision']['ours']}, theirs "
        f"{summary['precision']['theirs']}, CPU threads: {summary['threads']}, {summary['cpu']}",
        f"research code: {research['directory']} at commit {research['commit'] or 'unknown (not a git work tree)'} "
        f"(pinned {RESEARCH_COMMIT}); theirs: {summary['theirs_settings_from']}",
        f"stand-ins: {'; '.join(research['stand_ins']) or 'none'}",
        f"data: {data['source']}, {data['molecules']} molecules ({data['atoms']} atoms) per pass; theirs in "
        f"{data['their_batches']} random batches of {data['batch_size']}, padded "
        f"({100 * data['their_padding_fraction']:.0f}% of the atom slots are padding); "
        f"ours: {data['our_molecules']} molecules in {data['our_batches']} size-grouped batches",
        f"each time: the median of {summary['repetitions']} timed pass(es) after {summary['warmup']} warm-up pass(es), "
        "ours and theirs alternating",
        "",
        markdown_table(("setting", "ours", "theirs"), rows),
        "",
        markdown_table(
            ("measurement", "layout", "ours ms / 1,000 mol", "theirs ms / 1,000 mol", "theirs / ours",
             "ms / batch, ours / theirs"),
            [(m.name, m.layout, f"{d['ours_ms_per_1000_molecules']:.0f}", f"{d['theirs_ms_per_1000_molecules']:.0f}",
              f"{d['theirs_over_ours']:.2f}", f"{d['ours_ms_per_batch']:.1f} / {d['theirs_ms_per_batch']:.1f}")
             for m, d in ((m, m.to_dict()) for m in measurements)],
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--research-code", type=Path, required=True,
                        help=f"folder of the research code; cloned from --research-url at {RESEARCH_COMMIT} if absent")
    parser.add_argument("--research-url", default=RESEARCH_URL, help="where to clone the research code from")
    parser.add_argument("--config", choices=("small", "paper"), default="small")
    parser.add_argument("--tiny", action="store_true", help="tiny networks, synthetic molecules, one repetition (tests)")
    parser.add_argument("--batch-size", type=int, default=None, help="molecules per batch (default 64; --tiny 4)")
    parser.add_argument("--batches", type=int, default=None,
                        help="their (random) batches per timed pass (default 8; --tiny 2)")
    parser.add_argument("--repetitions", type=int, default=None, help="timed passes per side (default 7; --tiny 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per side first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="our network's precision (bf16: bfloat16 autocast, as --precision bf16 in symdiff)")
    parser.add_argument("--their-precision", choices=("fp32", "bf16"), default=None,
                        help="the research network's precision (default: --precision, the same on both sides)")
    args = parser.parse_args()
    their_precision = args.their_precision or args.precision
    batch_size = args.batch_size or (4 if args.tiny else 64)
    num_batches = args.batches or (2 if args.tiny else 8)
    repetitions = args.repetitions or (1 if args.tiny else 7)

    try:
        ensure_research_code(args.research_code, args.research_url)
        commit = git_answer(args.research_code, "rev-parse", "HEAD")
        if commit is not None and not commit.startswith(RESEARCH_COMMIT):
            print(f"Warning: the research code is at commit {commit}, not the pinned {RESEARCH_COMMIT}", file=sys.stderr)
        network_class, get_optim, stand_ins = import_research_network(args.research_code.resolve())
        torch.set_num_threads(args.threads)
        if args.tiny:
            packed, source = synthetic_molecules(), "synthetic molecules of 3 to 6 atoms"
        else:
            from symdiff_cli.data.qm9 import qm9_split

            packed, source = qm9_split("train"), "QM9 train split"
        comparison = make_comparison(args.config, args.tiny)
        measurements, data, rows = measure(comparison, network_class, get_optim, packed, batch_size, num_batches,
                                           repetitions, args.warmup, args.precision, their_precision)
    except (BenchmarkError, SymdiffError) as err:  # SymdiffError: QM9 could not be read or built
        raise SystemExit(f"Error: {err}") from None

    summary = {
        "config": comparison.name, "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(),
        "precision": {"ours": args.precision, "theirs": their_precision}, "repetitions": repetitions, "warmup": args.warmup,
        "research_code": {"directory": str(args.research_code), "commit": commit,
                          "origin": git_answer(args.research_code, "remote", "get-url", "origin"),
                          "pinned_commit": RESEARCH_COMMIT, "stand_ins": stand_ins},
        "theirs_settings_from": comparison.theirs_from,
        "ours_config": comparison.ours.to_dict(), "theirs_config": comparison.theirs,
        "settings": [{"setting": s, "ours": o, "theirs": t} for s, o, t in rows],
        "data": {"source": source, **data},
    }
    print(report(summary, measurements, rows))
    if args.json:
        everything = {**summary, "measurements": [m.to_dict() for m in measurements]}
        args.json.write_text(json.dumps(everything, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
