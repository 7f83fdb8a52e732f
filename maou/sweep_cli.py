"""``sweep run``, ``sweep status`` and ``sweep dashboard``."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from maou.errors import UserError
from maou.spec import SweepSpec, load_spec


def _spec(args) -> SweepSpec:
    spec = load_spec(args.spec)
    if getattr(args, "executor", None):
        spec = dataclasses.replace(spec, executor=dataclasses.replace(spec.executor, kind=args.executor))
    return spec


def cli_run(args) -> int:
    from maou.protocol import run_sweep
    from maou.view import SweepView

    spec = _spec(args)
    console = Console()
    url = args.storage or spec.storage_url
    console.print(f"[bold]sweep {spec.name}[/]: stage {spec.stage}, {len(spec.steps)} steps, "
                  f"seeds {list(spec.seed_list)}, executor {spec.executor.kind}, storage {url}")
    started = time.perf_counter()
    outcome = run_sweep(spec, storage_url=url, view=SweepView(console))
    elapsed = time.perf_counter() - started
    console.rule("[bold]done")
    console.print(f"winner: {json.dumps(outcome.carried, sort_keys=True) or '(base config)'}")
    console.print(f"wall time: {elapsed:.1f}s · studies: {', '.join(outcome.study_names)}")
    console.print(f"next: sweep export {args.spec}    ·    sweep dashboard {args.spec}")
    return 0


def status_table(spec: SweepSpec, storage_url: str | None = None) -> Table:
    import optuna

    from maou.storage import open_storage, step_study_names

    storage = open_storage(storage_url or spec.storage_url)
    names = step_study_names(storage, spec.name)
    table = Table(title=f"sweep {spec.name} ({storage_url or spec.storage_url})")
    for column in ("step", "complete", "pruned", "failed", "running", "prune reasons", "winner", "mean", "decision"):
        table.add_column(column)
    for index, step in enumerate(spec.steps):
        name = spec.study_name(index)
        if name not in names:
            table.add_row(name, "-", "-", "-", "-", "", "", "", "not started")
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
        reasons = Counter(t.user_attrs.get("prune_reason", "?") for t in study.get_trials(deepcopy=False)
                          if t.state.name == "PRUNED")
        decision = study.user_attrs.get("decision")
        winner = mean = verdict = ""
        if decision:
            winner = " ".join(f"{k}={v}" for k, v in decision["winner_overrides"].items()) or "(base)"
            board = {json.dumps(e["config"], sort_keys=True): e for e in decision["leaderboard"]}
            entry = board.get(json.dumps(decision["winner_overrides"], sort_keys=True))
            mean = f"{entry['mean']:.4f} ± {entry['std']:.4f}" if entry and entry["mean"] is not None else ""
            verdict = (f"adopted (margin {decision['margin']:.4g} > {decision['threshold']:.4g})"
                       if decision["adopted"] else "kept carried")
        table.add_row(name, str(states.get("COMPLETE", 0)), str(states.get("PRUNED", 0)),
                      str(states.get("FAIL", 0)), str(states.get("RUNNING", 0)),
                      ", ".join(f"{r}: {n}" for r, n in reasons.items()), winner, mean,
                      verdict or "in progress")
    return table


def cli_status(args) -> int:
    spec = _spec(args)
    Console().print(status_table(spec, args.storage))
    return 0


def dashboard_command(storage_url: str, host: str, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("optuna-dashboard")
    program = str(exe) if exe.exists() else shutil.which("optuna-dashboard")
    if program is None:
        raise UserError("optuna-dashboard is not installed (pip install optuna-dashboard)")
    return [program, storage_url, "--host", host, "--port", str(port)]


def cli_dashboard(args) -> int:
    spec = _spec(args)
    url = args.storage or spec.storage_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise UserError(f"no storage at {url}; run `sweep run {args.spec}` first")
    command = dashboard_command(url, args.host, args.port)
    Console().print(f"optuna-dashboard on http://{args.host}:{args.port}/dashboard/ (Ctrl-C to stop)")
    return subprocess.call(command)
