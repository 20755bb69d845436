"""Names and shapes of a release's files that both the release format and its model card use.

Kept apart from engine/release.py so the card (engine/card.py), which release.py renders,
does not import release.py back.
"""

from __future__ import annotations

from typing import Any

import torch

from symdiff_cli.model.config import ModelConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
RELEASE_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
GUIDE_WEIGHTS_FILE = "guide.safetensors"


def expected_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the state_dict of `SymmetrisedDenoiser(cfg)`.

    Built on the meta device, so even the paper-size network costs no memory or init time.
    """
    from symdiff_cli.model.dit import SymmetrisedDenoiser

    try:
        with torch.device("meta"):
            model = SymmetrisedDenoiser(cfg)
    except (NotImplementedError, RuntimeError):  # an init routine without meta support
        model = SymmetrisedDenoiser(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def guide_entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The guide networks' entries of a config.json's guidance section (format 2 or 3 layout)."""
    raw = config.get("guidance")
    if not isinstance(raw, dict):
        return []
    return raw["guides"] if "guides" in raw else [raw]


def guide_weights_file(index: int) -> str:
    """The weights file of a release's guide network number `index` (from 0)."""
    return GUIDE_WEIGHTS_FILE if index == 0 else f"guide-{index + 1}.safetensors"
