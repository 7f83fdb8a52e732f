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
    """SIGTERM, handled as Ctrl-C: trials in flight are marked interrupted, the sweep's lock is
    released; exit code 143 (128 + 15)."""

    word = "terminated"
    exit_code = 143


class HungUp(Terminated):
    """SIGHUP (the terminal closed, an SSH session dropped), handled as SIGTERM; exit code 129
    (128 + 1). Under ``nohup`` (SIGHUP ignored) it stays ignored."""

    word = "hung up (SIGHUP)"
    exit_code = 129


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _hang_up(signum: int, frame: Any) -> None:
    _leave_the_dead_terminal()
    raise HungUp()


def _leave_the_dead_terminal() -> None:
    """Point stdin, stdout and stderr that were on the hung-up terminal at /dev/null: every write
    there fails (EIO), and the way out (trials marked interrupted, the lock released, the live view
    closed, the last line) must not stop at the first one."""
    import errno
    import os
    import termios

    devnull = None
    for fd in (0, 1, 2):
        try:
            termios.tcgetattr(fd)
            continue  # a live terminal
        except termios.error as exc:
            if exc.args[0] != errno.EIO:  # not a terminal at all: a pipe, a file
                continue
        except (OSError, ValueError):
            continue
        if devnull is None:
            devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, fd)
    if devnull is not None:
        os.close(devnull)


def _handle(signum: int, handler: Any) -> Any:
    """Install ``handler`` for ``signum`` unless the signal is ignored (``nohup``); returns the previous one."""
    previous = signal.getsignal(signum)
    if previous != signal.SIG_IGN:
        signal.signal(signum, handler)
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = args.command if args.command != "data" else f"data {args.data_command}"
    from maou.errors import UserError
    from maou.strict import ConfigError
    from maou.sweep.run.lock import LostLock

    hangup = getattr(signal, "SIGHUP", None)  # POSIX only
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _terminate)}
    if hangup is not None:
        previous[hangup] = _handle(hangup, _hang_up)
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
        word = exc.word if isinstance(exc, Terminated) else "interrupted"
        try:
            print(f"\nsweep {name}: {word}{'; ' + hint if hint else ''}", file=sys.stderr)
        except OSError:  # nowhere left to say it
            pass
        return exc.exit_code if isinstance(exc, Terminated) else 130
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
