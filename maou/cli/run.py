"""``sweep plan`` (what a spec will train, and roughly how long) and ``sweep run`` (train it)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from maou.cli.specs import add_spec_argument, spec_of
from maou.sweep.run.preflight import refuse_unrunnable


def add_commands(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run a sweep spec step by step (resumes if interrupted)")
    add_spec_argument(run)
    from maou.sweep.run.executors import EXECUTORS

    run.add_argument("--executor", choices=list(EXECUTORS), default=None,
                     help="override the spec's executor kind: " + "; ".join(
                         f"{k.name}: {k.summary}" for k in EXECUTORS.values()))
    run.add_argument("--with-deps", action="store_true",
                     help="run the specs this one starts from (init_from: winner-of:) first, in order, "
                          "each resumed where it stopped")
    run.add_argument("--new-storage", action="store_true",
                     help="create the storage even though another storage in the project already holds "
                          "this sweep's studies (refused by default: most likely a typo in the URL)")
    run.set_defaults(handler=run_command)

    plan = commands.add_parser("plan", help="show the steps, configurations and trainings of a spec, and their cost")
    add_spec_argument(plan)
    plan.add_argument("--no-measure", dest="measure", action="store_false",
                      help="do not time a few training steps when the storage has no finished trials")
    plan.add_argument("--no-build", dest="build", action="store_false",
                      help="do not build missing datasets: estimate the training rows from the game records")
    plan.set_defaults(handler=plan_command)


def _bounds(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}-{pair[1]}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _fill(entries: list[str], width: int) -> list[str]:
    """``entries`` on lines of ``width``: all on one line when they fit, else one entry a line,
    a long one broken between its words (then after a comma of a value list), never inside one,
    and continued two columns in."""
    if len("; ".join(entries)) <= width:
        return ["; ".join(entries)] if entries else []
    lines: list[str] = []
    for entry in entries:
        line, room = "", width
        for word in entry.split(" "):
            pieces = [word] if len(word) <= room else [p + "," for p in word.split(",")[:-1]] + [word.split(",")[-1]]
            for piece in pieces:
                glue = "" if not line or line.endswith(",") else " "
                if line and len(line) + len(glue) + len(piece) > room:
                    lines.append(line if room == width else "  " + line)
                    line, glue, room = "", "", width - 2
                line += glue + piece
        lines.append(line if room == width else "  " + line)
    return lines


def _wrapped(text: str, width: int, indent: int = 3) -> list[str]:
    """``text`` wrapped at ``width`` between words (a word longer than a line stays whole), indented."""
    import textwrap

    return textwrap.wrap(text, max(20, width - indent), initial_indent=" " * indent, subsequent_indent=" " * indent,
                         break_long_words=False, break_on_hyphens=False)


class PlanView:
    """``sweep plan`` laid out for the console's width: a header, then per step one line with the
    values it tries, its trainings and their cost (values that do not fit continue below, in
    their column), and underneath, indented and wrapped at the console's width, its question and
    its other counts."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan

    def _cost(self, step: Any) -> str:
        seconds = self.plan.step_seconds(step) if self.plan.seconds_per_training else None
        if seconds is None:
            return "?"
        low, high = _duration(seconds[0]), _duration(seconds[1])
        if low == high:
            return low
        (number, unit), (_, high_unit) = low.split(" "), high.split(" ")
        return f"{number}-{high}" if unit == high_unit else f"{low}-{high}"

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.text import Text

        from maou.sweep.results.plan import step_tries

        plan, width = self.plan, options.max_width
        spec = plan.spec
        yield Text(f"plan of sweep {spec.name}: stage {spec.stage}, seeds {list(spec.seed_list)}", style="bold")
        labels = [f"{index + 1}. {step.name}" for index, step in enumerate(plan.steps)]
        counts = [f"trainings {_bounds(step.trainings)}" for step in plan.steps]
        costs = [f"cost {self._cost(step)}" for step in plan.steps]
        tries = [step_tries(spec.steps[index], short=True) or ["(base)" if index == 0 else "(carried)"]
                 for index in range(len(plan.steps))]
        label_w, count_w, cost_w = (max(len(x) for x in column) for column in (labels, counts, costs))
        room = width - label_w - count_w - cost_w - 6
        # the values in their own column when it is wide enough; else on the lines below the header
        beside = room >= 36 or room >= 20 and all(len(entry) <= room for entries in tries for entry in entries)
        filled = [_fill(entries, room if beside else width - 3) for entries in tries]
        if beside and max(len(line) for lines in filled for line in lines) > room:  # a value too long to fit
            beside, filled = False, [_fill(entries, width - 3) for entries in tries]
        tries_w = max(len(line) for lines in filled for line in lines) if beside else 0
        for index, step in enumerate(plan.steps):
            head = Text(labels[index].ljust(label_w), style="bold")
            if beside:
                head.append("  " + filled[index][0].ljust(tries_w), style="cyan")
            head.append(f"  {counts[index].ljust(count_w)}  {costs[index]}")
            head.rstrip()
            yield head
            for line in filled[index][1:] if beside else filled[index]:
                indent = label_w + 2 if beside else 3
                yield Text(" " * indent + line, style="cyan")
            for line in _wrapped(step.question, width):
                yield Text(line)
            details = [f"configurations {_bounds(step.configurations)}", f"reused {_bounds(step.reused)}",
                       f"done {step.done}", *step.notes]
            for line in _wrapped(" · ".join(details), width):
                yield Text(line, style="dim")


