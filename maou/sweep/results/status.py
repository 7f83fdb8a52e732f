"""Where a sweep stands, as plain data: each step's trial states, prune reasons and decision
(``sweep status`` renders it; ``sweep status --json`` prints it)."""

from __future__ import annotations

from typing import Any

from maou.sweep.numbers import fmt
from maou.sweep.records import RecordedDecision, read_sweep


def verdict(decision: RecordedDecision | None) -> str:
    """One line for a step's decision (the same words in status, the report and the dashboard)."""
    if decision is None:
        return "in progress"
    if decision.failed:
        return "failed: no trial completed"
    text = "kept carried" if decision.comparisons else "measured (nothing to compare)"
    if decision.adopted:
        gain = (decision.comparison_of(decision.winner_key) or {}).get("gain")
        text = f"adopted (gain {fmt(gain)})" if isinstance(gain, (int, float)) else "adopted"
    if not decision.noise_measured:
        text += "; noise not measured (1 seed)"
    raced = sum(e.raced is not None for e in decision.leaderboard)
    if raced:
        text += f"; {raced} raced out"
    if decision.edge:
        text += f"; edge: {', '.join(decision.edge)}"
    return text


def sweep_status(spec: Any, storage_url: str | None = None) -> dict[str, Any]:
    record = read_sweep(spec, storage_url=storage_url)
    steps = []
    for step in record.steps:
        entry: dict[str, Any] = {"study": step.study_name, "step": step.name, "started": step.started}
        if step.started:
            entry["trials"] = dict(step.states())
            entry["prune_reasons"] = dict(step.prune_reasons())
            entry["verdict"] = verdict(step.decision)
            if step.decision is not None:
                winner = step.decision.winner
                entry["decision"] = {**step.decision.attrs, "winner_mean": winner.mean if winner else None,
                                     "winner_sem": winner.sem if winner else None}
        steps.append(entry)
    return {"sweep": spec.name, "stage": spec.stage, "storage": record.storage, "seeds": list(spec.seed_list),
            "steps": steps}


__all__ = ["sweep_status", "verdict"]
