"""A release's model card (README.md) and its measured results (metrics.json).

The card is generated, never edited by hand: `model_card` renders it from the release's
config.json and, when the release has one, its metrics.json, in the Hugging Face model-card
layout (YAML front matter with a `model-index`, then summary, intended use and limits, usage,
architecture, training, results and citation). Writing a release (`save_release`,
`symdiff convert`) regenerates it; `symdiff convert REL REL --card-only` re-renders it alone.

The measured results it shows live in metrics.json (engine/metrics_file.py).
"""

from __future__ import annotations

import json
import math
from typing import Any

from symdiff_cli.engine.metrics_file import (  # noqa: F401  (the card's names for them)
    METRICS_FILE, METRICS_FORMAT, METRICS_FORMAT_VERSION, check_metrics, is_number, parse_metrics_text,
    read_metrics_text,
)
from symdiff_cli.engine.card_conditioning import conditioning_section
from symdiff_cli.engine.card_results import (
    METRIC_LABELS, number_text, pooled_percent, results_section, short_metric_label,
)
from symdiff_cli.model.config import with_current_model_keys


_ORIENTATION_KERNEL_TEXT = {
    "learned": "learned orientation kernel (SymDiff)",
    "haar": "Haar-random rotations (DiT-Aug baseline)",
    "none": "no symmetrisation (plain DiT)",
}

_CITATIONS = {
    "symdiff": """@inproceedings{zhang2025symdiff,
  title     = {{SymDiff}: Equivariant Diffusion via Stochastic Symmetrisation},
  author    = {Zhang, Leo and Ashouritaklimi, Kianoosh and Teh, Yee Whye and Cornish, Rob},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025}
}""",
    "edm": """@inproceedings{hoogeboom2022equivariant,
  title     = {Equivariant Diffusion for Molecule Generation in {3D}},
  author    = {Hoogeboom, Emiel and Satorras, V{\\'\\i}ctor Garcia and Vignac, Cl{\\'e}ment and Welling, Max},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2022}
}""",
    "autoguidance": """@inproceedings{karras2024guiding,
  title     = {Guiding a Diffusion Model with a Bad Version of Itself},
  author    = {Karras, Tero and Aittala, Miika and Kynk{\\"a}{\\"a}nniemi, Tuomas and Lehtinen, Jaakko
               and Aila, Timo and Laine, Samuli},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024}
}""",
    "restart": """@inproceedings{xu2023restart,
  title     = {Restart Sampling for Improving Generative Processes},
  author    = {Xu, Yilun and Deng, Mingyang and Cheng, Xiang and Tian, Yonglong and Liu, Ziming and Jaakkola, Tommi},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2023}
}""",
    "guidance_interval": """@inproceedings{kynkaanniemi2024applying,
  title     = {Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models},
  author    = {Kynk{\\"a}{\\"a}nniemi, Tuomas and Aittala, Miika and Karras, Tero and Laine, Samuli and Aila, Timo
               and Lehtinen, Jaakko},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024}
}""",
}


def _parameter_count(model_config: dict[str, Any]) -> int | None:
    """The parameter count of a network described by a config.json model_config, or None."""
    from symdiff_cli.engine.release_layout import expected_tensor_shapes
    from symdiff_cli.model.config import ModelConfig

    try:
        shapes = expected_tensor_shapes(ModelConfig.from_dict(model_config))
    except Exception:  # a config this symdiff cannot build: the card leaves the count out
        return None
    return sum(math.prod(shape) for shape in shapes.values())


# --------------------------------------------------------------------------------------
# The card


def model_card(config: dict[str, Any], num_parameters: int | None = None, metrics: dict[str, Any] | None = None,
               name: str | None = None) -> str:
    """The model card README.md of a release: its config.json, the parameter count of its main
    network, its checked metrics.json (or None) and its name (the directory's)."""
    from symdiff_cli.engine.registry import DEFAULT_MODEL_NAME

    model_config = with_current_model_keys(config["model_config"])  # releases written before the rename too
    dataset = str(config.get("dataset", model_config.get("dataset", "?")))
    name = name or dataset
    measurements = (metrics or {}).get("measurements", [])
    primary = measurements[0] if measurements else None
    own_results = primary is not None and "model" not in primary

    lines = _front_matter(name, dataset, primary if own_results else None,
                          bool((config.get("provenance") or {}).get("data_files")))
    lines += [f"# SymDiff {dataset.upper()} model `{name}`", ""]
    lines += _summary(config, dataset, metrics)
    lines += _intended_use(config, dataset, primary if own_results else None, (metrics or {}).get("limits", []))
    lines += _usage(config, name, dataset, name == DEFAULT_MODEL_NAME)
    lines += _architecture(config, num_parameters)
    lines += _training(config)
    lines += conditioning_section(config, name, metrics)
    lines += results_section(measurements)
    lines += _citation(config)
    return "\n".join(lines).rstrip("\n") + "\n"


