"""``sweep train CONFIG.yaml [--out DIR] [--set key=value ...]``: train one configuration of one stage.

Writes ``OUT/checkpoint.pt``, ``OUT/metrics.json`` (final and best metrics, history, stop reason,
config) and ``OUT/config.yaml`` (the resolved config, overrides applied). OUT defaults to
``runs/<config file stem>``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from maou.config import TrainConfig, dump_train_config, load_train_config
from maou.errors import UserError
from maou.strict import ConfigError, to_dict, with_overrides


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.001", "model.hidden_dim=null"]`` -> ``{"optim.lr": 0.001, "model.hidden_dim": None}``."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: not a YAML value ({exc.problem})", key.strip()) from None
    return overrides


def resolve_config(config_path: str | Path, overrides: list[str]) -> TrainConfig:
    config = load_train_config(config_path)
    return with_overrides(config, parse_overrides(overrides)) if overrides else config


def load_data(config: TrainConfig):
    """Stage 1 rows, or the stage 2/3 datasets built (if needed) from ``config.data``."""
    from maou.data.tensors import load_stage_data

    if config.stage == 1:
        return load_stage_data(1)
    try:
        from maou.data.build import ensure_datasets
    except ImportError as exc:
        raise UserError(f"stage {config.stage} needs datasets, but the dataset builder is unavailable ({exc})") from None
    return load_stage_data(config.stage, ensure_datasets(config.data))


def _finite(value: Any) -> Any:
    """JSON-safe metrics: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _metrics_table(title: str, final: dict[str, float], best: dict[str, float]):
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    table.add_column("metric")
    table.add_column("final", justify="right")
    table.add_column("best", justify="right")
    for key, value in final.items():
        table.add_row(key, f"{value:.6g}", f"{best.get(key, float('nan')):.6g}")
    return table


def cli_train(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from maou.metrics import SELECTION_METRICS
    from maou.train import train_stage

    config = resolve_config(args.config, getattr(args, "overrides", []) or [])
    out = Path(args.out) if getattr(args, "out", None) else Path("runs") / Path(args.config).stem
    console = Console()
    data = load_data(config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_train_config(config), encoding="utf-8")
    selection, _ = SELECTION_METRICS[config.stage]
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
            return None

        result = train_stage(config, data, report=report, checkpoint_dir=out, on_step=on_step)

    summary = {
        "stage": result.stage, "steps_done": result.steps_done, "max_steps": result.max_steps,
        "stopped_early": result.stopped_early, "stop_reason": result.stop_reason,
        "final_metrics": result.final_metrics, "best_metrics": result.best_metrics, "best_step": result.best_step,
        "history": [{"step": step, "metrics": metrics} for step, metrics in result.history],
        "wall_time_s": result.wall_time_s, "device": result.device, "samples_per_s": result.samples_per_s,
        "checkpoint": result.checkpoint, "config": to_dict(config),
    }
    (out / "metrics.json").write_text(json.dumps(_finite(summary), indent=2) + "\n", encoding="utf-8")
    console.print(_metrics_table(f"step {result.steps_done}; best {selection} at step {result.best_step}",
                                 result.final_metrics, result.best_metrics))
    if result.stop_reason:
        console.print(f"[yellow]stopped early: {result.stop_reason}[/yellow]")
    console.print(f"{result.samples_per_s:,.0f} samples/s on {result.device}; wrote {out}/checkpoint.pt, "
                  f"metrics.json, config.yaml")
    return 1 if result.stop_reason == "nan_loss" else 0
