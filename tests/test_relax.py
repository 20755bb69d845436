"""Issue 37: relaxation (--relax xtb|mmff), keep-only-good sampling (--keep) and energy metrics.

Chemistry tests use small RDKit-embedded molecules; generate runs use the untrained "tiny"
release of test_generate_cli.py, whose samples are atoms hundreds of Angstrom apart (every
xtb calculation on them fails and is counted, which exercises the same paths quickly).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from symdiff_cli.chem.molecule import Molecule
from symdiff_cli.chem.relax import RelaxSettings, heavy_atom_rmsd, relax_molecule, total_charge, unpaired_electrons
from symdiff_cli.io.reader import read_molecules
from test_generate_cli import FAST, env, run_cli, subprocess_env, weights  # noqa: F401 (fixtures)

needs_xtb = pytest.mark.skipif(not __import__("symdiff_cli.chem.relax", fromlist=["x"]).xtb_available(),
                               reason="tblite and ase (the [relax] extra) are not installed")
CLI = [sys.executable, "-m", "symdiff_cli"]


def embedded(smiles: str, seed: int = 1) -> tuple[Molecule, "object"]:
    """An RDKit-embedded, MMFF-optimised molecule with explicit hydrogens, and the RDKit molecule."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    rd = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(rd, randomSeed=seed)
    AllChem.MMFFOptimizeMolecule(rd)
    charges = np.array([a.GetFormalCharge() for a in rd.GetAtoms()])
    mol = Molecule([a.GetAtomicNum() for a in rd.GetAtoms()], rd.GetConformer().GetPositions(),
                   formal_charges=charges if charges.any() else None)
    return mol, rd


def bond_lengths(rd, positions: np.ndarray) -> np.ndarray:
    return np.array([np.linalg.norm(positions[b.GetBeginAtomIdx()] - positions[b.GetEndAtomIdx()])
                     for b in rd.GetBonds()])


def distorted(mol: Molecule, positions: np.ndarray, scale: float, seed: int = 0) -> Molecule:
    rng = np.random.default_rng(seed)
    return Molecule(mol.atomic_numbers, positions + rng.normal(0.0, scale, positions.shape), mol.bonds,
                    dict(mol.props), mol.formal_charges)


def write_sdf(path: Path, smiles_list: list[str]) -> None:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    writer = Chem.SDWriter(str(path))
    for k, smiles in enumerate(smiles_list):
        rd = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(rd, randomSeed=k + 1)  # embedded, not optimised: relaxation has work to do
        rd.SetProp("_Name", smiles)
        writer.write(rd)
    writer.close()


# --------------------------------------------------------------------------------------
# One molecule

# xtb runs in a worker process, as the commands run it: one OpenMP thread there, where the
# test process's OpenMP pool (PyTorch's) would spin its threads against the other tests'.


@pytest.fixture(scope="module")
def xtb_pool():
    from symdiff_cli.engine.relax_pool import RelaxPool

    with RelaxPool(RelaxSettings("xtb"), workers=1) as pool:
        yield pool


def xtb(pool, mol: Molecule):
    return pool.relax([mol])[0]


@needs_xtb
def test_xtb_relaxes_a_distorted_molecule_back_to_its_minimum(xtb_pool):
    mol, rd = embedded("CC(=O)NC")  # N-methylacetamide
    reference = xtb(xtb_pool, mol)
    assert reference.converged
    shaken = distorted(mol, reference.positions, 0.1)
    assert np.abs(bond_lengths(rd, shaken.positions) - bond_lengths(rd, reference.positions)).max() > 0.1
    again = xtb(xtb_pool, shaken)
    assert again.converged and again.method == "xtb"
    assert np.abs(bond_lengths(rd, again.positions) - bond_lengths(rd, reference.positions)).max() < 0.02
    assert again.energy == pytest.approx(reference.energy, abs=0.5)  # kcal/mol
    assert again.energy_drop > 5.0 and 0.03 < again.rmsd < 0.3


