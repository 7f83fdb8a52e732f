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
    run.add_argument("--with-deps", action="store_true",
                     help="run the specs this one starts from (init_from: winner-of:) first, in order, "
                          "each resumed where it stopped")
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


def _plan_of(spec: Any, url: str | None = None, measure: bool = True, build: bool = True,
             progress: bool = False) -> Any:
    from maou.sweep.results.plan import plan_sweep
    from maou.sweep.storage import open_storage, storage_exists

    url = url or spec.storage_url
    storage = open_storage(url, create=False) if storage_exists(url) else None
    return plan_sweep(spec, storage, measure=measure, build=build, progress=progress)


def cost_text(plan: Any) -> str:
    """``6-9 trainings, about 2 min to 3 min``: what is left and how long it takes here."""
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

    spec = spec_of(args)
    console = Console()
    chain = chain_of(spec)
    for link in chain:
        needed = _plan_of(link.spec, measure=args.measure, build=args.build, progress=True)
        console.print(f"needs the winner of {link.spec.name} ({link.state}): {cost_text(needed)}"
                      + ("" if link.done else f"; run `sweep run {command_name(link.spec)}` first"), soft_wrap=True)
    plan = _plan_of(spec, args.storage, measure=args.measure, build=args.build, progress=True)
    console.print(plan_table(plan))
    console.print(f"training rows: {plan.rows[1]}", soft_wrap=True)
    if plan.complete:
        console.print(f"nothing left to run: every step of sweep {spec.name} decided "
                      f"(`sweep export {command_name(spec)}` writes the winner)", soft_wrap=True)
        return 0
    total = cost_text(plan)
    if plan.seconds_per_training:
        total += f" one at a time ({_duration(plan.seconds_per_training)} each: {plan.cost_source})"
    else:
        total += f" (cost: {plan.cost_source})"
    console.print(total, soft_wrap=True)
    if (warning := plan.too_long_here()) is not None:
        console.print(f"[yellow]{warning}[/]", soft_wrap=True)
    if any(not link.done for link in chain):
        console.print(f"`sweep run {command_name(spec)} --with-deps` runs the missing ones first", soft_wrap=True)
    if len(spec.seed_list) < 2:
        console.print("[yellow]one seed: the noise of a gain is not measured[/]")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maou.sweep.chain import chain_of, command_name, require_prerequisites

    spec = spec_of(args)
    console = Console()
    missing = [link for link in chain_of(spec) if not link.done]
    if missing and not args.with_deps:  # before anything trains or touches this sweep's storage
        require_prerequisites(spec, cost=lambda needed: cost_text(_plan_of(needed, build=False)))
    for link in missing:
        console.rule(f"[bold]prerequisite {link.spec.name}[/] ({link.state})")
        _run_one(args, link.spec, link.spec.storage_url, command_name(link.spec), console)
    return _run_one(args, spec, args.storage or spec.storage_url, args.spec, console)


def _run_one(args: argparse.Namespace, spec: Any, url: str, name: str, console: Any) -> int:
    from maou.cli.view import SweepView
    from maou.sweep.results.notes import DashboardNotes
    from maou.sweep.results.plan import plan_sweep
    from maou.sweep.run.protocol import run_sweep
    from maou.sweep.storage import mask_url

    args.resume_hint = f"trials in progress were marked interrupted; run `sweep run {name}` again to resume"
    console.print(f"[bold]sweep {spec.name}[/]: stage {spec.stage}, {len(spec.steps)} steps, "
                  f"seeds {list(spec.seed_list)}, executor {spec.executor.kind}, storage {mask_url(url)}")
    if len(spec.seed_list) < 2:
        console.print(f"[yellow]warning: one seed cannot measure the noise: a step adopts any gain above "
                      f"selection.min_margin ({spec.selection.min_margin:g}); give seeds: 3 to test gains[/]")
    expected = plan_sweep(spec, measure=False, build=False).trainings[1]
    started = time.perf_counter()
    with SweepView(console, expected) as view:
        outcome = run_sweep(spec, storage_url=url, view=view, observers=(DashboardNotes(),))
    elapsed = time.perf_counter() - started
    console.rule("[bold]done")
    console.print(f"winner: {json.dumps(outcome.carried, sort_keys=True) or '(base config)'}")
    console.print(f"wall time: {elapsed:.1f}s · studies: {', '.join(outcome.study_names)}")
    console.print(f"next: sweep export {name} · sweep report {name} · sweep dashboard {name}")
    return 0
