"""The summary lines of relaxation and filtering (generate and convert), on the user's terms."""

from __future__ import annotations

from symdiff_cli.chem.relax import CONVERGED, FAILED, STEP_CAP, UNASSIGNED

_STATUS_WORDS = {
    CONVERGED: "converged",
    STEP_CAP: "stopped at the --relax-steps cap",
    FAILED: "failed (left as they were)",
    UNASSIGNED: "without bonds MMFF94 can type (left as they were)",
}


def _metrics(counts: dict) -> str:
    return (f"atom stability {100 * counts['atom_stability']:.1f} %, molecule stability "
            f"{100 * counts['molecule_stability']:.1f} %, validity {100 * counts['validity']:.1f} %")


def relax_status_line(method: str, status: dict[str, int], seconds: float) -> str:
    """'xtb relaxation: 95 converged, 5 stopped at the cap; 0.81 s per molecule (wall, all workers)'."""
    total = sum(status.values())
    parts = [f"{status[key]} {_STATUS_WORDS.get(key, key)}" for key in _STATUS_WORDS if status.get(key)]
    per = f"; {seconds / total:.2f} s per molecule (wall clock, all workers)" if total else ""
    return f"{method} relaxation of {total} molecules: {', '.join(parts) or 'none'}{per}"


def pipeline_lines(summary) -> list[str]:
    """The lines generate adds when it relaxes or filters (engine/keep.py PipelineSummary): the
    raw samples' metrics first, so that the model's own quality is always in view."""
    lines = []
    if summary.raw.molecules:
        lines.append(f"raw samples ({summary.raw.molecules}): {_metrics(summary.raw.as_dict())}")
    if summary.relax != "none":
        if summary.relaxed.molecules:
            lines.append(f"after {summary.relax} relaxation ({summary.relaxed.molecules}): "
                         f"{_metrics(summary.relaxed.as_dict())}")
        lines.append(relax_status_line(summary.relax, summary.relax_status, summary.relax_seconds))
    if summary.keep != "all":
        lines.append(f"--keep {summary.keep}: kept {summary.kept} of {summary.attempts} sampled "
                     f"(acceptance {100 * summary.acceptance:.1f} %, at most {summary.max_attempts} attempts)")
    return lines


__all__ = ["pipeline_lines", "relax_status_line"]
