"""``sweep train CONFIG.yaml [--out DIR] [--set key=value ...]``: train one configuration of one stage.

Writes ``OUT/checkpoint.pt``, ``OUT/metrics.json`` (final and best metrics, history, stop reason,
config) and ``OUT/config.yaml`` (the resolved config, overrides applied). OUT defaults to
``runs/<config file stem>``.
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
                       help="where the checkpoint and metrics.json go (default runs/<config name>)")
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

    from maou.data.resolve import dataset_of
    from maou.stages import stage
    from maou.strict import to_dict
    from maou.trainer.config import dump_train_config
    from maou.trainer.loop import train_stage
    from maou.trainer.result import finite_or_none
    from maou.trainer.tensors import load_stage_data

    config = resolve_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    console = Console()
    data = load_stage_data(config.stage, dataset_of(config, progress=True, check="full")[0])  # files proven first
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_train_config(config), encoding="utf-8")
    selection = stage(config.stage).selection_metric
    console.print(f"stage {config.stage}: {len(data.train)} train rows, {len(data.val)} validation rows -> {out}")

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
    console.print(f"{result.samples_per_s:,.0f} samples/s on {result.device}; wrote {out}/checkpoint.pt, "
                  f"metrics.json, config.yaml")
    return 1 if result.stop_reason == "nan_loss" else 0
