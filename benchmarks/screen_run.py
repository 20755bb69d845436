"""What the sampler screens (guidance_screen.py, valence_screen.py) share: sample n molecules the
way `symdiff generate` plans them, score them by the benchmark rules, print one JSON line."""

from __future__ import annotations

import json
import time
from typing import Any

from symdiff_cli.chem.metrics import evaluate_molecule, summarise
from symdiff_cli.engine.generate import DEFAULT_BATCH_SIZE_CPU
from symdiff_cli.engine.release import ReleasedModel
from symdiff_cli.engine.sampling import Sampler
from symdiff_cli.engine.shards import plan_for_shard
from symdiff_cli.io.formats import round_to_stored_precision
from symdiff_cli.io.writer import MoleculeWriter


def run_screen(sampler: Sampler, release: ReleasedModel, n: int, seed: int, steps: int | None,
               out: str | None, settings: dict[str, Any]) -> None:
    """Sample, score and print `settings` with the results as one JSON line; with `out`, also
    write the molecules (SDF) as `generate` would store them."""
    steps = steps or release.default_steps("cpu")
    plan = plan_for_shard(release.histogram, n, None, DEFAULT_BATCH_SIZE_CPU, seed, (0, 1))
    started = time.perf_counter()
    reports, molecules = [], []
    for mols in sampler.sample(plan, steps):
        round_to_stored_precision(mols, "sdf")
        reports += [evaluate_molecule(m) for m in mols]
        molecules += mols
    seconds = time.perf_counter() - started
    summary = summarise(reports)
    print(json.dumps({
        **settings, "steps": steps, "seconds": round(seconds, 1),
        "atom_stability": round(100 * summary.atom_stability, 2), "stable_molecules": summary.num_stable_molecules,
        "molecules": summary.num_molecules, "validity": round(100 * summary.validity, 2),
        "uniqueness": round(100 * summary.uniqueness, 2),
        "composition_failures": sum(r.failure == "composition" for r in reports),
        "geometry_failures": sum(r.failure == "geometry" for r in reports),
        "stable_ids": [i for i, r in enumerate(reports) if r.stable],
    }), flush=True)
    if out:
        writer = MoleculeWriter(out, "sdf")
        writer.write(molecules)
        writer.close()
