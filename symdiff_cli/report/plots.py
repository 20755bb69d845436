"""The report's figures, drawn with matplotlib off-screen and returned as inline PNG data URIs.

Figures are built with matplotlib's object API (Figure + the Agg canvas) rather than pyplot:
no global figure state, no display needed, and nothing left open between reports. Every set of
molecules is normalised before plotting (fractions of its molecules, atoms or pairs), so a
sample of 1,000 compares with the 13,083 molecules of the QM9 test split.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from symdiff_cli.report.stats import BOND_TYPES, DISTANCE_EDGES, FAILURES, SetStats, bond_thresholds

# The reference is drawn as a grey filled area behind the inputs' lines, in every figure.
REFERENCE_COLOUR = "#9a9a9a"
# matplotlib's default cycle ("tab10"): distinct and readable for up to ten inputs.
INPUT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")
THRESHOLD_STYLE = {"single": ("#d62728", "--"), "double": ("#ff7f0e", "-."), "triple": ("#9467bd", ":")}
DPI = 80


@dataclass(frozen=True)
class Image:
    """One figure of the report: its title, an explanatory caption and the PNG as a data URI."""

    title: str
    caption: str
    data_uri: str
    key: str = ""  # what the page places beside it (the failure tables go with "failures")


def colour(index: int) -> str:
    return INPUT_COLOURS[index % len(INPUT_COLOURS)]


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fractions(counts: dict, keys: Sequence) -> np.ndarray:
    values = np.array([counts.get(k, 0) for k in keys], dtype=float)
    total = sum(counts.values())
    return values / total if total else values


def _grouped_bars(ax, labels: Sequence[str], series: list[tuple[str, str, np.ndarray]]) -> None:
    """Bars of several sets side by side per label; series = (name, colour, heights)."""
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for k, (name, col, heights) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, heights, width, label=name, color=col,
               alpha=0.55 if col == REFERENCE_COLOUR else 0.9)
    ax.set_xticks(x, labels)


def _all_series(inputs: Sequence[SetStats], reference: SetStats | None) -> list[tuple[str, str, SetStats]]:
    out = [] if reference is None else [(reference.name, REFERENCE_COLOUR, reference)]
    return out + [(s.name, colour(k), s) for k, s in enumerate(inputs)]


def bond_length_figure(inputs: Sequence[SetStats], reference: SetStats | None) -> Image:
    fig = new_figure(13, 6.2)
    axes = fig.subplots(2, 4).ravel()
    centres = (DISTANCE_EDGES[:-1] + DISTANCE_EDGES[1:]) / 2
    for ax, bond_type in zip(axes, BOND_TYPES):
        thresholds = bond_thresholds(bond_type)
        for name, col, stats in _all_series(inputs, reference):
            counts = np.asarray(stats.bond_hist.get(bond_type, []), dtype=float)
            if counts.sum() == 0:
                continue
            density = counts / counts.sum() / np.diff(DISTANCE_EDGES)
            if col == REFERENCE_COLOUR:
                ax.fill_between(centres, density, step="mid", color=col, alpha=0.45, label=name)
            else:
                ax.step(centres, density, where="mid", color=col, lw=1.3, label=name)
        for order, length in thresholds.items():
            line_colour, style = THRESHOLD_STYLE[order]
            ax.axvline(length, color=line_colour, ls=style, lw=1.1, label=f"{order} bond below")
        if thresholds:
            low, high = min(thresholds.values()) - 0.3, max(thresholds.values()) + 0.3
            ax.set_xlim(max(low, DISTANCE_EDGES[0]), min(high, DISTANCE_EDGES[-1]))
        ax.set_title(bond_type if bond_type != "rest" else "all other pairs")
        ax.set_xlabel("distance (Å)")
        ax.set_yticks([])
    axes[0].set_ylabel("density")
    axes[4].set_ylabel("density")
    # The last panel holds the legend: the lines of every set plus the three threshold kinds.
    handles: dict = {}
    for ax in axes[:-1]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[-1].axis("off")
    axes[-1].legend(list(handles.values()), list(handles.keys()), loc="center", frameon=False)
    return Image(
        "Bond lengths",
        "Distances of all atom pairs closer than 2 Å, by element pair, normalised per set. The dashed "
        "lines are the benchmark's thresholds (table length plus margin): a pair closer than "
        "'single' is bonded, closer than 'double' doubly, closer than 'triple' triply. Mass just past a "
        "threshold is what turns atoms unstable.",
        png_data_uri(fig),
    )


def composition_figure(inputs: Sequence[SetStats], reference: SetStats | None) -> Image:
    series = _all_series(inputs, reference)
    fig = new_figure(13, 3.8)
    ax_n, ax_el, ax_ring = fig.subplots(1, 3, width_ratios=(1.4, 1, 1))
    sizes = sorted({n for _, _, s in series for n in s.atom_counts})
    if sizes:
        xs = np.arange(sizes[0], sizes[-1] + 1)
        for name, col, stats in series:
            heights = _fractions(stats.atom_counts, xs.tolist())
            if col == REFERENCE_COLOUR:
                ax_n.fill_between(xs, heights, step="mid", color=col, alpha=0.45, label=name)
            else:
                ax_n.step(xs, heights, where="mid", color=col, lw=1.3, label=name)
    ax_n.set_title("atoms per molecule")
    ax_n.set_xlabel("atoms (hydrogens included)")
    ax_n.set_ylabel("fraction of molecules")
    ax_n.legend(fontsize="small", frameon=False)

    elements = sorted({e for _, _, s in series for e in s.elements},
                      key=lambda e: -max(_fractions(s.elements, [e])[0] for _, _, s in series))
    _grouped_bars(ax_el, elements, [(n, c, _fractions(s.elements, elements)) for n, c, s in series])
    ax_el.set_title("elements")
    ax_el.set_ylabel("fraction of atoms")

    rings = sorted({r for _, _, s in series for r in s.ring_sizes}) or [3, 4, 5, 6]
    _grouped_bars(ax_ring, [str(r) for r in rings],
                  [(n, c, np.array([s.ring_sizes.get(r, 0) for r in rings], float) / max(s.num_molecules, 1))
                   for n, c, s in series])
    ax_ring.set_title("rings (perceived bonds)")
    ax_ring.set_xlabel("ring size")
    ax_ring.set_ylabel("rings per molecule")
    return Image(
        "Composition",
        "Atom counts, elements and ring sizes (smallest set of smallest rings of the perceived bond graph), "
        "each normalised per set.",
        png_data_uri(fig),
    )


def unstable_categories(sets: Sequence[SetStats], most: int = 14) -> list[tuple[str, int]]:
    """(element, bond-order sum) of unstable atoms, the most frequent (relative) first."""
    seen: dict[tuple[str, int], float] = {}
    for stats in sets:
        for element, by_valence in stats.unstable.items():
            atoms = max(stats.elements.get(element, 0), 1)
            for valence, count in by_valence.items():
                key = (element, valence)
                seen[key] = max(seen.get(key, 0.0), count / atoms)
    return sorted(seen, key=lambda k: -seen[k])[:most]


def failure_figure(inputs: Sequence[SetStats], reference: SetStats | None) -> Image:
    series = _all_series(inputs, reference)
    fig = new_figure(13, 3.8)
    ax_cause, ax_atoms = fig.subplots(1, 2, width_ratios=(1, 2.2))
    _grouped_bars(ax_cause, list(FAILURES),
                  [(n, c, np.array([s.failures.get(f, 0) for f in FAILURES], float) / max(s.num_molecules, 1))
                   for n, c, s in series])
    ax_cause.set_title("molecules: stable, or why not")
    ax_cause.set_ylabel("fraction of molecules")
    ax_cause.legend(fontsize="small", frameon=False)
    categories = unstable_categories([s for _, _, s in series])
    labels = [f"{e} ({v})" for e, v in categories]
    _grouped_bars(ax_atoms, labels or ["none"], [
        (n, c, np.array([100 * s.unstable.get(e, {}).get(v, 0) / max(s.elements.get(e, 0), 1) for e, v in categories]
                        or [0.0]))
        for n, c, s in series])
    ax_atoms.set_title("unstable atoms: element (sum of perceived bond orders)")
    ax_atoms.set_ylabel("% of that element's atoms")
    ax_atoms.tick_params(axis="x", labelrotation=45)
    return Image(
        "Failures",
        "Left: stable molecules, and unstable ones split by cause: 'composition' when no geometry could make "
        "the atoms stable (an odd electron count, say), 'geometry' when the bond lengths are to blame. Right: "
        "unstable atoms by element and the sum of their perceived bond orders (C (3): a carbon with only "
        "three bonds' worth), as a share of all atoms of that element.",
        png_data_uri(fig),
        key="failures",
    )


def molecule_figures(inputs: Sequence[SetStats], reference: SetStats | None) -> list[Image]:
    return [bond_length_figure(inputs, reference), composition_figure(inputs, reference),
            failure_figure(inputs, reference)]


__all__ = ["Image", "colour", "molecule_figures", "new_figure", "png_data_uri", "unstable_categories", "REFERENCE_COLOUR",
           "INPUT_COLOURS"]
