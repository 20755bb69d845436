"""The molecule types, where readers and writers have always imported them from.

They live in chem/molecule.py, beside the chemistry that uses them, so that chem/ never
imports from io/.
"""

from symdiff_cli.chem.molecule import Molecule, PackedMolecules

__all__ = ["Molecule", "PackedMolecules"]
