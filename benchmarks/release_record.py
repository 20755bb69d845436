"""What the measuring scripts that write into a release (seed_metrics.py, conditional_mae.py)
share: the sampler settings a measurement ran with, and writing metrics.json with its card."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

SYMDIFF = [sys.executable, "-m", "symdiff_cli"]


def run(args: list[str]) -> None:
    """`symdiff ARGS` in a subprocess; stops the script with its stderr if it fails."""
    done = subprocess.run(SYMDIFF + args, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"symdiff {' '.join(args)} failed:\n{done.stderr}")


def compact_json(data: dict) -> str:
    """Indented JSON with each list of plain values on one line, as the release files keep them."""
    text = json.dumps(data, indent=2)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n"


def sampler_settings(release: Path, extra: list[str]) -> dict[str, Any]:
    """The release's own CPU sampler settings (steps, guides, weight, guided interval, restart
    sampling) and the generate options given beside them; --guide and --guidance among those
    replace the guides and the weight."""
    from symdiff_cli.engine.release_layout import guide_entries

    config = json.loads((release / "config.json").read_text())
    sampling = config.get("sampling", {})
    settings: dict[str, Any] = {"steps": sampling.get("default_steps_cpu", 100), "spacing": "cubic",
                                "precision": "fp32", "device": "cpu"}
    if config.get("guidance"):
        names = [entry.get("provenance", {}).get("release") for entry in guide_entries(config)]
        if all(names):
            settings["guides"] = names
        settings["guidance"] = config["guidance"]["weight"]
    for key in ("guidance_max_t", "guidance_min_t", "restart"):
        if key in sampling:
            settings[key] = sampling[key]
    given = [extra[i + 1] for i, option in enumerate(extra[:-1]) if option == "--guide"]
    if given:  # --guide replaces the release's own guide networks
        settings["guides"] = given
    if "--guidance" in extra[:-1]:
        settings["guidance"] = float(extra[extra.index("--guidance") + 1])
    if extra:
        settings["options"] = " ".join(extra)
    return settings


def read_metrics(release: Path) -> dict[str, Any]:
    """The release's metrics.json, or an empty one."""
    from symdiff_cli.engine.metrics_file import METRICS_FILE, METRICS_FORMAT, METRICS_FORMAT_VERSION

    path = release / METRICS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return {"format": METRICS_FORMAT, "format_version": METRICS_FORMAT_VERSION, "measurements": []}


def write_metrics(release: Path, metrics: dict[str, Any]) -> None:
    """Check and write the release's metrics.json (atomically), then render its card again."""
    from symdiff_cli.engine.metrics_file import METRICS_FILE, check_metrics
    from symdiff_cli.io.atomic import atomic_output

    path = release / METRICS_FILE
    check_metrics(metrics, str(path))
    with atomic_output(path, "w") as handle:
        handle.write(compact_json(metrics))
    run(["convert", str(release), str(release), "--card-only"])