def _front_matter(name: str, dataset: str, primary: dict[str, Any] | None, own_data: bool = False) -> list[str]:
    lines = ["---", "license: mit", "library_name: symdiff", "tags:"]
    lines += [f"- {tag}" for tag in ("molecule-generation", "diffusion", "3d", "chemistry", "symdiff")]
    if not own_data:  # a run on the user's files did not see the dataset whose atom types it uses
        lines += ["datasets:", f"- {dataset}"]
    if primary is not None:
        lines += [
            "model-index:",
            f"- name: {name}",
            "  results:",
            "  - task:",
            "      type: molecule-generation",
            "      name: Unconditional 3D molecule generation",
            "    dataset:",
            f"      type: {dataset}",
            f"      name: {dataset.upper()}",
            "    metrics:",
        ]
        for key, metric in primary["metrics"].items():
            value = pooled_percent(metric)
            if value is not None:
                lines.append(f"    - {{name: {short_metric_label(key)} (%), type: {key}, value: {round(value, 2):g}}}")
    lines += ["---", ""]
    return lines


def _summary(config: dict[str, Any], dataset: str, metrics: dict[str, Any] | None) -> list[str]:
    model_config = with_current_model_keys(config["model_config"])  # releases written before the rename too
    kernel = "a learned orientation kernel (stochastic symmetrisation, SymDiff)" \
        if model_config.get("orientation_kernel") == "learned" \
        else _ORIENTATION_KERNEL_TEXT.get(model_config.get("orientation_kernel"), str(model_config.get("orientation_kernel")))
    data_files = (config.get("provenance") or {}).get("data_files")
    trained_on = dataset.upper()
    if data_files:
        molecules = sum(int(count) for count in (config.get("atom_count_histogram") or {}).values())
        trained_on = (f"{molecules:,} molecules from its trainer's own files ({', '.join(data_files)}), not on "
                      f"{dataset.upper()}, with {dataset.upper()}'s vocabulary")
    text = (f"A 3D molecule generator trained on {trained_on} (atom types {' '.join(model_config.get('atom_types', []))}, "
            f"up to {model_config.get('max_atoms')} atoms): EDM-style variance-preserving diffusion whose denoiser, a Diffusion "
            f"Transformer, is made O(3)-equivariant in distribution by {kernel}; the samples are E(3)-invariant.")
    if config.get("guidance"):
        count = len(_guide_entries(config))
        text += (f" It samples with autoguidance by {'a guide network' if count == 1 else f'{count} guide networks'}"
                 " shipped in the release (below).")
    lines = [text]
    if metrics and metrics.get("description"):
        lines += ["", metrics["description"]]
    return lines + [""]


def _intended_use(config: dict[str, Any], dataset: str, primary: dict[str, Any] | None,
                  limits: list[str]) -> list[str]:
    lines = [
        "## Intended use and limits",
        "",
        "- For trying symdiff and for research on symmetrised diffusion models; not for chemistry or drug",
        "  design: samples are checked only by the benchmark's valence rules and RDKit sanitisation.",
    ]
    stability = (primary or {}).get("metrics", {}).get("molecule_stability")
    if stability is not None and dataset == "qm9":
        lines += [
            f"- Molecule stability is {pooled_percent(stability):.2f} % here (table below); published QM9 models reach",
            "  82.0 % (EDM) and about 89-90 % (SymDiff as published), the data itself 95.2 %.",
        ]
    lines += [f"- {limit}" for limit in limits]
    conditions = with_current_model_keys(config["model_config"]).get("conditions")
    lines += [
        (f"- Conditional on {', '.join(conditions)} (below); molecule sizes follow the training set's atom-count "
         "histogram." if conditions else
         "- Unconditional: molecule sizes follow the training set's atom-count histogram; no property conditioning."),
        "- Reproducibility: the same command, seed, options and thread count give the same file on the same",
        "  machine; another thread count, CPU or BLAS build may change the last digits of coordinates.",
        "",
    ]
    return lines


