"""What ``sweep run`` shows while it runs, and after each step.

On a terminal: one live display (rich's ``Live`` around a ``Progress``, both context managers, so
Ctrl-C closes them cleanly): the sweep's overall progress (trainings done of the expected total,
elapsed, ETA) and one line per running trial (optimizer step of its budget, last training loss,
last objective value, samples per second, ETA). Elsewhere (CI, a log file) each finished trial and
each step's decision is printed as one line, so nothing long-running is silent. After each step:
its leaderboard and decision, configurations wrapped one key per line (an 80-column terminal fits).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from maou.sweep.numbers import fmt

_fmt = fmt  # one number format: the report's, the dashboard's and the configurations'


def _config(key: Any) -> str:
    return key.label("\n")


class SweepView(AbstractContextManager):
    """The sweep run's observer (steps from the protocol, trials from the recorder)."""

    def __init__(self, console: Console | None = None, expected_trainings: int = 0) -> None:
        self.console = console or Console()
        self.metric = ""
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, expand=False)
        self.overall: TaskID = self.progress.add_task("trainings", total=expected_trainings or None, status="")
        self.tasks: dict[int, TaskID] = {}
        self.started: dict[int, float] = {}
        self.status: dict[int, dict[str, Any]] = {}
        self.live: Live | None = Live(self.progress, console=self.console, refresh_per_second=4,
                                      transient=False) if self.console.is_terminal else None

    # --------------------------------------------------------------- the live display
    def __enter__(self) -> SweepView:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def _print(self, *objects: Any) -> None:
        (self.live.console if self.live is not None else self.console).print(*objects)

    # --------------------------------------------------------------- protocol callbacks
    def step_started(self, spec: Any, index: int, study: Any, run: Any) -> None:
        objective = run.recorder.objective
        self.metric = objective.metric
        self._print(f"[bold]step {index + 1}/{len(spec.steps)} {study.study_name}[/] · {run.pending()} trainings "
                    f"to run · objective {objective.metric} ({objective.direction})")

    def step_finished(self, spec: Any, index: int, study: Any, decision: Any) -> None:
        self._print(leaderboard_table(decision))
        for line in decision_lines(decision):
            self._print(line)

    # --------------------------------------------------------------- recorder callbacks
    def trial_started(self, handle: Any) -> None:
        key = handle.training.key
        label = f"#{handle.number} {str(key) if not key.is_base else '(base)'} seed {handle.training.seed}"
        self.tasks[handle.number] = self.progress.add_task(label[:60], total=None, status="starting")
        self.started[handle.number] = time.perf_counter()
        self.status[handle.number] = {"step": 0, "total": None, "loss": None, "value": None}

    def trial_progress(self, handle: Any, step: int, total: int, samples_per_s: float | None) -> None:
        state = self.status.get(handle.number)
        if state is None:
            return
        state.update(step=step, total=total, speed=samples_per_s)
        self._update(handle.number)

    def trial_reported(self, handle: Any, step: int, metrics: dict[str, float]) -> None:
        state = self.status.get(handle.number)
        if state is None:
            return
        state.update(step=step, loss=metrics.get("train_loss", state["loss"]), value=metrics.get(self.metric))
        self._update(handle.number)

    def _update(self, number: int) -> None:
        state = self.status[number]
        speed = state.get("speed")
        status = (f"loss {_fmt(state['loss'])} · {self.metric} {_fmt(state['value'])}"
                  + (f" · {speed:,.0f} samples/s" if speed else ""))
        self.progress.update(self.tasks[number], completed=state["step"], total=state["total"], status=status)

    def trial_finished(self, handle: Any, state: Any, reason: str, value: float | None = None) -> None:
        """A finished trial's line: its recorded objective ``value`` (the final or best metrics, on
        the whole validation split) when it completed, else the last evaluation it reported."""
        task = self.tasks.pop(handle.number, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.overall)
        elapsed = time.perf_counter() - self.started.pop(handle.number, time.perf_counter())
        last = self.status.pop(handle.number, {})
        style = {"COMPLETE": "green", "PRUNED": "magenta", "FAIL": "red"}.get(state.name, "")
        self._print(f"  trial {handle.number:>3} [{style}]{state.name:<8}[/] {handle.training.key} "
                    f"seed={handle.training.seed} {self.metric}="
                    f"{_fmt(value if value is not None else last.get('value'))} at step "
                    f"{last.get('step', 0)} ({elapsed:.1f}s){' ' + reason if reason else ''}")

    def expect(self, total: int) -> None:
        """The expected number of trainings of the whole sweep (the plan's, updated as it runs)."""
        self.progress.update(self.overall, total=max(total, int(self.progress.tasks[0].completed)))


def leaderboard_table(decision: Any) -> Table:
    table = Table(title="leaderboard (mean over seeds)")
    for column in ("configuration", "mean", "± se", "n", "pruned", "failed", "gain", ""):
        table.add_column(column, overflow="fold")
    comparisons = {c.key: c for c in decision.comparisons}
    for stats in decision.stats:
        mark = "winner" if stats.key == decision.winner_key else (
            "carried" if stats.key == decision.carried_key else "")
        c = comparisons.get(stats.key)
        table.add_row(_config(stats.key), _fmt(stats.mean), _fmt(stats.sem), str(stats.n), str(stats.pruned),
                      str(stats.failed), _fmt(c.test.gain) if c else "", mark)
    return table


def decision_lines(decision: Any) -> list[str]:
    if decision.failed:
        return ["  [red]decision: none: no trial completed[/]"]
    verdict = "adopted" if decision.adopted else "kept the carried configuration"
    best = decision.best_comparison
    if best is None:
        numbers = "the carried configuration alone" if len(decision.stats) <= 1 else "no challenger completed"
    elif best.test.se is None:
        numbers = f"best gain {_fmt(best.test.gain)}; noise not measured (1 seed), margin {_fmt(best.needed)}"
    else:
        numbers = (f"best gain {_fmt(best.test.gain)} ± {_fmt(best.test.se)}, p {_fmt(best.test.p)} "
                   f"vs Holm level {_fmt(best.level)}, needed {_fmt(best.needed)}")
    if best is not None and best.guard_failures:
        numbers += "; guard: " + "; ".join(best.guard_failures)
    lines = [f"  decision: {verdict}: {decision.winner_key} ({numbers})"]
    if decision.edge:
        lines.append(f"  [yellow]edge: the winner sits at the end of the grid of {', '.join(decision.edge)}; "
                     f"a larger range may do better (extend: N grows it)[/]")
    return lines
