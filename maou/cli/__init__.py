"""The ``sweep`` command line: one module per command group (``data``, ``train``, the sweep
commands: run, results), each adding its parsers and handlers. Handlers import what they need when they run,
so ``sweep --help`` never imports torch, optuna or ray."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

from maou import __version__
from maou.cli import data, results, run, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="Hyperparameter sweeps for staged shogi training (reachable squares, legal moves, "
        "policy+value), recorded in an Optuna storage.",
    )
    parser.add_argument("--version", action="version", version=f"maou-sweep {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    data.add_commands(commands)
    train.add_commands(commands)
    run.add_commands(commands)
    results.add_commands(commands)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: trials in flight are marked interrupted."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = args.command if args.command != "data" else f"data {args.data_command}"
    from maou.errors import UserError
    from maou.strict import ConfigError
    from maou.sweep.run.lock import LostLock

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.handler(args) or 0)
    except (UserError, ConfigError) as exc:
        print(f"sweep {name}: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except OSError as exc:  # a path the user gave that cannot be read or written, a full disk
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"sweep {name}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except LostLock as exc:  # another driver owns the sweep now: this one wrote nothing since
        print(f"sweep {name}: {exc}", file=sys.stderr)
        return LostLock.exit_code
    except KeyboardInterrupt as exc:
        hint = getattr(args, "resume_hint", "")
        print(f"\nsweep {name}: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}"
              f"{'; ' + hint if hint else ''}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
