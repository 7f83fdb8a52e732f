"""Train one stage: one flat loop (cleanrl style), metrics out through a callback.

``train_stage(config, data, report=...)`` evaluates on the validation split every
``config.budget.eval_every`` optimizer steps and at the end (and, with ``config.eval_at_start``,
the untrained model as step 0, without ``train_loss``), and calls ``report(step, metrics)``; when
``report`` returns a :class:`~maou.trainer.result.Stop` the run ends with it (that is how a sweep
prunes). A NaN or infinite training loss ends the run with a ``nan_loss`` stop after one last
report whose ``train_loss`` is NaN. This package never imports Optuna or Ray.

The loop is made of three public parts, so that what times a training outside it
(:mod:`maou.sweep.run.measure`) times the loop's own steps: :func:`set_up` (a run's model,
optimizer and data on its device: a :class:`TrainingRun`), :func:`training_batches` (its batches)
and :func:`optimizer_step` (one step).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maou.errors import UserError
from maou.stages import TRAIN_METRICS, stage
from maou.trainer.checkpoint import CHECKPOINT_NAME, load_backbone, save_checkpoint
from maou.trainer.config import OptimConfig, TrainConfig
from maou.trainer.metrics import Reference, evaluate
from maou.trainer.models import StageModel, build_model
from maou.trainer.prefetch import batch_indices, resolve_shuffle
from maou.trainer.result import NAN_LOSS, History, Report, ResourceExhausted, Stop, TrainResult
from maou.trainer.tasks import Task, task_for
from maou.trainer.tensors import Rows, StageData

OnStep = Callable[[int, int], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available (use device: auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def learning_rate(optim: OptimConfig, step: int, total: int) -> float:
    """The lr of optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_lr_ratio * lr``."""
    warmup = int(optim.warmup_fraction * total)
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = optim.min_lr_ratio
    return optim.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class RunningLoss:
    """Mean training loss since the last read, without stalling the GPU.

    On CPU each value is read at once. On CUDA the loss is copied to the host asynchronously and
    read one step later (after the next step is queued), so a NaN is seen at most one step late.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: tuple[torch.Tensor, torch.cuda.Event] | None = None
        self.total, self.count, self.non_finite = 0.0, 0, False

    def _take(self, value: float) -> None:
        self.total += value
        self.count += 1
        self.non_finite |= not math.isfinite(value)

    def _flush(self) -> None:
        if self.pending is not None:
            host, event = self.pending
            self.pending = None
            event.synchronize()
            self._take(float(host))

    def add(self, loss: torch.Tensor) -> None:
        if not self.cuda:
            self._take(float(loss.detach()))
            return
        self._flush()
        event = torch.cuda.Event()
        host = loss.detach().float().to("cpu", non_blocking=True)
        event.record()
        self.pending = (host, event)

    def mean_and_reset(self) -> float:
        """Mean since the previous call (NaN when any value was NaN or infinite)."""
        self._flush()
        mean = float("nan") if self.non_finite or self.count == 0 else self.total / self.count
        self.total, self.count, self.non_finite = 0.0, 0, False
        return mean


@dataclass
class TrainingRun:
    """Everything a run trains with, on its device (:func:`set_up`)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    train: Rows
    #: What the evaluations during training see: the whole validation split, or ``eval_rows`` of it
    val: Rows
    #: The whole validation split: the final (and best) metrics are computed on it
    val_full: Rows
    task: Task
    model: StageModel
    loss_fn: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    reference: Reference


def set_up(config: TrainConfig, data: StageData) -> TrainingRun:
    """A run of ``config`` on ``data`` ready to train: threads and seeds set, the splits on the
    device (the evaluations' subset chosen), the model (``init_from`` loaded, in training mode, a
    frozen backbone's BatchNorm statistics too), its optimizer, loss and the reference constants."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    amp_dtype = torch.bfloat16 if config.amp and device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train = data.train.to(device)
    val = val_full = train if data.val is data.train else data.val.to(device)
    if 0 < config.eval_rows < len(val):  # a fixed subset, the same for every seed and trial
        keep = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[: config.eval_rows]
        val = val.subset(keep.sort().values.to(device))
    task = task_for(config)
    model = build_model(config)
    if config.init_from:
        load_backbone(model, config.init_from, config)
    model.to(device)
    model.train()
    if config.freeze_backbone:
        model.backbone.requires_grad_(False)
        model.backbone.eval()  # frozen BatchNorm statistics too
    params = [p for p in model.parameters() if p.requires_grad]
    o = config.optim
    optimizer: torch.optim.Optimizer
    if o.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay,
                                      fused=True if device.type == "cuda" else None)
    return TrainingRun(device, amp_dtype, train, val, val_full, task, model, task.loss().to(device), params,
                       optimizer, _reference(task, train))