def _usage(config: dict[str, Any], name: str, dataset: str, is_default: bool) -> list[str]:
    sampling = config.get("sampling", {})
    model_option = "" if is_default else f" --model {name}"
    lines = [
        "## How to use",
        "",
        "```bash",
        f"symdiff generate{model_option} --n 1000 --out mols.sdf --seed 0"
        + ("   # the default model" if is_default else ""),
        f"symdiff evaluate mols.sdf --dataset {dataset}",
        "```",
        "",
        "`--model` takes a release name under `weights/` (or `$SYMDIFF_WEIGHTS`), a release directory or a",
        "Hugging Face Hub id (`org/repo`).",
    ]
    if config.get("guidance"):
        lines.append(f"`--guidance 1` samples the main network alone (faster, fewer stable molecules), `--guidance W` "
                     f"another weight, `--guide MODEL` other guides.")
    lines.append("Sampling defaults (config.json `sampling`; `--steps` overrides the step count): "
                 + ", ".join(f"`{key}` {json.dumps(value, sort_keys=True)}" for key, value in sampling.items()) + ".")
    return lines + [""]


def _guide_entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    from symdiff_cli.engine.release_layout import guide_entries

    return guide_entries(config)


def _architecture(config: dict[str, Any], num_parameters: int | None) -> list[str]:
    from symdiff_cli.engine.release_layout import guide_weights_file

    model_config = with_current_model_keys(config["model_config"])  # releases written before the rename too
    kernel = model_config.get("orientation_kernel")
    prov = config.get("provenance", {})
    lines = [
        "## Architecture",
        "",
        f"- Backbone DiT: hidden {model_config.get('hidden')}, depth {model_config.get('depth')}, {model_config.get('heads')} heads"
        + (", SwiGLU" if model_config.get("swiglu") else "") + f", MLP ratio {number_text(model_config.get('mlp_ratio'))}, adaLN-Zero; "
        f"{model_config.get('num_rbf')} radial basis distance features (cutoff {number_text(model_config.get('rbf_cutoff'))} Å)",
        f"- Orientation: {_ORIENTATION_KERNEL_TEXT.get(kernel, str(kernel))}"
        + (f", transformer hidden {model_config.get('orientation_hidden')}, depth {model_config.get('orientation_depth')}, "
           f"{model_config.get('orientation_heads')} heads" if kernel == "learned" else ""),
        f"- Atom types: {' '.join(model_config.get('atom_types', []))}; at most {model_config.get('max_atoms')} atoms",
        f"- Diffusion: {model_config.get('timesteps')} steps, {model_config.get('noise_schedule')} noise schedule",
    ]
    if model_config.get("self_condition"):
        lines.append("- Self-conditioning (Chen et al. 2022): each sampling step also reads the previous step's "
                     "estimate of the clean molecule")
    if num_parameters is not None:
        lines.append(f"- Parameters: {num_parameters:,}")
    guidance = config.get("guidance")
    if guidance:
        entries = _guide_entries(config)
        lines.append(
            f"- Sampling: autoguidance with weight {number_text(guidance.get('weight'))} (Karras et al. 2024): each step "
            "extrapolates from a weaker guide model's prediction towards this model's, eps = eps_guide + "
            "w (eps_main - eps_guide), which adds the guide's cost to "
            + _guided_steps_text(config.get("sampling", {}))
            + (f"; the guide's prediction is the mean of {len(entries)} networks'" if len(entries) > 1 else ""))
        for index, entry in enumerate(entries):
            gcfg, gprov = entry.get("model_config", {}), entry.get("provenance", {})
            count = _parameter_count(gcfg)
            lines.append(
                f"- Guide network {index + 1} (`{guide_weights_file(index)}`): hidden {gcfg.get('hidden')}, "
                f"depth {gcfg.get('depth')}"
                + (f", trained {number_text(gprov['step'])} steps" if "step" in gprov else "")
                + (f", {count:,} parameters" if count is not None else "")
                + (f", from the release `{gprov['release']}`" if "release" in gprov else ""))
    restart = config.get("sampling", {}).get("restart")
    if isinstance(restart, dict) and restart.get("rounds"):
        lines.append(
            f"- Restart sampling of radicals (Xu et al. 2023): when the chain reaches timestep {restart.get('check_t')}, "
            "a molecule whose clean estimate (this model's own atom types) has an odd number of electrons, which "
            f"no geometry makes stable, is noised back to timestep {restart.get('restart_t')} and sampled again "
            f"from there, at most {restart.get('rounds')} times; no molecule is dropped or edited "
            "(`symdiff generate --restart-rounds 0` samples without it)")
    lines += [
        f"- Files: `model.safetensors` ({'raw last-step' if prov.get('weights') == 'raw' else 'EMA'} weights), "
        "`config.json` (architecture, atom types, schedule, normalisation,",
        "  atom-count histogram, provenance, sampling defaults)"
        + (", the guide's `guide*.safetensors`" if guidance else "")
        + ", `metrics.json` (the results below)",
        "",
    ]
    return lines