#: ``sweep plan`` measures the specs a spec starts from (their cost is one line) on half the budget.
LINK_BUDGET = {"step_budget_s": 0.75, "max_timed_steps": 10, "eval_budget_s": 0.2}


def _plan_of(spec: Any, url: str | None = None, measure: bool = True, build: bool = True,
             progress: bool = False, say: Any = None, budget: dict[str, Any] | None = None) -> Any:
    from maou.sweep.results.plan import plan_sweep
    from maou.sweep.storage import NoStorage, open_storage

    url = url or spec.storage_url
    try:
        storage = open_storage(url, create=False)
    except NoStorage:  # not run yet: nothing is done
        storage = None
    return plan_sweep(spec, storage, measure=measure, build=build, progress=progress, url=url, say=say,
                      budget=budget)


def cost_text(plan: Any) -> str:
    """``6-9 trainings, about 2 min to 3 min``: what is left and how long it takes here (wall time,
    trainings at once as the executor runs them here)."""
    if plan.complete:
        return "nothing left to run"
    low, high = plan.trainings
    text = f"{_bounds((low, high))} training{'' if high == 1 else 's'}"
    seconds = plan.seconds
    if seconds is not None:
        text += f", about {_duration(seconds[0])}" + (f" to {_duration(seconds[1])}" if high != low else "")
    return text


def plan_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maou.sweep.chain import chain_of, command_name
    from maou.sweep.results.plan import cost_lines, seconds_text

    spec = spec_of(args)
    refuse_unrunnable(spec, args.storage)  # before anything is built or opened: one line, nothing created
    console = Console()
    progress = Console(stderr=True)  # what takes a while (a build, a measurement), beside the plan

    def say(line: str) -> None:
        progress.print(f"[dim]{line}[/]")

    chain = chain_of(spec)
    for link in chain:
        needed = _plan_of(link.spec, measure=args.measure, build=args.build, progress=True, say=say,
                          budget=LINK_BUDGET)
        console.print(f"needs the winner of {link.spec.name} ({link.state}): {cost_text(needed)}"
                      + ("" if link.done else f"; run `sweep run {command_name(link.spec)}` first"))
    plan = _plan_of(spec, args.storage, measure=args.measure, build=args.build, progress=True, say=say)
    console.print(PlanView(plan))
    console.print(f"training rows: {plan.rows[1]}")
    if plan.complete:
        console.print(f"nothing left to run: every step of sweep {spec.name} decided "
                      f"(`sweep export {command_name(spec)}` writes the winner)")
        return 0
    total = cost_text(plan)
    if plan.seconds_per_training:
        total += (f" of wall time here, {plan.at_once} at once ({seconds_text(plan.seconds_per_training)} a "
                  f"training: {plan.cost_source})")
    else:
        total += f" (cost: {plan.cost_source})"
    console.print(total)
    for line in cost_lines(plan):
        console.print(f"  {line}")
    from maou.sweep.run.executors import choose

    at_once = choose(spec.executor, spec.base_config().threads).at_once  # one where measured or left to Ray
    if (share := plan.racing_share(at_once)) is not None:
        how = ("its seeds side by side" if at_once >= len(spec.seed_list)
               else "its later seeds raced or unstarted")
        console.print(f"with racing (on): {share[0]:.0%}-{share[1]:.0%} of that: a challenger significantly worse "
                      f"than the carried configuration stops from {spec.racing.start_fraction:.0%} of the budget, "
                      f"{how} (racing: {{enabled: false}} runs every training)")
    if (warning := plan.too_long_here()) is not None:
        console.print(f"[yellow]{warning}[/]")
    if any(not link.done for link in chain):
        console.print(f"`sweep run {command_name(spec)} --with-deps` runs the missing ones first")
    if len(spec.seed_list) < 2:
        console.print("[yellow]one seed: the noise of a gain is not measured[/]")
    return 0


