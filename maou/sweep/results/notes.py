"""What optuna-dashboard shows of a sweep, written by the sweep itself: markdown notes on every
step study (its question, the carried configuration, the leaderboard, the decision and its
numbers, edge warnings), on every trial (its configuration, seed, and how it ended), an overview
of the whole chain of steps on the first step's study, and plotly figures on each step study.

Optuna's own "best trial" is the best single value of a study; the sweep decides on means over
seeds, so the notes say which configuration won and why, and the winner's trials carry the user
attribute ``winner: true``.
"""

from __future__ import annotations

import math
from typing import Any

from maou.sweep.identity import ConfigKey
from maou.sweep.results.status import verdict
from maou.sweep.run.decision import RecordedDecision


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _config(key: ConfigKey) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in key.items) or "`(base)`"


def leaderboard_markdown(decision: RecordedDecision) -> list[str]:
    lines = ["| configuration | mean | +- se | n | pruned | failed | gain vs carried | p (Holm level) | |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in decision.leaderboard:
        c = decision.comparison_of(e.key) or {}
        mark = "**winner**" if e.key == decision.winner_key else ("carried" if e.key == decision.carried_key else "")
        test = f"{_f(c.get('p'), 3)} ({_f(c.get('holm_level'), 3)})" if c else ""
        lines.append(f"| {_config(e.key)} | {_f(e.mean)} | {_f(e.sem, 2)} | {e.n} | {e.pruned} | {e.failed} | "
                     f"{_f(c.get('gain'), 3) if c else ''} | {test} | {mark} |")
    return lines


def decision_markdown(decision: RecordedDecision) -> list[str]:
    if decision.failed:
        return ["**Decision: none.** Not one trial of this step completed; the sweep stopped here."]
    winner = decision.comparison_of(decision.winner_key) or {}
    if decision.adopted:
        head = (f"**Decision: adopted** {_config(decision.winner_key)}: gain {_f(winner.get('gain'))} "
                f"(needed {_f(winner.get('needed'))}, p {_f(winner.get('p'), 3)} at Holm level "
                f"{_f(winner.get('holm_level'), 3)}).")
    else:
        head = f"**Decision: kept the carried configuration** {_config(decision.carried_key)}."
    lines = [head]
    if not decision.noise_measured:
        lines.append("Noise not measured (1 seed): only the margin and the guards decided.")
    for c in decision.comparisons:
        for failure in c.get("guard_failures", []):
            lines.append(f"- guard vetoed {_config(ConfigKey.of(c['config']))}: {failure}")
    if decision.edge:
        lines.append(f"**Edge:** the winner sits at the end of the grid of {', '.join(decision.edge)}; "
                     f"a wider range may do better (`extend: N` grows it).")
    lines.append(f"Rule: {decision.rule}.")
    return lines


def step_note(study: Any, spec: Any, index: int, decision: RecordedDecision) -> str:
    step = spec.steps[index]
    objective = spec.step_objective(index)
    guards = spec.step_guards(index)
    carried = ConfigKey.of(study.user_attrs.get("carried_in") or {})
    lines = [f"## Step {index + 1} of {len(spec.steps)}: {step.name}", "",
             f"**Question:** {step.description or '(no description)'}", "",
             f"**Carried in:** {_config(carried)}; **objective:** {objective.metric} ({objective.direction}, "
             f"{objective.reduce} value, whole validation split); **seeds:** {list(spec.seed_list)}"]
    if guards:
        lines.append("**Guards:** " + ", ".join(f"{g.metric} may not get worse by more than {g.tolerance:g}"
                                               for g in guards))
    lines += ["", *leaderboard_markdown(decision), "", *decision_markdown(decision)]
    return "\n".join(lines) + "\n"


def overview_note(spec: Any, studies: list[Any]) -> str:
    """The whole chain: each step's question, winner and decision (on the first step's study)."""
    lines = [f"## Sweep {spec.name}: stage {spec.stage}, {len(spec.steps)} steps", "",
             spec.description or "", "",
             "| step | question | winner | decision |", "|---|---|---|---|"]
    for index, step in enumerate(spec.steps):
        decision = RecordedDecision.of_study(studies[index]) if index < len(studies) else None
        said = verdict(decision) if index < len(studies) else "not run yet"  # the words of status and report
        winner = _config(decision.winner_key) if decision is not None else "-"
        lines.append(f"| {index + 1}. {step.name} | {step.description or ''} | {winner} | {said} |")
    return "\n".join(lines) + "\n"


def trial_note(attrs: dict[str, Any], state: str, value: float | None, winner: bool = False) -> str:
    key = ConfigKey.of(attrs.get("overrides", {}))
    lines = ["**winner: true**: this trial's configuration won its step", ""] if winner else []
    lines += [f"**Configuration:** {_config(key)}, **seed** {attrs.get('seed')}", "",
             f"**State:** {state}" + (f", {attrs.get('metric')} = {_f(value)}" if value is not None else "")]
    if state == "PRUNED":
        lines.append(f"**Pruned:** `{attrs.get('prune_reason')}` at step {attrs.get('prune_step')}: "
                     f"{attrs.get('prune_detail')}")
    if state == "FAIL":
        error = (attrs.get("error") or "").strip().splitlines()
        lines.append(f"**Failed:** {attrs.get('fail_reason')}" + (f": `{error[-1]}`" if error else ""))
    if attrs.get("reused_from"):
        lines.append(f"Copied from {attrs['reused_from']} (same configuration and seed).")
    return "\n".join(lines) + "\n"


def publish_step(study: Any, spec: Any, index: int, first_study: Any, studies: list[Any]) -> None:
    """The step study's note and figures, and the sweep's overview on the first step's study."""
    import optuna_dashboard

    from maou.sweep.results.plots import curves_figure, means_figure

    decision = RecordedDecision.of_study(study)
    if decision is None:
        return
    metric = spec.step_objective(index).metric
    title = f"{index + 1:02d}-{spec.steps[index].name}"
    if index > 0:
        optuna_dashboard.save_note(study, step_note(study, spec, index, decision))
    trials = study.get_trials(deepcopy=False)
    optuna_dashboard.save_plotly_graph_object(study, means_figure(decision, metric, title), graph_object_id="means")
    optuna_dashboard.save_plotly_graph_object(study, curves_figure(trials, metric, title), graph_object_id="curves")
    first = RecordedDecision.of_study(first_study)  # the first study: the overview, then its own step
    own = step_note(first_study, spec, 0, first) if first is not None else ""
    optuna_dashboard.save_note(first_study, overview_note(spec, studies) + "\n---\n\n" + own)


__all__ = ["decision_markdown", "leaderboard_markdown", "overview_note", "publish_step", "step_note", "trial_note"]