def test_mmff_relaxes_a_distorted_molecule_back_and_leaves_untypeable_ones():
    mol, rd = embedded("OCC=O")
    from symdiff_cli.chem.rdkit_mol import bonds_from_rdkit as _bonds_from_rdkit  # the rows an SDF reader gives

    mol.bonds = _bonds_from_rdkit(rd)
    shaken = distorted(mol, mol.positions, 0.08)
    outcome = relax_molecule(shaken, RelaxSettings("mmff"))
    assert outcome.converged and outcome.energy_drop > 0
    assert np.abs(bond_lengths(rd, outcome.positions) - bond_lengths(rd, mol.positions)).max() < 0.02
    # Without bonds of its own and with atoms torn apart, no bonds can be assigned: left as it is.
    torn = Molecule(mol.atomic_numbers, mol.positions * 3.0)
    left = relax_molecule(torn, RelaxSettings("mmff"))
    assert left.status == "unassigned" and not left.relaxed and np.array_equal(left.positions, torn.positions)


@needs_xtb
def test_a_radical_is_a_doublet_and_a_charged_input_keeps_its_charge(tmp_path, xtb_pool):
    methyl = Molecule([6, 1, 1, 1], [[0, 0, 0], [1.12, 0, 0], [-0.5, 0.95, 0.1], [-0.5, -0.95, -0.1]])
    assert unpaired_electrons(methyl.atomic_numbers, 0) == 1
    outcome = xtb(xtb_pool, methyl)
    assert outcome.converged and np.isfinite(outcome.energy)
    assert relax_molecule(methyl, RelaxSettings("mmff")).status == "unassigned"  # an open valence
    # Methylammonium from an SDF: the reader keeps the +1, xtb runs it as a closed-shell cation
    # (18 electrons) and MMFF types it; the written file keeps the charge.
    sdf = tmp_path / "cation.sdf"
    write_sdf(sdf, ["C[NH3+]"])
    (cation,), _ = read_molecules(str(sdf))
    assert total_charge(cation) == 1 and unpaired_electrons(cation.atomic_numbers, 1) == 0
    assert xtb(xtb_pool, cation).converged
    assert relax_molecule(cation, RelaxSettings("mmff")).converged
    out = tmp_path / "out.sdf"
    code = subprocess.run(CLI + ["convert", str(sdf), str(out), "--relax", "mmff", "--workers", "1"],
                          capture_output=True, text=True, timeout=120)
    assert code.returncode == 0, code.stderr
    (written,), _ = read_molecules(str(out))
    assert total_charge(written) == 1 and written.props["symdiff_relax_status"] == "converged"


def test_heavy_atom_rmsd_ignores_rotation_translation_and_hydrogens():
    mol, _ = embedded("CCO")
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    moved = mol.positions @ rotation.T + [3.0, -1.0, 2.0]
    moved[mol.atomic_numbers == 1] += 0.5
    assert heavy_atom_rmsd(mol.atomic_numbers, mol.positions, moved) < 1e-9


# --------------------------------------------------------------------------------------
# The optional extra


