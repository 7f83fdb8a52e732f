"""The ``sweep`` command line. Parsing only: each command's work lives in its concept module,
imported when the command runs, so ``sweep --help`` never imports torch, optuna or ray."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from maou import __version__

# command name -> "module:function"; each function takes the parsed args and returns an exit code.
HANDLERS = {
    "data build": "maou.data.build:cli_build",
    "data selfplay": "maou.data.selfplay:cli_selfplay",
    "train": "maou.train_cli:cli_train",
    "run": "maou.sweep_cli:cli_run",
    "status": "maou.sweep_cli:cli_status",
    "export": "maou.export:cli_export",
    "dashboard": "maou.sweep_cli:cli_dashboard",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="Hyperparameter sweeps for staged shogi training (reachable squares, legal moves, "
        "policy+value), recorded in an Optuna storage.",
    )
    parser.add_argument("--version", action="version", version=f"maou-sweep {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = commands.add_parser("data", help="build datasets from game records; play engine games")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    build = data_commands.add_parser("build", help="game records -> Stage 1/2/3 Arrow datasets")
    build.add_argument("--games", nargs="+", required=True, metavar="PATH",
                       help="CSA/KIF files or folders (.gz allowed), or HCPE .feather files")
    build.add_argument("--out", required=True, metavar="DIR", help="output folder")
    build.add_argument("--val-fraction", type=float, default=0.1, help="share of games held out (default 0.1)")
    build.add_argument("--split-seed", type=int, default=0, help="seed of the by-game split (default 0)")
    selfplay = data_commands.add_parser("selfplay", help="play USI engine games and write CSA records")
    selfplay.add_argument("--engine", choices=["fairy-stockfish", "gpsusi"], default="fairy-stockfish")
    selfplay.add_argument("--games", type=int, required=True, metavar="N", help="number of games")
    selfplay.add_argument("--out", required=True, metavar="DIR", help="output folder for .csa files")
    selfplay.add_argument("--movetime-ms", type=int, default=30, help="engine time per move (default 30)")
    selfplay.add_argument("--max-plies", type=int, default=256, help="draw at this many plies (default 256)")
    selfplay.add_argument("--seed", type=int, default=0, help="seed of the opening randomisation")

    train = commands.add_parser("train", help="train one configuration of one stage")
    train.add_argument("config", metavar="CONFIG.yaml")
    train.add_argument("--out", default=None, metavar="DIR",
                       help="where the checkpoint and metrics.json go (default runs/<config name>)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr=0.001 (repeatable)")

    run = commands.add_parser("run", help="run a sweep spec step by step (resumes if interrupted)")
    run.add_argument("spec", metavar="SPEC.yaml")
    run.add_argument("--executor", choices=["local", "ray"], default=None,
                     help="override the spec's executor kind")
    run.add_argument("--storage", default=None, help="override the spec's Optuna storage URL")

    status = commands.add_parser("status", help="show the steps, trials and winners of a sweep")
    status.add_argument("spec", metavar="SPEC.yaml")
    status.add_argument("--storage", default=None, help="override the spec's Optuna storage URL")

    export = commands.add_parser("export", help="write trials.csv, steps.csv, best.yaml, best-args.txt")
    export.add_argument("spec", metavar="SPEC.yaml")
    export.add_argument("--out", default=None, metavar="DIR", help="default results/<sweep name>")
    export.add_argument("--storage", default=None, help="override the spec's Optuna storage URL")

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on the sweep's storage")
    dashboard.add_argument("spec", metavar="SPEC.yaml")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--storage", default=None, help="override the spec's Optuna storage URL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = args.command if args.command != "data" else f"data {args.data_command}"
    module_name, function_name = HANDLERS[name].split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    from maou.errors import UserError
    from maou.strict import ConfigError

    try:
        return int(handler(args) or 0)
    except (UserError, ConfigError) as exc:
        print(f"sweep {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
