"""One trial's training run, as a plain function: resolved config in, result summary out.

This is what every executor runs (in process locally, in a worker process under Ray). It knows
nothing of Optuna or Ray: progress goes out through ``report(step, metrics) -> stop reason``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from maou.config import TrainConfig, train_config_from_dict

Report = Callable[[int, dict[str, float]], "str | None"]


@dataclass
class JobResult:
    """What a finished training run hands back to the driver (JSON-able, crosses processes)."""

    final_metrics: dict[str, float]
    best_metrics: dict[str, float]
    best_step: int
    steps_done: int
    max_steps: int
    stop_reason: str | None
    wall_time_s: float
    device: str
    checkpoint: str | None
    dataset_hash: str | None
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


@lru_cache(maxsize=4)
def _load_data(stage: int, dataset_dir: str, dataset_hash: str | None):
    from maou.data.tensors import load_stage_data

    return load_stage_data(stage, Path(dataset_dir))


def dataset_dir_and_hash(config: TrainConfig) -> tuple[str | None, str | None]:
    """Build the datasets if needed (stages 2 and 3) and return their folder and content hash."""
    if config.stage == 1:
        return None, None
    from maou.data.build import ensure_datasets

    directory = ensure_datasets(config.data, progress=False)
    manifest = directory / "manifest.json"
    content_hash = json.loads(manifest.read_text()).get("content_hash") if manifest.is_file() else None
    return str(directory), content_hash


def run_job(config_dict: dict[str, Any], report: Report, checkpoint_dir: str | None) -> JobResult:
    """Train one configuration; ``report`` is called at every evaluation and may stop the run."""
    from maou.train import train_stage

    config = train_config_from_dict(config_dict)
    dataset_dir, dataset_hash = dataset_dir_and_hash(config)
    data = _load_data(config.stage, dataset_dir or "", dataset_hash)
    started = time.perf_counter()
    result = train_stage(config, data, report=report, checkpoint_dir=checkpoint_dir)
    return JobResult(
        final_metrics=_clean(result.final_metrics),
        best_metrics=_clean(result.best_metrics),
        best_step=int(result.best_step),
        steps_done=int(result.steps_done),
        max_steps=int(result.max_steps),
        stop_reason=result.stop_reason,
        wall_time_s=time.perf_counter() - started,
        device=str(result.device),
        checkpoint=result.checkpoint,
        dataset_hash=dataset_hash,
        history=[(int(s), _clean(m)) for s, m in result.history],
    )


def _clean(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
