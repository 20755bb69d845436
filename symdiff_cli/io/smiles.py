"""The SMILES format: one `SMILES [name]` a line, embedded in 3D by RDKit when read."""

from __future__ import annotations

from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.perception import perceive_bonds_and_charges
from symdiff_cli.chem.quiet import captured_rdkit_errors
from symdiff_cli.io.formats import RecordProblems, single_line
from symdiff_cli.io.sdf import too_dense_for_rdkit, unsupported_atom_reason

# Fixed so that converting the same SMILES file twice gives the same coordinates.
_SMILES_EMBED_SEED = 20250401


def _embed_smiles(smiles: str):
    """An RDKit molecule with explicit hydrogens and one 3D conformer, or a failure reason."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    with captured_rdkit_errors() as messages:
        parsed = Chem.MolFromSmiles(smiles)
    if parsed is None:
        return None, (messages[0] if messages else "RDKit could not parse the SMILES")
    with_hydrogens = Chem.AddHs(parsed)
    params = AllChem.ETKDGv3()
    params.randomSeed = _SMILES_EMBED_SEED
    with captured_rdkit_errors():
        status = AllChem.EmbedMolecule(with_hydrogens, params)
        if status != 0:
            # Random starting coordinates succeed for many molecules the default start fails on.
            params.useRandomCoords = True
            status = AllChem.EmbedMolecule(with_hydrogens, params)
    if status != 0:
        return None, "RDKit could not embed it in 3D"
    # Kekulé bonds (orders 1-3) are what the rest of the project (and the metrics) use.
    Chem.Kekulize(with_hydrogens, clearAromaticFlags=True)
    return with_hydrogens, None


def parse_smiles(text: str, source: str, problems: RecordProblems) -> list[Molecule]:
    """One molecule per line: `SMILES [name]`; blank lines, '#' comments and a 'smiles'
    header line are ignored. Each SMILES is embedded in 3D with explicit hydrogens."""
    from symdiff_cli.chem.rdkit_mol import molecule_from_rdkit

    molecules: list[Molecule] = []
    position = -1  # among the file's records: its SMILES lines
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 1)
        smiles = fields[0]
        if line_number == 1 and smiles.lower() == "smiles":
            continue
        position += 1
        rd_mol, reason = _embed_smiles(smiles)
        if rd_mol is not None:
            reason = unsupported_atom_reason(rd_mol)  # a '*' (any atom) is not an element
        if reason is not None:
            problems.report(f"line {line_number} ({smiles})", reason, position)
            continue
        molecule = molecule_from_rdkit(rd_mol)
        molecule.props = {"smiles": smiles}
        if len(fields) > 1 and fields[1].strip():
            molecule.props["name"] = fields[1].strip()
        molecules.append(molecule)
    return molecules


def smiles_line(mol: Molecule, bonds: str = "benchmark") -> str | None:
    """`SMILES [name]` for a molecule, or None when RDKit cannot sanitise it.

    The SMILES is canonical, of the largest fragment, without explicit hydrogens, from the
    molecule's own or perceived bonds; that is the molecule the validity metric judges.
    """
    from rdkit import Chem

    from symdiff_cli.chem.rdkit_mol import mark_radicals, rdkit_mol_from_bonds, stereo_from_coordinates

    bond_rows, charges = perceive_bonds_and_charges(mol, bonds)
    if too_dense_for_rdkit(mol, bond_rows):
        return None  # more bonds than any valence allows: no valid SMILES, and RDKit would not finish
    rd_mol = rdkit_mol_from_bonds(Molecule(mol.atomic_numbers, mol.positions, mol.bonds, mol.props, charges),
                                  bond_rows)
    if mol.radicals is not None:  # a source's radicals stay radicals, not filled with hydrogens
        mark_radicals(rd_mol, mol.radicals)
    try:
        with captured_rdkit_errors():
            Chem.SanitizeMol(rd_mol)
            stereo_from_coordinates(rd_mol)
            fragments = Chem.GetMolFrags(rd_mol, asMols=True)
            largest = max(fragments, key=lambda fragment: fragment.GetNumAtoms())
            smiles = Chem.MolToSmiles(Chem.RemoveHs(largest))
    except Exception:  # RDKit raises several unrelated classes (valence, kekulisation, ...)
        return None
    if not smiles:
        return None
    name = single_line(mol.props.get("name", ""))
    return f"{smiles} {name}\n" if name else f"{smiles}\n"


