"""``sweep train CONFIG.yaml [--out DIR] [--set key=value ...]``: train one configuration of one stage.

Writes ``OUT/checkpoint.pt``, ``OUT/metrics.json`` (final and best metrics, history, stop reason,
config) and ``OUT/config.yaml`` (the resolved config, overrides applied), and prints OUT.

Without ``--out``, every run writes a folder of its own: the first of ``runs/<config file stem>``,
``runs/<stem>-2``, ``runs/<stem>-3``, ... that does not exist yet (claimed atomically, so two runs at
once never share one), in the ``runs/`` folder of the config's project (the nearest folder above
the config that holds a ``sweeps/`` folder, as specs find theirs: ``sweep train
results/demo/best.yaml`` writes ``runs/best`` beside ``sweeps/`` wherever it is started), else of the
current folder. An earlier run is never overwritten: an explicit ``--out DIR`` that already holds a
checkpoint is refused in one line (give another DIR, or leave ``--out`` out for a numbered folder).

Nothing is created when the config is invalid or its data missing: the run folder is made only
after the data loaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train one configuration of one stage")
    train.add_argument("config", metavar="CONFIG.yaml")
    train.add_argument("--out", default=None, metavar="DIR",
                       help="where the checkpoint and metrics.json go (default: a new folder each run, "
                            "runs/<config name>, then runs/<config name>-2, -3, ... in the config's project); "
                            "a DIR that already holds a checkpoint is refused")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set optim.lr=0.001 (repeatable)")
    train.set_defaults(handler=train_command)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.001", "model.hidden_dim=null"]`` -> ``{"optim.lr": 0.001, "model.hidden_dim": None}``."""
    from maou.strict import ConfigError, parse_yaml

    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_yaml(text, f"--set {item}")
    return overrides


def resolve_config(config_path: str | Path, overrides: list[str]):
    from maou.strict import with_overrides
    from maou.trainer.config import load_train_config

    config = load_train_config(config_path)
    return with_overrides(config, parse_overrides(overrides)) if overrides else config


def project_runs(config_path: str | Path) -> Path:
    """The ``runs/`` folder of the config's project: beside the ``sweeps/`` folder of the nearest
    folder above the config that holds one, else in the current folder."""
    from maou.sweep.locate import projects_above

    projects = projects_above(Path(config_path).resolve().parent)
    return projects[0] / "runs" if projects else Path("runs")


def check_out(out: Path) -> None:
    """Refuse an explicit ``--out`` that would overwrite an earlier run (or is a file), before anything loads."""
    from maou.errors import UserError
    from maou.trainer.checkpoint import CHECKPOINT_NAME

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if (out / CHECKPOINT_NAME).exists():
        raise UserError(f"--out {out} already holds a checkpoint ({out / CHECKPOINT_NAME}): give another --out, "
                        f"or leave --out out to write a new numbered folder under runs/")


def new_run_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ...: the first that does not exist, created (atomically:
    two runs at once never get the same one)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        folder = base if number == 1 else base.with_name(f"{base.name}-{number}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


def _shown(path: Path) -> Path:
    """``path`` as the user reads it: relative to the current folder when inside it."""
    absolute, here = path.absolute(), Path.cwd()
    return absolute.relative_to(here) if absolute.is_relative_to(here) else path


def _metrics_table(title: str, final: dict[str, float], best: dict[str, float]):
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    table.add_column("metric")
    table.add_column("final", justify="right")
    table.add_column("best", justify="right")
    for key, value in final.items():
        table.add_row(key, f"{value:.6g}", f"{best.get(key, float('nan')):.6g}")
    return table


def train_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from maou.data.resolve import check_games, dataset_of, open_dataset
    from maou.stages import stage
    from maou.strict import to_dict
    from maou.trainer.config import dump_train_config
    from maou.trainer.loop import train_stage
    from maou.trainer.result import finite_or_none

    config = resolve_config(args.config, args.overrides)
    if args.out:
        check_out(Path(args.out))
    check_games(config)  # missing games: one line, before the build folder is made
    console = Console()
    data = open_dataset(config.stage, dataset_of(config, progress=True, check="full").folder)  # files proven first
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = new_run_folder(project_runs(args.config) / Path(args.config).stem)
    (out / "config.yaml").write_text(dump_train_config(config), encoding="utf-8")
    out = _shown(out)
    selection = stage(config.stage).selection_metric
    console.print(f"stage {config.stage}: {len(data.train)} train rows, {len(data.val)} validation rows -> {out}",
                  markup=False, highlight=False, soft_wrap=True)

    with Progress(TextColumn("[bold]stage {task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("train", total=None, stage=config.stage, status="")

        def on_step(step: int, max_steps: int) -> None:
            progress.update(task, completed=step, total=max_steps)

        def report(step: int, metrics: dict[str, float]) -> None:
            train_loss = f"train_loss {metrics['train_loss']:.4g}  " if "train_loss" in metrics else "untrained  "
            status = f"{train_loss}val_loss {metrics['val_loss']:.4g}  {selection} {metrics[selection]:.4f}"
            progress.update(task, status=status)
            progress.console.print(f"step {step}: {status}")

        result = train_stage(config, data, report=report, checkpoint_dir=out, on_step=on_step)

    summary = {
        "stage": result.stage, "steps_done": result.steps_done, "max_steps": result.max_steps,
        "stopped_early": result.stopped_early, "stop_reason": result.stop_reason,
        "final_metrics": result.final_metrics, "best_metrics": result.best_metrics, "best_step": result.best_step,
        "history": [{"step": step, "metrics": metrics} for step, metrics in result.history],
        "wall_time_s": result.wall_time_s, "device": result.device, "samples_per_s": result.samples_per_s,
        "checkpoint": result.checkpoint, "config": to_dict(config),
    }
    (out / "metrics.json").write_text(json.dumps(finite_or_none(summary), indent=2) + "\n", encoding="utf-8")
    console.print(_metrics_table(f"step {result.steps_done}; best {selection} at step {result.best_step}",
                                 result.final_metrics, result.best_metrics))
    if result.stop is not None:
        console.print(f"[yellow]stopped early: {result.stop.reason} ({result.stop.detail})[/yellow]")
    console.print(f"{result.samples_per_s:,.0f} samples/s on {result.device}")
    console.print(f"wrote {out}: checkpoint.pt, metrics.json, config.yaml", markup=False, highlight=False,
                  soft_wrap=True)
    return 1 if result.stop_reason == "nan_loss" else 0
