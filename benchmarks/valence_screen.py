"""Screen valence-guidance settings on a release: sample, evaluate, print one JSON line.

Samples `--n` molecules the way `symdiff generate` plans them (seed, atom counts, batches) with the
release's autoguidance (or `--guidance 1` for the main network alone), wrapped in valence guidance
(symdiff_cli/model/valence.py) at the settings given, and prints atom and molecule stability,
validity, uniqueness and the composition/geometry split of the unstable molecules
(symdiff_cli/chem/composition.py). Rows of docs/experiments.csv (area sampler) name this command.

    python benchmarks/valence_screen.py --n 500 --seed 0 --guidance 1 --scale 0.003
    python benchmarks/valence_screen.py --n 500 --seed 0 --guidance 1 --scale 0   # the control
"""

from __future__ import annotations

import argparse

import torch

from symdiff_cli.engine.denoiser import autoguided_denoiser, with_valence_guidance
from symdiff_cli.engine.release import load_release
from symdiff_cli.engine.sampling import Sampler
from symdiff_cli.model.valence import ValenceGuidanceSettings

from screen_run import run_screen  # benchmarks/, beside this script


def main() -> None:
    defaults = ValenceGuidanceSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="release (default: the shipped qm9)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="default: the release's CPU default")
    ap.add_argument("--guidance", type=float, default=None, help="autoguidance weight (default: the release's)")
    ap.add_argument("--scale", type=float, default=0.0, help="position step (0: no valence guidance)")
    ap.add_argument("--type-scale", type=float, default=defaults.type_scale)
    ap.add_argument("--max-t", type=int, default=defaults.max_t)
    ap.add_argument("--width", type=float, default=defaults.width)
    ap.add_argument("--temperature", type=float, default=defaults.temperature)
    ap.add_argument("--over-weight", type=float, default=defaults.over_weight)
    ap.add_argument("--decisiveness", type=float, default=defaults.decisiveness)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the molecules (SDF)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    release = load_release(args.model, torch.device("cpu"), show_progress=False)
    denoiser, weight = autoguided_denoiser(release, args.guidance, None, show_progress=False)
    settings = ValenceGuidanceSettings(scale=args.scale, max_t=args.max_t, width=args.width,
                                       temperature=args.temperature, type_scale=args.type_scale,
                                       over_weight=args.over_weight, decisiveness=args.decisiveness)
    denoiser = with_valence_guidance(denoiser, release.cfg, settings)
    sampler = Sampler(denoiser, release.cfg)
    run_screen(sampler, release, args.n, args.seed, args.steps, args.out, {**vars(args), "guidance_weight": weight})

if __name__ == "__main__":
    main()
