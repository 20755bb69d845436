"""`symdiff evaluate --property PROP`: how close generated molecules come to the values they were
generated for, judged by a property predictor (engine/predictor.py), beside EDM's references."""

from __future__ import annotations

from typing import Any, Optional

from symdiff_cli.errors import SymdiffError

PROPERTY_COLUMNS = ("requested", "predicted")

# EDM (Hoogeboom et al. 2022), Table 3: MAE of the property predictor on shuffled labels, of a
# predictor from the atom count alone, of EDM's conditional samples, and on real QM9 molecules.
EDM_TABLE3 = {
    "alpha": (9.01, 3.86, 2.76, 0.10), "gap": (1470, 866, 655, 64), "homo": (645, 426, 356, 39),
    "lumo": (1457, 813, 584, 36), "mu": (1.616, 1.053, 1.111, 0.043), "Cv": (6.857, 1.971, 1.101, 0.040),
}


def load_property_predictor(prop_name: str, predictor_spec: Optional[str]):
    """The predictor of `prop_name` (--predictor, else the shipped qm9-PROP-predictor), checked to
    predict that property."""
    from symdiff_cli.data.properties import qm9_property
    from symdiff_cli.engine.predictor import default_predictor_name, load_predictor

    prop = qm9_property(prop_name)
    predictor = load_predictor(predictor_spec or default_predictor_name(prop.name))
    if predictor.prop != prop.name:
        raise SymdiffError(f"{predictor.path} predicts {predictor.prop}, not {prop.name}")
    return predictor


def compute_property_section(molecules: list, prop_name: str, predictor) -> tuple[list, dict[str, Any]]:
    """(per molecule (requested, predicted), the JSON section) for molecules tagged with their
    requested value (engine/sampling.py condition_tag), judged by `predictor` (load_property_predictor)."""
    import numpy as np

    from symdiff_cli.commands.progress import progress_bar
    from symdiff_cli.data.properties import qm9_property
    from symdiff_cli.engine.predictor import predict, typed_molecules
    from symdiff_cli.engine.sampling import condition_tag

    prop = qm9_property(prop_name)
    tag = condition_tag(prop.name)
    untagged = [k for k, mol in enumerate(molecules) if tag not in mol.props]
    if untagged:
        raise SymdiffError(f"{len(untagged)} of {len(molecules)} molecules have no {tag} tag (the value they were "
                           f"generated for), the first is molecule {untagged[0] + 1}: generate them with a conditional "
                           f"model, e.g. symdiff generate --model qm9-{prop.name} --condition {prop.name}")
    try:
        requested = np.array([float(mol.props[tag]) for mol in molecules])
    except ValueError:
        raise SymdiffError(f"a {tag} tag does not hold a number") from None
    data = typed_molecules([m.atomic_numbers for m in molecules], [m.positions for m in molecules], requested,
                           predictor.model.cfg.atom_types, [m.props.get("name") or f"molecule {k + 1}"
                                                             for k, m in enumerate(molecules)])
    with progress_bar(f"predicting {prop.name}") as on_progress:
        predicted = predict(predictor.model, data, on_progress)
    errors = np.abs(predicted - requested)
    section = {
        "property": prop.name, "unit": prop.unit, "predictor": str(predictor.path), "num_molecules": len(molecules),
        "mae": float(errors.mean()),
        "mae_standard_error": float(errors.std(ddof=1) / np.sqrt(len(errors))) if len(errors) > 1 else None,
        "references": dict(predictor.config["references"]),
    }
    if prop.name in EDM_TABLE3:
        naive, atoms, edm, lower = EDM_TABLE3[prop.name]
        section["edm_table3"] = {"shuffled": naive, "atom_count": atoms, "edm": edm, "real_molecules": lower}
    return list(zip(requested.tolist(), predicted.tolist())), section


def property_table(section: dict[str, Any]):
    from rich.table import Table

    unit = section["unit"]
    refs, edm = section["references"], section.get("edm_table3", {})
    table = Table(title=f"{section['property']}: requested vs predicted ({section['num_molecules']} molecules; "
                        f"predictor {section['predictor']})")
    table.add_column(f"MAE ({unit})")
    table.add_column("these molecules / this predictor", justify="right")
    table.add_column("EDM, Table 3", justify="right")

    def cell(value) -> str:
        return "-" if value is None else f"{value:.4g}"

    se = section["mae_standard_error"]
    table.add_row("generated molecules", f"{section['mae']:.4g}" + (f" ± {se:.2g}" if se is not None else ""),
                  cell(edm.get("edm")))
    table.add_row("shuffled values (upper bound)", cell(refs.get("shuffled")), cell(edm.get("shuffled")))
    table.add_row("atom count alone", cell(refs.get("atom_count")), cell(edm.get("atom_count")))
    table.add_row("real molecules (lower bound)", cell(refs.get("real_molecules")), cell(edm.get("real_molecules")))
    return table