def _reference(task: Task, train: Rows) -> Reference:
    """The task's reference constants of the training split, computed once per split and task."""
    key = ("reference", type(task).__qualname__)
    if key not in train.memo:
        train.memo[key] = task.reference(train.iter_targets())
    return train.memo[key]


class _Evaluations:
    """The run's evaluations: metrics onto the history, out through ``report``, the best one kept
    (and, when evaluations see a subset of the validation split, the best model's weights, so the
    best metrics can be computed on the whole split at the end)."""

    def __init__(self, run: TrainingRun, config: TrainConfig, report: Report | None, best_by: tuple[str, str]) -> None:
        self.run, self.report = run, report
        self.batch_size = max(config.batch_size, 256)
        self.selection, self.maximize = best_by[0], best_by[1] == "maximize"
        self.history: History = []
        self.best: tuple[int, dict[str, float]] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.seconds = 0.0

    def evaluate(self, split: Rows) -> dict[str, float]:
        r = self.run
        return evaluate(r.model, r.task, r.loss_fn, split, r.reference, self.batch_size, r.amp_dtype)

    def __call__(self, step: int, metrics: dict[str, float]) -> Stop | None:
        started = time.perf_counter()
        metrics.update(self.evaluate(self.run.val))
        self.history.append((step, metrics))
        value = metrics.get(self.selection, math.nan)  # best: over trained steps (step 0 excluded)
        if step > 0 and math.isfinite(value) and (self.best is None or (
                value > self.best[1][self.selection] if self.maximize else value < self.best[1][self.selection])):
            self.best = (step, metrics)
            if self.run.val is not self.run.val_full:
                self.best_state = {k: v.detach().clone() for k, v in self.run.model.state_dict().items()}
        stop = self.report(step, metrics) if self.report is not None else None
        self.seconds += time.perf_counter() - started
        return stop

    def on_full_validation(self) -> tuple[dict[str, float], tuple[int, dict[str, float]] | None]:
        """The final metrics and the best evaluation, computed again on the whole validation split
        when the evaluations saw a subset (the model is left as it was trained to the end)."""
        final_step, final_metrics = self.history[-1]
        if self.run.val is self.run.val_full:
            return final_metrics, self.best
        final = {**_train_side(final_metrics), **self.evaluate(self.run.val_full)}
        best = self.best
        if best is not None and best[0] == final_step:  # the last evaluation was the best: the same weights
            best = (best[0], final)
        elif best is not None and self.best_state is not None:
            trained = {k: v.detach().clone() for k, v in self.run.model.state_dict().items()}
            self.run.model.load_state_dict(self.best_state)
            best = (best[0], {**_train_side(best[1]), **self.evaluate(self.run.val_full)})
            self.run.model.load_state_dict(trained)
        return final, best


def _train_side(metrics: dict[str, float]) -> dict[str, float]:
    """The training-side numbers of an evaluation (they do not depend on the validation rows)."""
    return {k: v for k, v in metrics.items() if k in TRAIN_METRICS}


