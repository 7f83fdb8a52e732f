"""What ``sweep run`` shows while it runs, and after each step.

On a terminal: one live display (rich's ``Live``, a context manager, so Ctrl-C closes it cleanly),
started when the first step starts (after the datasets are built): the sweep's overall progress
(trainings done of the expected total, its ETA) and one line per running trial (its number,
configuration and seed, optimizer step of its budget, last objective value, ETA; on a wider terminal
also the training loss, samples per second and elapsed time). Every line is laid out for the
console's width: fields are dropped, the bar narrowed and the configuration shortened (the last part
of each dotted key, then whole keys left out) until the line fits; a number is never cut. While the
display is up, what else is printed (``print``, warnings, logging through stream handlers, each
step's leaderboard) goes through the display's console, above the live lines, never across them.

The overall ETA: before a training of this run finishes, from the plan's estimated seconds per
training (``seconds_per_training``); after, from the mean wall time of the trainings finished here;
divided among the trainings running at once. The expected total is corrected as the sweep goes
(a step's exact count when it starts, what ran when it ends), so the last frame reads N/N.

Elsewhere (CI, a log file) each finished trial and each step's decision is printed as one line, so
nothing long-running is silent. After each step: its leaderboard and decision, configurations
wrapped one key per line (an 80-column terminal fits).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions
from rich.live import Live
from rich.table import Table
from rich.text import Text

from maou.sweep.identity import short_keys
from maou.sweep.numbers import fmt

_fmt = fmt  # one number format: the report's, the dashboard's and the configurations'


def _config(key: Any) -> str:
    return key.label("\n")


def clock(seconds: float | None) -> str:
    """``H:MM:SS`` (``-:--:--`` when unknown): always whole, never cut."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    whole = max(0, int(round(seconds)))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def label_variants(number: int, key: Any, seed: int) -> list[str]:
    """A running trial's label, longest first: whole keys, short keys, fewer keys (whole ``k=v``
    pairs only: a value is never cut), then the trial number and seed alone."""
    if key.is_base:
        return [f"#{number} (base) seed {seed}", f"#{number} (base) s{seed}", f"#{number} s{seed}"]
    keys = [k for k, _ in key.items]
    values = [_fmt(v) for _, v in key.items]
    whole = [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
    short = [f"{k}={v}" for k, v in zip(short_keys(keys), values, strict=True)]
    out = [f"#{number} {' '.join(whole)} seed {seed}", f"#{number} {' '.join(short)} seed {seed}",
           f"#{number} {' '.join(short)} s{seed}"]
    out += [f"#{number} {' '.join(short[:keep])} … s{seed}" for keep in range(len(short) - 1, 0, -1)]
    return [*out, f"#{number} … s{seed}"]


@dataclass
class _Running:
    """What the display knows of a running trial."""

    labels: list[str]
    started: float
    step: int = 0
    total: int | None = None
    loss: float | None = None
    value: float | None = None
    speed: float | None = None
    #: (time, optimizer step) of the first and the last progress heard
    first: tuple[float, int] | None = None
    last: tuple[float, int] | None = None

    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    def eta(self, now: float) -> float | None:
        if self.total is None or self.first is None or self.last is None or self.last[1] <= self.first[1]:
            return None
        per_step = (self.last[0] - self.first[0]) / (self.last[1] - self.first[1])
        return max(0.0, (self.total - self.step) * per_step - (now - self.last[0]))


#: The columns of the live lines, left to right.
_ORDER = ("label", "bar", "count", "value", "loss", "speed", "elapsed", "eta")
#: Columns shown only where they fit, most wanted first (``value`` comes before the labels are
#: chosen, these after).
_OPTIONAL = ("loss", "speed", "elapsed")
_RIGHT = {"count", "speed", "elapsed", "eta"}
#: The bar: at least, at most, and as wide as it stays when a wide terminal lengthens the labels.
_BAR_MIN, _BAR_MAX, _BAR_ROOMY = 8, 40, 20
#: Labels longer than this come only after the optional columns, on a wide terminal.
_LABEL_CAP = 40


def _bar(completed: float, total: int | None, width: int) -> Text:
    if not total:
        return Text("━" * width, style="bar.back")
    done = width * min(1.0, max(0.0, completed / total))
    full = int(done)
    half = done - full >= 0.5
    style = "bar.finished" if completed >= total else "bar.complete"
    bar = Text("━" * full, style=style)
    if half:
        bar.append("╸", style=style)
    rest = width - full - (1 if half else 0)
    if rest > 0:
        bar.append(("╺" if not half else "━") + "━" * (rest - 1), style="bar.back")
    return bar


def layout(rows: list[dict[str, Any]], width: int) -> Iterator[Text]:
    """The live lines of ``rows`` in ``width`` columns. A row: ``labels`` (variants, longest
    first), ``completed`` and ``total`` (its bar), and a text for each other column of
    :data:`_ORDER` it has. Every cell is whole: columns are dropped and labels shortened instead."""
    widths = {c: max((len(r.get(c, "")) for r in rows), default=0) for c in _ORDER if c not in ("label", "bar")}
    columns = [c for c in ("count", "eta") if widths[c]]

    def need(chosen: list[str], label: int) -> int:  # the bar at its narrowest, one space between cells
        return label + _BAR_MIN + sum(widths[c] for c in chosen) + len(chosen) + 1

    shortest = max(len(r["labels"][-1]) for r in rows)
    if widths["value"] and need([*columns, "value"], shortest) <= width:
        columns.append("value")
    budget = min(_LABEL_CAP, width - need(columns, 0))
    labels = [next((v for v in r["labels"] if len(v) <= budget), r["labels"][-1]) for r in rows]
    label_width = max(len(label) for label in labels)
    for column in _OPTIONAL:
        if widths[column] and need([*columns, column], label_width) <= width:
            columns.append(column)
    roomy = width - need(columns, 0) - (_BAR_ROOMY - _BAR_MIN)  # a wide terminal: longer labels too
    if roomy > label_width:
        labels = [next((v for v in r["labels"] if len(v) <= roomy), label) for r, label in zip(rows, labels)]
        label_width = max(len(label) for label in labels)
    bar_width = min(_BAR_MAX, max(_BAR_MIN, width - need(columns, label_width) + _BAR_MIN))
    styles = {"label": "progress.description", "count": "progress.download", "elapsed": "progress.elapsed",
              "eta": "progress.remaining"}
    for row, label in zip(rows, labels, strict=True):
        line = Text(label.ljust(label_width), style=styles["label"], no_wrap=True, overflow="ignore")
        line.append(" ")
        line.append_text(_bar(row.get("completed", 0), row.get("total"), bar_width))
        for column in (c for c in _ORDER if c in columns):
            cell = row.get(column, "")
            line.append(" ")
            line.append(cell.rjust(widths[column]) if column in _RIGHT else cell.ljust(widths[column]),
                        style=styles.get(column, ""))
        line.rstrip()
        yield line


class SweepView(AbstractContextManager):
    """The sweep run's observer (steps from the protocol, trials from the recorder).

    ``expected_trainings``: the plan's total (its upper bound); ``step_trainings``: the plan's upper
    bound of each step's trainings, so the total is corrected when a step starts and ends;
    ``seconds_per_training``: the plan's estimate, the overall ETA until a training finishes here."""

    def __init__(self, console: Console | None = None, expected_trainings: int = 0,
                 seconds_per_training: float | None = None, step_trainings: Sequence[int] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.console = console or Console()
        #: Seconds of a monotonic clock (tests pass their own).
        self.clock = clock
        self.metric = ""
        self.total: int | None = expected_trainings or None
        self.done = 0
        self.estimate = seconds_per_training if seconds_per_training and seconds_per_training > 0 else None
        self.step_trainings = list(step_trainings) if step_trainings is not None else None
        self.walls: list[float] = []
        self.running: dict[int, _Running] = {}
        self.started: float | None = None
        self.step = ""
        self.lock = threading.RLock()
        self.live: Live | None = None
        self._rerouted: list[tuple[logging.StreamHandler, Any]] = []

    # --------------------------------------------------------------- the live display
    def __enter__(self) -> SweepView:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            with self.lock:  # the sweep finished: the last frame says what ran, N of N
                self.total = self.done
        self._stop()

    def _start(self) -> None:
        """The live display, on a terminal, from the first step on (a dataset build before it has
        its own progress bar)."""
        if self.live is not None or not self.console.is_terminal:
            return
        self.started = self.clock()
        self.live = Live(self, console=self.console, refresh_per_second=4, transient=False,
                         redirect_stdout=True, redirect_stderr=True)
        real = (sys.stdout, sys.stderr)
        self.live.start(refresh=True)
        self._route_logging(real)

    def _stop(self) -> None:
        if self.live is None:
            return
        try:
            self.live.stop()
        finally:
            for handler, stream in reversed(self._rerouted):
                handler.setStream(stream)
            self._rerouted.clear()

    def _route_logging(self, real: tuple[Any, Any]) -> None:
        """Stream handlers bound to the real stdout or stderr (Optuna's, Ray's, a root handler)
        write through the display's console while it is up (``sys.stdout``/``sys.stderr`` are the
        display's proxies now), so a log line never lands across the live lines."""
        proxies = {id(sys.__stdout__): sys.stdout, id(sys.__stderr__): sys.stderr,
                   id(real[0]): sys.stdout, id(real[1]): sys.stderr}
        loggers = [logging.getLogger(), *(logger for logger in list(logging.Logger.manager.loggerDict.values())
                                          if isinstance(logger, logging.Logger))]
        for logger in loggers:
            for handler in list(logger.handlers):
                if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                        and id(handler.stream) in proxies and proxies[id(handler.stream)] is not handler.stream):
                    self._rerouted.append((handler, handler.setStream(proxies[id(handler.stream)])))

    def _print(self, *objects: Any) -> None:
        (self.live.console if self.live is not None else self.console).print(*objects)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        with self.lock:
            rows = self.rows(self.clock())
        yield from layout(rows, options.max_width)

    # --------------------------------------------------------------- what the lines say
    def eta(self, now: float) -> float | None:
        """Seconds the sweep has left: the trainings not done (less what the running ones did)
        times the seconds a training takes (measured here, else the plan's estimate), shared by
        the trainings running at once."""
        if self.total is None:
            return None
        left = max(0.0, self.total - self.done - sum(r.fraction() for r in self.running.values()))
        per = sum(self.walls) / len(self.walls) if self.walls else self.estimate
        if per is None:  # no estimate: the running trainings' own pace
            paces = [(now - r.started) / r.fraction() for r in self.running.values() if r.fraction() > 0]
            per = sum(paces) / len(paces) if paces else None
        return None if per is None else left * per / max(1, len(self.running))

    def rows(self, now: float) -> list[dict[str, Any]]:
        # as wide as it will get, so the columns stay put as the count grows
        count = (f"{self.done}/{self.total}".rjust(2 * len(str(self.total)) + 1) if self.total is not None
                 else f"{self.done}/?")
        rows: list[dict[str, Any]] = [{"labels": ["trainings"], "completed": self.done, "total": self.total,
                                       "count": count, "value": self.step, "eta": f"eta {clock(self.eta(now))}",
                                       "elapsed": f"elapsed {clock(now - (self.started or now))}"}]
        for running in self.running.values():
            speed = f"{running.speed:,.0f} samples/s" if running.speed else ""
            rows.append({"labels": running.labels, "completed": running.step, "total": running.total,
                         "count": (f"{running.step}/{running.total}".rjust(2 * len(str(running.total)) + 1)
                                   if running.total else f"{running.step}/?" if running.step else "starting"),
                         "value": f"{self.metric} {_fmt(running.value)}", "loss": f"loss {_fmt(running.loss)}",
                         "speed": speed, "elapsed": f"elapsed {clock(now - running.started)}",
                         "eta": f"eta {clock(running.eta(now))}"})
        return rows

    # --------------------------------------------------------------- protocol callbacks
    def step_started(self, spec: Any, index: int, study: Any, run: Any) -> None:
        objective = run.recorder.objective
        with self.lock:
            self.metric = objective.metric
            self.step = f"step {index + 1}/{len(spec.steps)}"
            pending = run.pending()
            if self.step_trainings is not None:
                self.total = self.done + pending + sum(self.step_trainings[index + 1:])
            elif self.total is not None:
                self.total = max(self.total, self.done + pending)
        self._start()
        self._print(f"[bold]step {index + 1}/{len(spec.steps)} {study.study_name}[/] · {pending} trainings "
                    f"to run · objective {objective.metric} ({objective.direction})")

    def step_finished(self, spec: Any, index: int, study: Any, decision: Any) -> None:
        with self.lock:
            if self.step_trainings is not None or index == len(spec.steps) - 1:
                self.total = self.done + sum((self.step_trainings or [])[index + 1:])
        self._print(leaderboard_table(decision))
        for line in decision_lines(decision):
            self._print(line)

    # --------------------------------------------------------------- recorder callbacks
    def trial_started(self, handle: Any) -> None:
        with self.lock:
            self.running[handle.number] = _Running(
                label_variants(handle.number, handle.training.key, handle.training.seed), self.clock())
        self._start()

    def trial_progress(self, handle: Any, step: int, total: int, samples_per_s: float | None) -> None:
        with self.lock:
            running = self.running.get(handle.number)
            if running is None:
                return
            now = self.clock()
            running.step, running.total, running.speed = step, total, samples_per_s
            running.first = running.first or (now, step)
            running.last = (now, step)

    def trial_reported(self, handle: Any, step: int, metrics: dict[str, float]) -> None:
        with self.lock:
            running = self.running.get(handle.number)
            if running is None:
                return
            running.step = max(running.step, step)
            running.loss = metrics.get("train_loss", running.loss)
            running.value = metrics.get(self.metric)

    def trial_finished(self, handle: Any, state: Any, reason: str, value: float | None = None) -> None:
        """A finished trial's line: its recorded objective ``value`` (the final or best metrics, on
        the whole validation split) when it completed, else the last evaluation it reported."""
        now = self.clock()
        with self.lock:
            running = self.running.pop(handle.number, None)
            elapsed = now - running.started if running is not None else 0.0
            self.done += 1
            if self.total is not None and self.done > self.total:
                self.total = self.done
            if reason != "interrupted":
                self.walls.append(elapsed)
        last = running or _Running([], now)
        style = {"COMPLETE": "green", "PRUNED": "magenta", "FAIL": "red"}.get(state.name, "")
        self._print(f"  trial {handle.number:>3} [{style}]{state.name:<8}[/] {handle.training.key} "
                    f"seed={handle.training.seed} {self.metric}="
                    f"{_fmt(value if value is not None else last.value)} at step "
                    f"{last.step} ({elapsed:.1f}s){' ' + reason if reason else ''}")

    def expect(self, total: int) -> None:
        """The expected number of trainings of the whole sweep (the plan's, updated as it runs)."""
        with self.lock:
            self.total = max(total, self.done)


def leaderboard_table(decision: Any) -> Table:
    table = Table(title="leaderboard (mean over seeds)")
    for column in ("configuration", "mean", "± se", "n", "pruned", "failed", "gain", ""):
        table.add_column(column, overflow="fold")
    comparisons = {c.key: c for c in decision.comparisons}
    for stats in decision.stats:
        mark = "winner" if stats.key == decision.winner_key else (
            "carried" if stats.key == decision.carried_key else "")
        if stats.raced_at is not None:
            mark = f"raced at {stats.raced_at}"
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
