"""Where a sweep stands, as plain data: each step's trial states, prune reasons and decision
(``sweep status`` renders it; ``sweep status --json`` prints it)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from maou.sweep.run.decision import RecordedDecision


def verdict(decision: RecordedDecision | None) -> str:
    """One line for a step's decision."""
    if decision is None:
        return "in progress"
    if decision.failed:
        return "failed: no trial completed"
    text = "kept carried" if decision.comparisons else "measured (nothing to compare)"
    if decision.adopted:
        gain = (decision.comparison_of(decision.winner_key) or {}).get("gain")
        text = f"adopted (gain {gain:.4g})" if isinstance(gain, float) else "adopted"
    if not decision.noise_measured:
        text += "; noise not measured (1 seed)"
    if decision.edge:
        text += f"; edge: {', '.join(decision.edge)}"
    return text


def sweep_status(spec: Any, storage_url: str | None = None) -> dict[str, Any]:
    import optuna

    from maou.sweep.storage import mask_url, open_storage, step_study_names

    url = storage_url or spec.storage_url
    storage = open_storage(url, create=False)
    present = set(step_study_names(storage, spec.name))
    steps = []
    for index, step in enumerate(spec.steps):
        name = spec.study_name(index)
        entry: dict[str, Any] = {"study": name, "step": step.name, "started": name in present}
        if name in present:
            study = optuna.load_study(study_name=name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            entry["trials"] = dict(Counter(t.state.name for t in trials))
            entry["prune_reasons"] = dict(Counter(t.user_attrs.get("prune_reason", "?") for t in trials
                                                  if t.state.name == "PRUNED"))
            decision = RecordedDecision.of_study(study)
            entry["verdict"] = verdict(decision)
            if decision is not None:
                winner = decision.winner
                entry["decision"] = {**study.user_attrs["decision"], "winner_mean": winner.mean if winner else None,
                                     "winner_sem": winner.sem if winner else None}
        steps.append(entry)
    return {"sweep": spec.name, "stage": spec.stage, "storage": mask_url(url), "seeds": list(spec.seed_list),
            "steps": steps}


__all__ = ["sweep_status", "verdict"]