def train_stage(config: TrainConfig, data: StageData, report: Report | None = None,
                checkpoint_dir: str | Path | None = None, on_step: OnStep | None = None,
                best_by: tuple[str, str] | None = None) -> TrainResult:
    """Train ``config.stage`` on ``data``; ``on_step(step, max_steps)`` after every optimizer step.
    ``best_by`` (metric, direction) picks the best evaluation (default: the stage's selection
    metric). The final and best metrics are computed on the whole validation split."""
    started = time.perf_counter()
    if data.stage != config.stage:
        raise ValueError(f"config is for stage {config.stage} but the data is stage {data.stage}")
    rows = len(data.train)
    if config.batch_size > rows:
        raise UserError(f"batch_size {config.batch_size} is larger than the training split ({rows} rows)")
    run = set_up(config, data)
    batch_size = config.batch_size
    max_steps = config.budget.total_steps(rows, config.batch_size)
    info = stage(config.stage)
    evaluations = _Evaluations(run, config, report, best_by or (info.selection_metric, info.selection_direction))
    batches = training_batches(run, config, rows, batch_size, max_steps)
    running = RunningLoss(run.device)
    stop: Stop | None = None
    step = samples = 0
    data_time = 0.0
    loop_started = time.perf_counter()
    try:
        if config.eval_at_start:  # step 0: the untrained model, the baseline divergence is measured from
            stop = evaluations(0, {"lr": learning_rate(config.optim, 0, max_steps), "epoch": 0.0})
        while step < max_steps and stop is None:
            fetch_started = time.perf_counter()
            board, hand, targets = next(batches)
            data_time += time.perf_counter() - fetch_started
            lr = learning_rate(config.optim, step, max_steps)
            running.add(optimizer_step(run, config, lr, board, hand, targets))
            step += 1
            samples += board.shape[0]
            if on_step is not None:
                on_step(step, max_steps)
            if step % config.budget.eval_every and step < max_steps and not running.non_finite:
                continue
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)  # queued training work counts as training time
            train_loss = running.mean_and_reset()
            stop = evaluations(step, {"train_loss": train_loss, "lr": lr, "epoch": samples / rows})
            if not math.isfinite(train_loss):
                stop = Stop(NAN_LOSS, f"training loss became {train_loss} between evaluations", step)
    except torch.OutOfMemoryError:
        raise ResourceExhausted(f"CUDA out of memory at batch_size {config.batch_size} on {run.device}: lower "
                                f"batch_size, or run fewer trials on the GPU at once (executor.gpus_per_trial, "
                                f"max_concurrent), then resume") from None
    finally:
        batches.close()
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    train_time = max(time.perf_counter() - loop_started - evaluations.seconds, 1e-9)
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if checkpoint is not None:
        save_checkpoint(checkpoint, run.model, config, step)
    final_step = evaluations.history[-1][0]
    final_metrics, best = evaluations.on_full_validation()
    best_step, best_metrics = best or (final_step, final_metrics)
    return TrainResult(
        stage=config.stage, steps_done=step, max_steps=max_steps, stop=stop, final_metrics=final_metrics,
        best_metrics=best_metrics, best_step=best_step, history=evaluations.history,
        wall_time_s=time.perf_counter() - started, device=str(run.device), samples_per_s=samples / train_time,
        checkpoint=str(checkpoint) if checkpoint else None, data_wait_share=data_time / train_time,
        dataset_hash=data.content_hash)


def training_batches(run: TrainingRun, config: TrainConfig, rows: int, batch_size: int, max_steps: int) -> Any:
    """The run's ``max_steps`` batches of ``batch_size`` rows: every epoch a fresh seeded order of the
    rows (``config.loader.shuffle``), prepared ahead in a thread (a mapped split) or taken in place
    (in memory); ``close()`` it."""
    generator = torch.Generator().manual_seed(config.seed)
    shuffle = resolve_shuffle(config.loader.shuffle, run.train)
    return run.train.stream(batch_indices(rows, batch_size, max_steps, generator, shuffle),
                            config.loader.prefetch_batches)


def optimizer_step(run: TrainingRun, config: TrainConfig, lr: float, board: torch.Tensor, hand: torch.Tensor,
                   targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimizer step of ``run`` on a batch at learning rate ``lr``; returns the (device) loss."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        outputs = run.model(board, hand)
    loss = run.loss_fn(outputs, targets)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.params, config.optim.grad_clip)
    run.optimizer.step()
    return loss


__all__ = ["RunningLoss", "TrainingRun", "learning_rate", "optimizer_step", "resolve_device", "seed_everything",
           "set_up", "train_stage", "training_batches"]