def test_without_the_extra_relax_xtb_is_a_one_line_error(env, tmp_path, capsys, monkeypatch):
    # A None entry in sys.modules makes `import tblite.interface` raise ImportError, as when
    # the package is not installed.
    for name in ("tblite", "tblite.interface", "tblite.ase"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "mols.sdf"
    code, _, stderr = run_cli(capsys, "generate", "--n", "2", "--out", str(out), "--model", "tiny", "--relax", "xtb",
                              *FAST)
    assert code == 1 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "pip install 'symdiff-cli[relax]'" in stderr and not out.exists()
    sdf = tmp_path / "in.sdf"
    write_sdf(sdf, ["CO"])
    for args in (["convert", str(sdf), str(tmp_path / "o.sdf"), "--relax", "xtb"], ["evaluate", str(sdf), "--energy"]):
        code, _, stderr = run_cli(capsys, *args)
        assert code == 1 and stderr.startswith("Error: --relax xtb needs the optional packages tblite and ase")
    assert not (tmp_path / "o.sdf").exists()


# --------------------------------------------------------------------------------------
# convert --relax: workers, Ctrl-C


@needs_xtb
def test_convert_relax_gives_the_same_bytes_with_one_or_two_workers(tmp_path, capsys):
    sdf = tmp_path / "in.sdf"
    write_sdf(sdf, ["CCO", "CC#N", "C1CC1", "NC=O", "[CH3]", "CC(=O)[O-]"])
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.sdf"
        code, _, stderr = run_cli(capsys, "convert", str(sdf), str(out), "--relax", "xtb", "--workers", workers)
        assert code == 0, stderr
        assert "xtb relaxation of 6 molecules: 6 converged" in stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    mols, _ = read_molecules(str(tmp_path / "w1.sdf"))
    tags = mols[0].props
    assert tags["symdiff_relax_method"] == "xtb" and tags["symdiff_relax_converged"] == "1"
    assert float(tags["symdiff_relax_energy_drop_kcal_mol"]) > 0 and float(tags["symdiff_relax_heavy_rmsd_angstrom"]) > 0
    assert float(tags["symdiff_relax_energy_kcal_mol"]) < -1000  # GFN2-xTB total energy of ethanol, kcal/mol


def interrupt_once_written(proc: subprocess.Popen, folder: Path) -> str:
    """Wait until `proc` (a session leader) has written into its .partial file, then send SIGINT to
    its whole process group, as a terminal sends Ctrl-C; returns its standard error."""
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial") and p.stat().st_size > 0 for p in folder.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    return stderr.decode()


@needs_xtb
def test_ctrl_c_during_convert_relax_keeps_the_finished_molecules(tmp_path):
    sdf = tmp_path / "in.sdf"
    write_sdf(sdf, ["CCCCO", "CCOCC", "CC(C)CO", "OCCCN"] * 10)
    out = tmp_path / "out.sdf"
    # A new session, and SIGINT to its whole process group, as a terminal sends Ctrl-C: the
    # workers must leave it to the main process.
    proc = subprocess.Popen(CLI + ["convert", str(sdf), str(out), "--relax", "xtb", "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stderr = interrupt_once_written(proc, tmp_path)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Interrupted by SIGINT: wrote" in stderr
    mols, skipped = read_molecules(str(out), strict=True)
    assert skipped == 0 and 4 <= len(mols) < 40
    assert all(m.props["symdiff_relax_method"] == "xtb" for m in mols)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.sdf", "out.sdf"]


# --------------------------------------------------------------------------------------
# generate --keep and --relax


@pytest.fixture()
def keep_even_sizes(monkeypatch):
    """The tiny model's samples are never stable; this test rule passes molecules of even atom
    count instead, a property of the sample alone, so --keep's counting can be checked exactly."""
    import symdiff_cli.engine.keep as keep

    monkeypatch.setattr(keep, "_passes", lambda report, mode: report.num_atoms % 2 == 0)


def _names_and_sizes(path: Path) -> list[tuple[str, int]]:
    mols, _ = read_molecules(str(path))
    return [(m.props["name"], m.num_atoms) for m in mols]


def test_keep_writes_exactly_n_passing_molecules_reproducibly(env, tmp_path, capsys, keep_even_sizes):
    args = ["--n", "9", "--model", "tiny", "--keep", "stable", *FAST]
    code, _, stderr = run_cli(capsys, "generate", "--out", str(tmp_path / "a.sdf"), *args)
    assert code == 0, stderr
    kept = _names_and_sizes(tmp_path / "a.sdf")
    assert len(kept) == 9 and all(size % 2 == 0 for _, size in kept)
    assert "--keep stable: kept 9 of" in stderr and "raw samples" in stderr
    sampled = int(stderr.split("--keep stable: kept 9 of ")[1].split()[0])
    assert sampled > 9  # needed more than the first round: the later rounds' seeds were used
    code, _, _ = run_cli(capsys, "generate", "--out", str(tmp_path / "b.sdf"), *args, "--quiet")
    assert code == 0 and (tmp_path / "a.sdf").read_bytes() == (tmp_path / "b.sdf").read_bytes()
    # --keep all is the plain run, and the plain run's passing molecules open the --keep file.
    run_cli(capsys, "generate", "--out", str(tmp_path / "plain.sdf"), "--n", "9", "--model", "tiny", *FAST, "-q")
    run_cli(capsys, "generate", "--out", str(tmp_path / "all.sdf"), "--n", "9", "--model", "tiny", "--keep", "all",
            *FAST, "-q")
    assert (tmp_path / "plain.sdf").read_bytes() == (tmp_path / "all.sdf").read_bytes()
    plain_passing = [item for item in _names_and_sizes(tmp_path / "plain.sdf") if item[1] % 2 == 0]
    assert kept[:len(plain_passing)] == plain_passing


def test_keep_shards_are_disjoint_and_add_up(env, tmp_path, capsys, keep_even_sizes):
    files = []
    for index in (0, 1):
        out = tmp_path / f"s{index}.sdf"
        code, _, stderr = run_cli(capsys, "generate", "--n", "9", "--out", str(out), "--model", "tiny",
                                  "--keep", "stable", "--shard", f"{index}/2", *FAST, "-q")
        assert code == 0, stderr
        files.append(out)
    mols = [m for f in files for m in read_molecules(str(f))[0]]
    assert len(mols) == 9
    coordinates = {m.positions.round(4).tobytes() for m in mols}
    assert len(coordinates) == 9 and len({m.props["name"] for m in mols}) == 9


def test_keep_stops_at_max_attempts_with_a_one_line_error(env, tmp_path, capsys):
    out = tmp_path / "mols.sdf"
    code, _, stderr = run_cli(capsys, "generate", "--n", "3", "--out", str(out), "--model", "tiny", "--keep", "stable",
                              "--max-attempts", "8", *FAST)
    assert code == 1 and "Traceback" not in stderr
    assert stderr.splitlines()[-1] == ("Error: only 0 of 3 molecules passed --keep stable in 8 attempts "
                                       "(acceptance 0.0 %); no file was written. Raise --max-attempts")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert "Wrote 0" not in stderr and "No molecule passed --keep stable" in stderr  # no claim of a file
    for bad, message in ((["--max-attempts", "2", "--keep", "valid"], "--max-attempts must be at least --n"),
                         (["--max-attempts", "20"], "--max-attempts applies only with --keep"),
                         (["--keep", "good"], "--keep must be one of all, valid, stable"),
                         (["--relax", "dft"], "--relax must be one of none, xtb, mmff"),
                         (["--relax", "mmff", "--workers", "0"], "--workers must be at least 1"),
                         (["--relax", "mmff", "--relax-steps", "0"], "--relax-steps must be at least 1, not 0")):
        code, _, stderr = run_cli(capsys, "generate", "--n", "3", "--out", str(out), "--model", "tiny", *bad, *FAST)
        assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr


@pytest.fixture()
def chemical_samples(monkeypatch):
    """The sampler's molecules replaced by real small molecules shaken by 0.06 Angstrom (the
    tiny model's own samples are atoms hundreds of Angstrom apart, which no method relaxes):
    the same replacement for the same batch, so runs stay reproducible."""
    from symdiff_cli.engine.sampling import Sampler

    templates = [embedded(smiles)[0] for smiles in ("CO", "CC", "C=O", "CN", "OCO", "CC#N")]
    real_sample = Sampler.sample

    def sample(self, plan, steps, on_step=None):
        for number, mols in enumerate(real_sample(self, plan, steps, on_step)):
            rng = np.random.default_rng(number)
            yield [distorted(templates[(number + k) % len(templates)], templates[(number + k) % len(templates)].positions,
                             0.06, seed=int(rng.integers(1 << 30))) for k in range(len(mols))]

    monkeypatch.setattr(Sampler, "sample", sample)


@needs_xtb
def test_generate_relax_then_keep_stable_and_workers_do_not_change_the_file(env, tmp_path, capsys, chemical_samples):
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.sdf"
        code, _, stderr = run_cli(capsys, "generate", "--n", "8", "--out", str(out), "--model", "tiny",
                                  "--relax", "xtb", "--workers", workers, "--keep", "stable", *FAST)
        assert code == 0, stderr
        assert "raw samples (" in stderr and "after xtb relaxation (" in stderr and "--keep stable: kept 8 of" in stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    mols, _ = read_molecules(str(tmp_path / "w1.sdf"))
    assert len(mols) == 8 and all(m.props["symdiff_stable"] == "1" for m in mols)
    assert all(m.props["symdiff_relax_method"] == "xtb" and m.props["symdiff_relax_converged"] == "1" for m in mols)
    # mmff on the same samples: bonds perceived from the shaken coordinates, relaxed where MMFF types them.
    code, _, stderr = run_cli(capsys, "generate", "--n", "6", "--out", str(tmp_path / "m.sdf"), "--model", "tiny",
                              "--relax", "mmff", "--workers", "1", *FAST)
    assert code == 0 and "mmff relaxation of 6 molecules:" in stderr, stderr
    assert {m.props["symdiff_relax_status"] for m in read_molecules(str(tmp_path / "m.sdf"))[0]} <= {
        "converged", "unassigned"}


# --------------------------------------------------------------------------------------
# evaluate --energy


@needs_xtb
def test_evaluate_energy_reports_strain_and_rmsd_per_molecule_and_in_quartiles(tmp_path, capsys, monkeypatch):
    import symdiff_cli.engine.energy_reference as reference

    # The QM9 reference is the same computation on other molecules; here it is stubbed so the
    # test needs no QM9 data, and checked to be carried into the JSON.
    monkeypatch.setattr(reference, "qm9_energy_reference",
                        lambda count, workers=None, on_done=None: {"molecules": count, "relaxed": count,
                                                                   "converged": count, "failed": 0,
                                                                   "strain_kcal_mol": {"q1": 1, "median": 2, "q3": 3},
                                                                   "rmsd_angstrom": {"q1": .1, "median": .2, "q3": .3}})
    sdf = tmp_path / "in.sdf"
    write_sdf(sdf, ["CO", "CC", "C=O"])
    code, _, stderr = run_cli(capsys, "evaluate", str(sdf), "--energy", "--energy-reference", "7", "--no-novelty",
                              "--json", str(tmp_path / "e.json"), "--per-molecule", str(tmp_path / "e.csv"),
                              "--workers", "1")
    assert code == 0, stderr
    payload = json.loads((tmp_path / "e.json").read_text())["energy"]
    assert payload["molecules"] == 3 and payload["converged"] == 3 and payload["reference"]["molecules"] == 7
    strain = payload["strain_kcal_mol"]
    assert 0 < strain["q1"] <= strain["median"] <= strain["q3"]
    rows = (tmp_path / "e.csv").read_text().splitlines()
    assert rows[0].endswith("relax_status,energy_given_kcal_mol,energy_relaxed_kcal_mol,strain_kcal_mol,rmsd_angstrom")
    given, relaxed, strain_one = (float(x) for x in rows[1].split(",")[-4:-1])
    assert strain_one == pytest.approx(given - relaxed, abs=1e-3) and strain_one > 0


@pytest.mark.slow
@needs_xtb
def test_ctrl_c_during_generate_relax_keeps_finished_batches_and_ends_the_workers(env, tmp_path):
    out = tmp_path / "mols.sdf"
    # The tiny model's samples make every SCF fail slowly (atoms far apart): a few seconds a batch.
    proc = subprocess.Popen(CLI + ["generate", "--model", "tiny", "--out", str(out), "--n", "40", "--threads", "1",
                                   "--relax", "xtb", "--workers", "2", *FAST],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env(env), cwd=tmp_path,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stderr = interrupt_once_written(proc, tmp_path)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Interrupted: wrote" in stderr
    mols, skipped = read_molecules(str(out), strict=True)
    assert skipped == 0 and 4 <= len(mols) < 40 and len(mols) % 4 == 0  # whole batches only
    assert all(m.props["symdiff_relax_method"] == "xtb" for m in mols)
    assert [p.name for p in tmp_path.iterdir()] == ["mols.sdf"]
    # No worker outlived the command (a container without an init may leave them as zombies:
    # ended, only not reaped).
    time.sleep(0.5)
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert all(state.startswith("Z") for state in states), states


@needs_xtb
def test_the_qm9_energy_reference_is_a_seeded_subsample_computed_once(tmp_path, monkeypatch, small_packed):
    import symdiff_cli.data.qm9 as qm9
    import symdiff_cli.engine.energy_reference as reference

    monkeypatch.setenv("SYMDIFF_CACHE", str(tmp_path))
    monkeypatch.setattr(qm9, "qm9_split", lambda split: small_packed)  # small molecules stand in for QM9
    calls = []
    real = reference.molecule_energies
    monkeypatch.setattr(reference, "molecule_energies",
                        lambda mols, workers=None, on_done=None: calls.append(len(mols)) or real(mols, workers, on_done))
    first = reference.qm9_energy_reference(3, workers=1)
    assert calls == [3] and first["molecules"] == 3 and first["relaxed"] == 3
    assert first["sample"] == f"3 of the {len(small_packed)} QM9 test molecules, drawn with seed 0"
    assert reference.qm9_energy_reference(3, workers=1) == first and calls == [3]  # from the cache
