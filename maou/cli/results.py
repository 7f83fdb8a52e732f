"""``sweep status``, ``sweep export``, ``sweep report`` and ``sweep dashboard``: what a sweep found."""

from __future__ import annotations

import argparse
import json
from typing import Any

from maou.cli.specs import add_spec_argument, spec_of


def add_commands(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="show the steps, trials and winners of a sweep")
    add_spec_argument(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=status_command)

    export = commands.add_parser("export", help="write trials.csv, steps.csv, best.yaml, best-args.txt")
    add_spec_argument(export)
    export.add_argument("--out", default=None, metavar="DIR", help="default results/<sweep name>")
    export.add_argument("--upstream-data", action="store_true",
                        help="also write upstream's dense copy of a Stage 2/3 winner's training split "
                             "(DIR/upstream-data/stageN/train.feather) and point best-args.txt at it")
    export.set_defaults(handler=export_command)

    report = commands.add_parser("report", help="write results/<sweep>/report.html (self-contained)")
    add_spec_argument(report)
    report.add_argument("--out", default=None, metavar="FILE", help="default results/<sweep name>/report.html")
    report.set_defaults(handler=report_command)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on the sweep's storage")
    add_spec_argument(dashboard)
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default 127.0.0.1: this machine only)")
    dashboard.add_argument("--allow-writes", action="store_true",
                           help="let the dashboard change studies and trials (delete, rename, notes); "
                                "read-only by default")
    dashboard.set_defaults(handler=dashboard_command)


def status_table(status: dict[str, Any]) -> Any:
    """The status as a table that wraps (a configuration one key per line) rather than cuts: four
    columns (the step with its trial counts, the winner, its mean, the decision), so that an
    80-column terminal shows it whole."""
    from rich.table import Table

    table = Table(title=f"sweep {status['sweep']} ({status['storage']})")
    for column in ("step", "winner", "mean", "decision"):
        table.add_column(column, overflow="fold")
    for number, entry in enumerate(status["steps"], start=1):
        title = f"{number}. {entry['step']}"
        if not entry["started"]:
            table.add_row(title, "", "", "not started")
            continue
        states, decision = entry["trials"], entry.get("decision")
        counts = [f"{states.get(s, 0)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
                  if states.get(s)]
        counts += [f"  {reason}: {n}" for reason, n in entry["prune_reasons"].items()]
        winner = mean = ""
        if decision is not None:
            winner = "\n".join(f"{k}={v}" for k, v in decision["winner_overrides"].items()) or "(base)"
            if decision.get("winner_mean") is not None:
                sem = decision.get("winner_sem")
                mean = f"{decision['winner_mean']:.4f}" + (f"\n± {sem:.4f}" if sem is not None else "")
        table.add_row("\n".join([title, *counts]), winner, mean, entry["verdict"])
    return table


def status_command(args: argparse.Namespace) -> int:
    from maou.sweep.results.status import sweep_status

    status = sweep_status(spec_of(args), args.storage)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    from rich.console import Console

    Console().print(status_table(status))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maou.sweep.results.report import write_report

    path = write_report(spec_of(args), args.out, args.storage)
    Console().print(f"report: {path}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from maou.sweep.results.export import export_sweep

    console = Console()
    export = export_sweep(spec_of(args), args.out, args.storage, upstream_data=args.upstream_data,
                          progress=console.is_terminal)
    for name, path in export.paths.items():
        console.print(f"{name:>13}: {path}", markup=False, highlight=False, soft_wrap=True)
    if export.pruned:
        console.print("pruned trials by reason: " + ", ".join(f"{r}: {n}" for r, n in sorted(export.pruned.items())))
    if export.upstream_copy is not None:
        console.print(dense_copy_line(export.upstream_copy), markup=False, highlight=False, soft_wrap=True)
    if export.upstream_note:
        console.print(export.upstream_note, markup=False, highlight=False, soft_wrap=True)
    if "best_args" in export.paths:
        print_upstream(console, export.paths["best_args"].read_text())
    if export.no_winner:
        console.print(f"[red]no best.yaml or best-args.txt: {export.no_winner}[/]")
        return 1
    if export.no_upstream_data:
        console.print(f"no upstream data: {export.no_upstream_data}", style="red", markup=False, highlight=False,
                      soft_wrap=True)
        return 1
    return 0


def dense_copy_line(copy: Any) -> str:
    """What writing upstream's dense copy did: its rows and size, and how fast (or that it was kept)."""
    from maou.data.dense import size_text

    what = f"upstream's dense copy: {copy.rows:,} rows, {size_text(copy.bytes)}"
    if not copy.written:
        return f"{what}, kept (already a copy of the same built file)"
    return f"{what}, written in {copy.seconds:.1f} s ({copy.rows_per_s:,.0f} rows/s)"


def print_upstream(console: Any, best_args: str) -> None:
    """best-args.txt as it is: the command on one line however narrow the terminal (soft wrap:
    the terminal folds it, a copy gives the one line back), its notes below it."""
    console.print("upstream (best-args.txt):")
    for line in best_args.rstrip("\n").splitlines():
        console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)


def dashboard_server(storage: Any, host: str, port: int, allow_writes: bool = False) -> Any:
    """A threaded HTTP server (not yet serving) of optuna-dashboard on ``storage``: the sweeps' steps
    without their lock studies, read-only unless ``allow_writes``."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from maou.sweep.results.dashboard import dashboard_app

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    return make_server(host.strip("[]"), port, dashboard_app(storage, allow_writes), server_class=Server,
                       handler_class=QuietHandler)


def serve_dashboard(storage: Any, host: str, port: int, allow_writes: bool = False) -> None:
    """The dashboard served in this process (threaded) until Ctrl-C or SIGTERM."""
    with dashboard_server(storage, host, port, allow_writes) as server:
        server.serve_forever()


def dashboard_command(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console

    from maou.sweep.results.dashboard import exposure_warning
    from maou.sweep.storage import open_storage

    spec = spec_of(args)
    storage = open_storage(args.storage or spec.storage_url, create=False)
    warning = exposure_warning(args.host, args.allow_writes)
    if warning:
        print(warning, file=sys.stderr)
    where = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
    mode = "writes allowed" if args.allow_writes else "read-only"
    Console().print(f"optuna-dashboard on http://{where}:{args.port}/dashboard/ ({mode}; Ctrl-C to stop)",
                    markup=False, soft_wrap=True)
    serve_dashboard(storage, args.host, args.port, args.allow_writes)
    return 0