# Provenance keys the card's training summary names itself; every other key is a recipe flag.
_RUN_KEYS = ("source", "step", "epoch", "batch_size", "world_size", "train_seconds", "train_cpu_seconds", "weights",
             "distillation")


def _training(config: dict[str, Any]) -> list[str]:
    prov = config.get("provenance", {})
    lines = ["## Training", ""]
    if not prov:
        return lines + ["Not recorded.", ""]
    run = []
    if "step" in prov:
        run.append(f"{number_text(prov['step'])} steps")
    if "epoch" in prov:
        run.append(f"{number_text(prov['epoch'])} epochs")
    if "batch_size" in prov:
        world = prov.get("world_size", 1)
        run.append(f"batch {prov['batch_size']}" + (f" per process x {world} processes (torchrun)" if world > 1 else ""))
    for key, label in (("train_seconds", "training time"), ("train_cpu_seconds", "CPU time")):
        if is_number(prov.get(key)):
            run.append(f"{label} {prov[key] / 3600:.2f} h"
                       + (" (rank 0)" if key == "train_cpu_seconds" and prov.get("world_size", 1) > 1 else ""))
    source = prov.get("source", "training")
    lines.append(f"- Run ({source}): " + (", ".join(run) if run else "no counts recorded"))
    recipe = [f"{key.replace('_', ' ')} {number_text(value)}" for key, value in prov.items() if key not in _RUN_KEYS]
    if recipe:
        lines.append("- Recipe: " + ", ".join(recipe))
    if "init_from" in prov:
        lines.append(f"- The run continued the release `{prov['init_from']}`, so earlier runs are part of this "
                     "model's history.")
    taught = prov.get("distillation")
    if isinstance(taught, dict):
        max_t, weight = taught.get("guidance_max_t"), taught.get("weight")
        weight = f"{weight:g}" if is_number(weight) else str(weight)
        lines.append(
            f"- Guidance distillation (Meng et al. 2023): trained to predict in one network call the guided "
            f"sampler of `{taught.get('release')}` (its main network autoguided by "
            f"{', '.join(f'`{g}`' for g in taught.get('guides') or [])} at weight {weight}"
            + (f", at timesteps <= {max_t}" if max_t is not None else "") + ")"
            + ("; the guide it ships (above) steers this learned sampler further." if config.get("guidance")
               else "; it samples without a guide."))
    lines += [
        "- The training runs behind the shipped releases, with their dates, budgets, settings and measurements:",
        "  `docs/training.md` and `docs/experiments.csv`.",
        "",
    ]
    return lines


def _guided_steps_text(sampling: dict[str, Any]) -> str:
    """Which steps pay for the guide: the guided interval of config.json `sampling`, in words."""
    max_t, min_t = sampling.get("guidance_max_t"), sampling.get("guidance_min_t") or None
    if max_t is None and min_t is None:
        return "every step"
    bounds = (f"{min_t} < t <= {max_t}" if max_t is not None and min_t is not None
              else f"timesteps <= {max_t}" if max_t is not None else f"timesteps above {min_t}")
    outside = ("the noisier steps and the quietest ones" if max_t is not None and min_t is not None
               else "the noisier steps" if max_t is not None else "the quietest steps")
    return (f"the steps at {bounds} (guidance in a limited interval, Kynkaanniemi et al. 2024; "
            f"{outside} run this model alone)")


def _citation(config: dict[str, Any]) -> list[str]:
    guided = bool(config.get("guidance"))
    sampling = config.get("sampling", {})
    interval = guided and (sampling.get("guidance_max_t") is not None or bool(sampling.get("guidance_min_t")))
    restart = sampling.get("restart")
    restarted = isinstance(restart, dict) and bool(restart.get("rounds"))
    keys = (["symdiff", "edm"] + (["autoguidance"] if guided else []) + (["guidance_interval"] if interval else [])
            + (["restart"] if restarted else []))
    lines = ["## Citation", "",
             "SymDiff (the model), EDM (the diffusion formulation and the QM9 metrics)"
             + (" and autoguidance (the sampler)" if guided and not interval else "")
             + (", autoguidance and its limited interval (the sampler)" if interval else "")
             + (", restart sampling (of radicals)" if restarted else "") + ":", "", "```bibtex"]
    for key in keys:
        lines += _CITATIONS[key].splitlines()
    return lines + ["```"]


__all__ = ["METRICS_FILE", "METRICS_FORMAT", "METRICS_FORMAT_VERSION", "METRIC_LABELS", "check_metrics",
           "model_card", "parse_metrics_text", "read_metrics_text"]
