"""What ``sweep run`` shows: a live table of running and finished trials and the step's leaderboard.

On a terminal the table refreshes in place; elsewhere (CI, a log file) each finished trial and each
step decision is printed as one line, so nothing long-running is silent.
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


class SweepView:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live: Live | None = None
        self.rows: dict[int, dict[str, Any]] = {}
        self.step_label = ""
        self.metric = ""
        self.leaderboard: list[Any] = []

    # --------------------------------------------------------------- protocol callbacks
    def step_started(self, spec, index, study, run) -> None:
        self.rows = {}
        objective = run.recorder.objective
        self.metric = objective.metric
        self.step_label = f"step {index + 1}/{len(spec.steps)} {study.study_name}"
        self.console.rule(f"[bold]{self.step_label}[/] · {run.pending()} trials to run · "
                          f"objective {objective.metric} ({objective.direction})")
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()

    def trial_started(self, handle) -> None:
        self.rows[handle.number] = {"trial": handle.number, "config": str(handle.training.key),
                                    "seed": handle.training.seed, "state": "RUNNING", "step": 0, "value": None,
                                    "started": time.time(), "reason": ""}
        self._refresh()

    def trial_reported(self, handle, step, metrics) -> None:
        row = self.rows.get(handle.number)
        if row is not None:
            row["step"] = step
            row["value"] = metrics.get(self.metric)
        self._refresh()

    def trial_finished(self, handle, state, reason) -> None:
        row = self.rows.get(handle.number)
        if row is None:
            return
        row["state"] = state.name
        row["reason"] = reason
        row["elapsed"] = time.time() - row["started"]
        if self.live is None:
            self.console.print(f"  trial {handle.number:>3} {row['state']:<8} {row['config']} seed={row['seed']} "
                               f"{self.metric}={_fmt(row['value'])} at step {row['step']} "
                               f"({row['elapsed']:.1f}s){' ' + row['reason'] if row['reason'] else ''}")
        self._refresh()

    def step_finished(self, spec, index, study, decision) -> None:
        self.leaderboard = decision.stats
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None
        self.console.print(self._leaderboard_table(decision))
        if decision.failed:
            self.console.print("  [red]decision: none: no trial completed[/]")
            return
        verdict = "adopted" if decision.adopted else "kept the carried configuration"
        best = decision.best_comparison
        if best is None:
            numbers = "no challenger completed"
        elif best.test.se is None:
            numbers = f"best gain {_fmt(best.test.gain)}; noise not measured (1 seed), margin {_fmt(best.needed)}"
        else:
            numbers = (f"best gain {_fmt(best.test.gain)} +- {_fmt(best.test.se)}, p {_fmt(best.test.p)} "
                       f"vs Holm level {_fmt(best.level)}, needed {_fmt(best.needed)}")
        if best is not None and best.guard_failures:
            numbers += "; guard: " + "; ".join(best.guard_failures)
        self.console.print(f"  decision: {verdict}: {decision.winner_key} ({numbers})")
        if decision.edge:
            self.console.print(f"  [yellow]edge: the winner sits at the end of the grid of {', '.join(decision.edge)}"
                               f"; a larger range may do better (extend: N grows it)[/]")

    # --------------------------------------------------------------- rendering
    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Group:
        table = Table(title=self.step_label, expand=False)
        for column in ("trial", "configuration", "seed", "state", "eval step", self.metric or "value", "reason"):
            table.add_column(column)
        for row in sorted(self.rows.values(), key=lambda r: r["trial"])[-20:]:
            style = {"RUNNING": "yellow", "COMPLETE": "green", "PRUNED": "magenta", "FAIL": "red"}.get(row["state"])
            table.add_row(str(row["trial"]), row["config"], str(row["seed"]), row["state"], str(row["step"]),
                          _fmt(row["value"]) if row["value"] is not None else "-", row["reason"], style=style)
        return Group(table)

    def _leaderboard_table(self, decision) -> Table:
        table = Table(title="leaderboard (mean over seeds)")
        for column in ("configuration", "mean", "std", "n", "pruned", "failed", ""):
            table.add_column(column)
        for stats in decision.stats:
            mark = "winner" if stats.key == decision.winner_key else (
                "carried" if stats.key == decision.carried_key else "")
            table.add_row(str(stats.key), _fmt(stats.mean), _fmt(stats.std), str(stats.n),
                          str(stats.pruned), str(stats.failed), mark)
        return table
