"""``sweep run``, ``sweep status``, ``sweep export`` and ``sweep dashboard``: one sweep spec each."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import Counter
from typing import Any


def add_commands(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run a sweep spec step by step (resumes if interrupted)")
    run.add_argument("spec", metavar="SPEC.yaml")
    run.add_argument("--executor", choices=["local", "ray"], default=None, help="override the spec's executor kind")
    run.add_argument("--storage", default=None, help="override the spec's Optuna storage URL")
    run.set_defaults(handler=run_command)

    status = commands.add_parser("status", help="show the steps, trials and winners of a sweep")
    status.add_argument("spec", metavar="SPEC.yaml")
    status.add_argument("--storage", default=None, help="override the spec's Optuna storage URL")
    status.set_defaults(handler=status_command)

    export = commands.add_parser("export", help="write trials.csv, steps.csv, best.yaml, best-args.txt")
    export.add_argument("spec", metavar="SPEC.yaml")
    export.add_argument("--out", default=None, metavar="DIR", help="default results/<sweep name>")
    export.add_argument("--storage", default=None, help="override the spec's Optuna storage URL")
    export.set_defaults(handler=export_command)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on the sweep's storage")
    dashboard.add_argument("spec", metavar="SPEC.yaml")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--storage", default=None, help="override the spec's Optuna storage URL")
    dashboard.set_defaults(handler=dashboard_command)


def _spec(args: argparse.Namespace) -> Any:
    from maou.sweep.spec import load_spec

    spec = load_spec(args.spec)
    if getattr(args, "executor", None):
        spec = dataclasses.replace(spec, executor=dataclasses.replace(spec.executor, kind=args.executor))
    return spec


def run_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maou.cli.view import SweepView
    from maou.sweep.protocol import run_sweep
    from maou.sweep.storage import mask_url

    spec = _spec(args)
    console = Console()
    url = args.storage or spec.storage_url
    args.resume_hint = f"trials in progress were marked interrupted; run `sweep run {args.spec}` again to resume"
    console.print(f"[bold]sweep {spec.name}[/]: stage {spec.stage}, {len(spec.steps)} steps, "
                  f"seeds {list(spec.seed_list)}, executor {spec.executor.kind}, storage {mask_url(url)}")
    if len(spec.seed_list) < 2:
        console.print(f"[yellow]warning: one seed cannot measure the noise: a step adopts any gain above "
                      f"selection.min_margin ({spec.selection.min_margin:g}); give seeds: 3 to test gains[/]")
    started = time.perf_counter()
    outcome = run_sweep(spec, storage_url=url, view=SweepView(console))
    elapsed = time.perf_counter() - started
    console.rule("[bold]done")
    console.print(f"winner: {json.dumps(outcome.carried, sort_keys=True) or '(base config)'}")
    console.print(f"wall time: {elapsed:.1f}s · studies: {', '.join(outcome.study_names)}")
    console.print(f"next: sweep export {args.spec}    ·    sweep dashboard {args.spec}")
    return 0


def status_table(spec: Any, storage_url: str | None = None) -> Any:
    import optuna
    from rich.table import Table

    from maou.sweep.decision import RecordedDecision
    from maou.sweep.storage import mask_url, open_storage, step_study_names

    url = storage_url or spec.storage_url
    storage = open_storage(url, create=False)
    names = step_study_names(storage, spec.name)
    table = Table(title=f"sweep {spec.name} ({mask_url(url)})")
    for column in ("step", "complete", "pruned", "failed", "running", "prune reasons", "winner", "mean", "decision"):
        table.add_column(column)
    for index in range(len(spec.steps)):
        name = spec.study_name(index)
        if name not in names:
            table.add_row(name, "-", "-", "-", "-", "", "", "", "not started")
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        states = Counter(t.state.name for t in trials)
        reasons = Counter(t.user_attrs.get("prune_reason", "?") for t in trials if t.state.name == "PRUNED")
        decision = RecordedDecision.of_study(study)
        winner = mean = verdict = ""
        if decision is not None:
            winner = str(decision.winner_key)
            entry = decision.winner
            mean = f"{entry.mean:.4f} ± {entry.std:.4f}" if entry and entry.mean is not None else ""
            verdict = ("failed: no trial completed" if decision.failed else
                       f"adopted (gain {(decision.comparison_of(decision.winner_key) or {}).get('gain')})"
                       if decision.adopted else "kept carried")
            if not decision.failed and not decision.noise_measured:
                verdict += "; noise not measured (1 seed)"
            if decision.edge:
                verdict += f"; edge: {', '.join(decision.edge)}"
        table.add_row(name, str(states.get("COMPLETE", 0)), str(states.get("PRUNED", 0)),
                      str(states.get("FAIL", 0)), str(states.get("RUNNING", 0)),
                      ", ".join(f"{r}: {n}" for r, n in reasons.items()), winner, mean, verdict or "in progress")
    return table


def status_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    Console().print(status_table(_spec(args), args.storage))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maou.sweep.export import export_sweep

    export = export_sweep(_spec(args), args.out, args.storage)
    console = Console()
    for name, path in export.paths.items():
        console.print(f"{name:>13}: {path}")
    if export.pruned:
        console.print("pruned trials by reason: " + ", ".join(f"{r}: {n}" for r, n in sorted(export.pruned.items())))
    if "best_args" in export.paths:
        console.print(f"upstream: {export.paths['best_args'].read_text().strip()}")
    if export.no_winner:
        console.print(f"[red]no best.yaml or best-args.txt: {export.no_winner}[/]")
        return 1
    return 0


def serve_dashboard(storage: Any, host: str, port: int) -> None:
    """optuna-dashboard's WSGI app served in this process (threaded) until Ctrl-C or SIGTERM."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import optuna_dashboard

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    with make_server(host, port, optuna_dashboard.wsgi(storage), server_class=Server,
                     handler_class=QuietHandler) as server:
        server.serve_forever()


def dashboard_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maou.sweep.storage import open_storage

    spec = _spec(args)
    storage = open_storage(args.storage or spec.storage_url, create=False)
    Console().print(f"optuna-dashboard on http://{args.host}:{args.port}/dashboard/ (Ctrl-C to stop)")
    serve_dashboard(storage, args.host, args.port)
    return 0
