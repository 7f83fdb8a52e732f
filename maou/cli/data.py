"""``sweep data build`` and ``sweep data selfplay``: game records in, datasets and engine games out."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="build datasets from game records; play engine games")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    build = data_commands.add_parser("build", help="game records -> Stage 1/2/3 Arrow datasets")
    build.add_argument("--games", nargs="+", required=True, metavar="PATH",
                       help="CSA/KIF files or folders (.gz allowed), or HCPE .feather files")
    build.add_argument("--out", required=True, metavar="DIR", help="output folder")
    build.add_argument("--val-fraction", type=float, default=0.1, help="share of games held out (default 0.1)")
    build.add_argument("--split-seed", type=int, default=0, help="seed of the by-game split (default 0)")
    build.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes reading and aggregating (default: every core)")
    build.set_defaults(handler=build_command)
    selfplay = data_commands.add_parser("selfplay", help="play USI engine games and write CSA records")
    selfplay.add_argument("--engine", choices=["fairy-stockfish", "gpsusi"], default="fairy-stockfish")
    selfplay.add_argument("--games", type=int, required=True, metavar="N", help="number of games")
    selfplay.add_argument("--out", required=True, metavar="DIR", help="output folder for .csa files")
    selfplay.add_argument("--movetime-ms", type=int, default=30, help="engine time per move (default 30)")
    selfplay.add_argument("--max-plies", type=int, default=256, help="draw at this many plies (default 256)")
    selfplay.add_argument("--seed", type=int, default=0, help="seed of the opening randomisation")
    selfplay.set_defaults(handler=selfplay_command)


def build_command(args: argparse.Namespace) -> int:
    from maou.data.build import build_datasets

    build_datasets(args.games, args.out, val_fraction=args.val_fraction, split_seed=args.split_seed, progress=True,
                   workers=args.workers)
    return 0


def selfplay_command(args: argparse.Namespace) -> int:
    from maou.data.selfplay import play_games

    summary = play_games(args.engine, args.games, args.out, movetime_ms=args.movetime_ms,
                         max_plies=args.max_plies, seed=args.seed, progress=True)
    endings = ", ".join(f"{k} {v}" for k, v in summary.endings.most_common())
    print(f"{summary.games} games ({summary.plies} plies, {endings}) in {summary.seconds:.1f} s -> {args.out}")
    return 0
