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

from maou.sweep.identity import BASE, ConfigKey
from maou.sweep.numbers import fmt
from maou.sweep.records import RecordedDecision, StepRecord, TrialRecord, read_step


def _f(x: Any) -> str:
    """A number in the one format (:func:`maou.sweep.numbers.fmt`); ``-`` for none or non-finite."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return fmt(x)


def _config(key: ConfigKey) -> str:
    return ", ".join(f"`{pair}`" for pair in key.pairs()) or f"`{BASE}`"


def leaderboard_markdown(decision: RecordedDecision) -> list[str]:
    lines = ["| configuration | mean | +- se | n | pruned | failed | gain vs carried | p (Holm level) | |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in decision.leaderboard:
        c = decision.comparison_of(e.key) or {}
        mark = "**winner**" if e.key == decision.winner_key else ("carried" if e.key == decision.carried_key else "")
        if e.raced is not None:
            mark = f"raced at step {e.raced}"
        test = f"{_f(c.get('p'))} ({_f(c.get('holm_level'))})" if c else ""
        lines.append(f"| {_config(e.key)} | {_f(e.mean)} | {_f(e.sem)} | {e.n} | {e.pruned} | {e.failed} | "
                     f"{_f(c.get('gain')) if c else ''} | {test} | {mark} |")
    return lines


def decision_markdown(decision: RecordedDecision) -> list[str]:
    if decision.failed:
        return ["**Decision: none.** Not one trial of this step completed; the sweep stopped here."]
    winner = decision.comparison_of(decision.winner_key) or {}
    if decision.adopted:
        head = (f"**Decision: adopted** {_config(decision.winner_key)}: gain {_f(winner.get('gain'))} "
                f"(needed {_f(winner.get('needed'))}, p {_f(winner.get('p'))} at Holm level "
                f"{_f(winner.get('holm_level'))}).")
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


def step_note(step: StepRecord, spec: Any, index: int, decision: RecordedDecision) -> str:
    objective = spec.step_objective(index)
    guards = spec.step_guards(index)
    carried = ConfigKey.of(step.carried_in)
    described = spec.steps[index]
    lines = [f"## Step {index + 1} of {len(spec.steps)}: {described.name}", "",
             f"**Question:** {described.description or '(no description)'}", "",
             f"**Carried in:** {_config(carried)}; **objective:** {objective.metric} ({objective.direction}, "
             f"{objective.reduce} value, whole validation split); **seeds:** {list(spec.seed_list)}"]
    if guards:
        lines.append("**Guards:** " + ", ".join(f"{g.metric} may not get worse by more than {fmt(g.tolerance)}"
                                               for g in guards))
    lines += ["", *leaderboard_markdown(decision), "", *decision_markdown(decision)]
    return "\n".join(lines) + "\n"


def overview_note(spec: Any, steps: list[StepRecord]) -> str:
    """The whole chain: each step's question, winner and decision (on the first step's study)."""
    from maou.sweep.results.status import verdict

    lines = [f"## Sweep {spec.name}: stage {spec.stage}, {len(spec.steps)} steps", "",
             spec.description or "", "",
             "| step | question | winner | decision |", "|---|---|---|---|"]
    for index, step in enumerate(spec.steps):
        started = index < len(steps) and steps[index].started
        decision = steps[index].decision if started else None
        text = verdict(decision) if started else "not run yet"  # the words of status and the report
        winner = _config(decision.winner_key) if decision is not None else "-"
        lines.append(f"| {index + 1}. {step.name} | {step.description or ''} | {winner} | {text} |")
    return "\n".join(lines) + "\n"


def trial_note(trial: TrialRecord, winner: bool = False) -> str:
    lines = ["**winner: true**: this trial's configuration won its step", ""] if winner else []
    state = trial.state.name
    lines += [f"**Configuration:** {_config(trial.key)}, **seed** {trial.seed}", "",
              f"**State:** {state}" + (f", {trial.metric} = {_f(trial.value)}" if trial.value is not None else "")]
    if state == "PRUNED":
        lines.append(f"**Pruned:** `{trial.prune_reason}` at step {trial.prune_step}: {trial.prune_detail}")
    if state == "FAIL":
        error = (trial.error or "").strip().splitlines()
        lines.append(f"**Failed:** {trial.fail_reason}" + (f": `{error[-1]}`" if error else ""))
    if trial.reused_from:
        lines.append(f"Copied from {trial.reused_from} (same configuration and seed).")
    return "\n".join(lines) + "\n"


def publish_step(spec: Any, index: int, studies: list[Any]) -> None:
    """Step ``index``'s note and figures, and the sweep's overview on the first step's study
    (``studies``: the step studies up to ``index``, in order)."""
    import optuna_dashboard

    from maou.sweep.results.plots import curves_figure, means_figure, step_colors

    steps = [read_step(s, i, spec.steps[i].name) for i, s in enumerate(studies)]
    step, study = steps[index], studies[index]
    if step.decision is None:
        return
    objective = spec.step_objective(index)
    title = f"{index + 1:02d}-{spec.steps[index].name}"
    colors = step_colors(step)
    if index > 0:
        optuna_dashboard.save_note(study, step_note(step, spec, index, step.decision))
    optuna_dashboard.save_plotly_graph_object(
        study, means_figure(step.decision, objective.metric, title, objective.direction, colors),
        graph_object_id="means")
    optuna_dashboard.save_plotly_graph_object(study, curves_figure(list(step.trials), objective.metric, title, colors),
                                              graph_object_id="curves")
    first = steps[0]
    own = step_note(first, spec, 0, first.decision) if first.decision is not None else ""
    optuna_dashboard.save_note(studies[0], overview_note(spec, steps) + "\n---\n\n" + own)


class DashboardNotes:
    """An observer of a sweep run (:class:`maou.sweep.run.recorder.Observer`) that writes what
    optuna-dashboard shows: each trial's note when its outcome is recorded (and again when its winner
    mark changes), each step's note and figures, and the chain on the first step's study."""

    def trial_recorded(self, study: Any, record: TrialRecord, winner: bool) -> None:
        import optuna
        import optuna_dashboard

        optuna_dashboard.save_note(optuna.trial.Trial(study, record.trial_id), trial_note(record, winner))

    def step_finished(self, spec: Any, index: int, study: Any, decision: Any) -> None:
        import optuna

        storage = study._storage
        studies = [optuna.load_study(study_name=spec.study_name(i), storage=storage) for i in range(index)]
        publish_step(spec, index, [*studies, study])


__all__ = ["DashboardNotes", "decision_markdown", "leaderboard_markdown", "overview_note", "publish_step", "step_note",
           "trial_note"]
