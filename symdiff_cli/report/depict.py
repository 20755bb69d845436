"""2D depictions of molecules as the metrics see them: the perceived bonds, unstable atoms marked.

A depiction draws the bond graph that the benchmark's distance rules perceive (chem/bonds.py),
not a graph re-derived by another method, so what the reader sees is what was scored. Hydrogens
bonded once are folded into their heavy atom, as chemists draw them; hydrogens with no bond or
several stay visible, since they are the failure.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDepictor
from rdkit.Chem.Draw import rdMolDraw2D

from symdiff_cli.chem.bonds import bond_order_matrix
from symdiff_cli.chem.metrics import MoleculeReport, stable_atoms
from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.rdkit_mol import heavy_atom_smiles, to_rdkit_mol

SIZE = (220, 170)
UNSTABLE_COLOUR = (0.95, 0.45, 0.45)
_UNSTABLE = "_report_unstable"


@dataclass(frozen=True)
class Depiction:
    """One drawn molecule: where it came from, its verdicts, its SMILES and the SVG as a data URI."""

    index: int
    num_atoms: int
    stable: bool
    valid: bool
    smiles: str
    data_uri: str


def sample_indices(count: int, most: int, seed: int = 0) -> list[int]:
    """Up to `most` molecule indices out of `count`, drawn without replacement, ascending, the same
    for the same file: a seeded draw shows the whole file, not just its first molecules."""
    if count <= most:
        return list(range(count))
    return sorted(np.random.default_rng(seed).choice(count, size=most, replace=False).tolist())


def _drawable(mol: Molecule) -> tuple[Chem.Mol, list[int]]:
    """The perceived molecule, hydrogens folded where they can be, and its unstable atoms' indices."""
    orders = bond_order_matrix(mol.atomic_numbers, mol.positions)
    unstable = ~stable_atoms(mol.atomic_numbers, orders)
    rdmol = to_rdkit_mol(mol, orders)
    for atom, flag in zip(rdmol.GetAtoms(), unstable.tolist()):
        atom.SetBoolProp(_UNSTABLE, bool(flag))
    # Explicit hydrogens carried as atoms; without this, folding them would invent implicit ones.
    for atom in rdmol.GetAtoms():
        atom.SetNoImplicit(True)
    try:
        with rdBase.BlockLogs():
            folded = Chem.RemoveHs(rdmol, sanitize=False)
    except Exception:  # RDKit refuses some unsanitisable graphs: draw every atom then
        folded = rdmol
    folded.RemoveAllConformers()
    highlight = [a.GetIdx() for a in folded.GetAtoms() if a.HasProp(_UNSTABLE) and a.GetBoolProp(_UNSTABLE)]
    return folded, highlight


def depict_svg(mol: Molecule, size: tuple[int, int] = SIZE) -> str:
    """SVG text of the perceived molecule with its unstable atoms highlighted."""
    drawable, highlight = _drawable(mol)
    drawable.UpdatePropertyCache(strict=False)
    Chem.GetSymmSSSR(drawable)  # the ring information the 2D layout needs, without sanitising
    rdDepictor.Compute2DCoords(drawable)
    drawer = rdMolDraw2D.MolDraw2DSVG(*size)
    options = drawer.drawOptions()
    options.clearBackground = False
    colours = {k: UNSTABLE_COLOUR for k in highlight}
    drawer.DrawMolecule(drawable, highlightAtoms=highlight, highlightAtomColors=colours, highlightBonds=[])
    drawer.FinishDrawing()
    return drawer.GetDrawingText()


def svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def depict_sample(molecules: Sequence[Molecule], reports: Sequence[MoleculeReport], most: int,
                  seed: int = 0) -> list[Depiction]:
    """Depictions of a seeded sample of up to `most` molecules."""
    out = []
    for k in sample_indices(len(molecules), most, seed):
        mol, report = molecules[k], reports[k]
        if mol.num_atoms == 0:
            continue
        with rdBase.BlockLogs():
            svg = depict_svg(mol)
        smiles = heavy_atom_smiles(report.smiles) if report.valid else None
        out.append(Depiction(k, mol.num_atoms, report.stable, report.valid, smiles or "", svg_data_uri(svg)))
    return out


__all__ = ["Depiction", "depict_sample", "depict_svg", "sample_indices", "svg_data_uri"]
