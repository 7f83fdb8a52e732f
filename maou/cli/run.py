"""``sweep plan`` (what a spec will train, and roughly how long) and ``sweep run`` (train it)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from maou.cli.specs import add_spec_argument, spec_of


def add_commands(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run a sweep spec step by step (resumes if interrupted)")
    add_spec_argument(run)
    from maou.sweep.run.executors import EXECUTORS

    run.add_argument("--executor", choices=list(EXECUTORS), default=None,
                     help="override the spec's executor kind: " + "; ".join(
                         f"{k.name}: {k.summary}" for k in EXECUTORS.values()))
    run.set_defaults(handler=run_command)

    plan = commands.add_parser("plan", help="show the steps, configurations and trainings of a spec, and their cost")
    add_spec_argument(plan)
    plan.add_argument("--no-measure", dest="measure", action="store_false",
                      help="do not time a few training steps when the storage has no finished trials")
    plan.set_defaults(handler=plan_command)


def _bounds(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}-{pair[1]}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def plan_table(plan: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"plan of sweep {plan.spec.name}: stage {plan.spec.stage}, seeds {list(plan.spec.seed_list)}")
    for column in ("step", "question", "configurations", "trainings to run", "reused", "done", "cost"):
        table.add_column(column, overflow="fold")
    per = plan.seconds_per_training
    for index, step in enumerate(plan.steps):
        cost = (_duration(step.trainings[0] * per) if step.trainings[0] == step.trainings[1]
                else f"{_duration(step.trainings[0] * per)}-{_duration(step.trainings[1] * per)}") if per else "?"
        question = step.question + ("".join(f"\n({n})" for n in step.notes))
        table.add_row(f"{index + 1}. {step.name}", question, _bounds(step.configurations), _bounds(step.trainings),
                      _bounds(step.reused), str(step.done), cost)
    return table


def plan_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maou.sweep.results.plan import plan_sweep
    from maou.sweep.storage import NoStorage, open_storage

    spec = spec_of(args)
    url = args.storage or spec.storage_url
    try:
        storage = open_storage(url, create=False)
    except NoStorage:  # not run yet: nothing is done
        storage = None
    plan = plan_sweep(spec, storage, measure=args.measure)
    console = Console()
    console.print(plan_table(plan))
    low, high = plan.trainings
    per = plan.seconds_per_training
    total = f"{_bounds((low, high))} trainings"
    if per:
        total += f", about {_duration(low * per)}" + (f" to {_duration(high * per)}" if high != low else "")
        total += f" one at a time ({_duration(per)} each: {plan.cost_source})"
    else:
        total += f" (cost: {plan.cost_source})"
    console.print(total)
    if len(spec.seed_list) < 2:
        console.print("[yellow]one seed: the noise of a gain is not measured[/]")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maou.cli.view import SweepView
    from maou.sweep.results.notes import DashboardNotes
    from maou.sweep.results.plan import plan_sweep
    from maou.sweep.run.protocol import run_sweep
    from maou.sweep.storage import mask_url

    spec = spec_of(args)
    console = Console()
    url = args.storage or spec.storage_url
    args.resume_hint = f"trials in progress were marked interrupted; run `sweep run {args.spec}` again to resume"
    console.print(f"[bold]sweep {spec.name}[/]: stage {spec.stage}, {len(spec.steps)} steps, "
                  f"seeds {list(spec.seed_list)}, executor {spec.executor.kind}, storage {mask_url(url)}")
    if len(spec.seed_list) < 2:
        console.print(f"[yellow]warning: one seed cannot measure the noise: a step adopts any gain above "
                      f"selection.min_margin ({spec.selection.min_margin:g}); give seeds: 3 to test gains[/]")
    expected = plan_sweep(spec, measure=False).trainings[1]
    started = time.perf_counter()
    with SweepView(console, expected) as view:
        outcome = run_sweep(spec, storage_url=url, view=view, observers=(DashboardNotes(),))
    elapsed = time.perf_counter() - started
    console.rule("[bold]done")
    console.print(f"winner: {json.dumps(outcome.carried, sort_keys=True) or '(base config)'}")
    console.print(f"wall time: {elapsed:.1f}s · studies: {', '.join(outcome.study_names)}")
    console.print(f"next: sweep export {args.spec} · sweep report {args.spec} · sweep dashboard {args.spec}")
    return 0