#: ``sweep run``'s ETA measures less than ``sweep plan`` (about a second of steps on a CPU).
RUN_ETA_BUDGET = {"step_budget_s": 1.0, "max_timed_steps": 10, "eval_budget_s": 0.25}


def _run_plan(spec: Any, storage: Any, measure: bool) -> Any:
    """The plan ``sweep run`` shows progress against: each step's trainings, and the seconds a
    training takes as it runs here (trainings at once included; the live view shares them among
    the trainings running): the storage's finished trials' mean wall time; on a fresh storage, when
    the live display will show an ETA (``measure``) and the trainings run on this machine (a Ray
    driver holds no GPU), a training measured here as ``sweep plan`` does, on a smaller budget
    (:data:`RUN_ETA_BUDGET`) and without the worker start-up (the view's ETA is per training)."""
    from maou.sweep.results.plan import estimate_here, plan_sweep
    from maou.sweep.run.executors import resolve_auto

    plan = plan_sweep(spec, storage, measure=False, build=False)
    if plan.seconds_per_training is None and measure and resolve_auto(spec.executor).kind == "local":
        try:
            estimate_here(plan, getattr(storage, "url", None) or spec.storage_url, startup=False, **RUN_ETA_BUDGET)
        except Exception:  # noqa: BLE001 - only an estimate: the trainings themselves report what fails
            plan.seconds_per_training = None
    return plan


def run_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maou.sweep.chain import chain_of, command_name, require_prerequisites

    spec = spec_of(args)
    console = Console()
    missing = [link for link in chain_of(spec) if not link.done]
    # every spec that is to run, checked before the first of them creates anything
    refuse_unrunnable(spec, args.storage, [link.spec for link in missing] if args.with_deps else [], run=True,
                      new_storage=args.new_storage)
    if missing and not args.with_deps:  # before anything trains or touches this sweep's storage
        require_prerequisites(spec, cost=lambda needed: cost_text(_plan_of(needed, build=False)))
    for link in missing:
        console.rule(f"[bold]prerequisite {link.spec.name}[/] ({link.state})")
        _run_one(args, link.spec, link.spec.storage_url, command_name(link.spec), console)
    return _run_one(args, spec, args.storage or spec.storage_url, args.spec, console)


def _run_one(args: argparse.Namespace, spec: Any, url: str, name: str, console: Any) -> int:
    from maou.cli.view import SweepView
    from maou.sweep.results.notes import DashboardNotes
    from maou.sweep.run.protocol import run_sweep
    from maou.sweep.run.studies import check_steps_are_ours
    from maou.sweep.storage import mask_url, open_storage

    args.resume_hint = f"trials in progress were marked interrupted; run `sweep run {name}` again to resume"
    console.print(f"[bold]sweep {spec.name}[/]: stage {spec.stage}, {len(spec.steps)} steps, "
                  f"seeds {list(spec.seed_list)}, executor {spec.executor.kind}, storage {mask_url(url)}")
    from maou.sweep.run.executors import choose

    console.print(choose(spec.executor, threads=spec.base_config().threads).line, soft_wrap=True)
    if len(spec.seed_list) < 2:
        console.print(f"[yellow]warning: one seed cannot measure the noise: a step adopts any gain above "
                      f"selection.min_margin ({spec.selection.min_margin:g}); give seeds: 3 to test gains[/]")
    storage = open_storage(url)
    check_steps_are_ours(spec, storage)  # before anything reads the steps: another tool's study is refused
    plan = _run_plan(spec, storage, measure=console.is_terminal)
    bounds = [s.trainings[1] for s in plan.steps]  # each step's trainings left, at most
    started = time.perf_counter()
    with SweepView(console, sum(bounds), plan.seconds_per_training, bounds) as view:
        outcome = run_sweep(spec, storage_url=url, view=view, storage=storage,
                            observers=(DashboardNotes(),))
    elapsed = time.perf_counter() - started
    console.rule("[bold]done")
    console.print(f"winner: {json.dumps(outcome.carried, sort_keys=True) or '(base config)'}")
    console.print(f"wall time: {elapsed:.1f}s · studies: {', '.join(outcome.study_names)}")
    console.print(f"next: sweep export {name} · sweep report {name} · sweep dashboard {name}")
    return 0
