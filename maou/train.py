"""Train one stage: one flat loop (cleanrl style), metrics out through a callback.

``train_stage(config, data, report=...)`` evaluates on the validation split every
``config.eval_every`` optimizer steps and at the end (and, with ``config.eval_at_start``, the
untrained model as step 0, without ``train_loss``), and calls ``report(step, metrics)``; when
``report`` returns a string the run stops with it as ``stop_reason`` (that is how a sweep prunes).
A NaN or infinite training loss ends the run with ``stop_reason == "nan_loss"`` after one last
report whose ``train_loss`` is NaN. This module never imports Optuna or Ray.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from maou.config import OptimConfig, TrainConfig
from maou.data.tensors import StageData
from maou.errors import UserError
from maou.losses import build_loss
from maou.metrics import SELECTION_METRICS, evaluate, reference_of
from maou.models import StageModel, build_model
from maou.strict import to_dict

Report = Callable[[int, dict[str, float]], "str | None"]
CHECKPOINT_NAME = "checkpoint.pt"
NAN_LOSS = "nan_loss"


@dataclass
class StageResult:
    stage: int
    steps_done: int
    max_steps: int
    stopped_early: bool
    stop_reason: str | None
    final_metrics: dict[str, float]
    #: Metrics at the evaluation with the best selection metric (``SELECTION_METRICS``).
    best_metrics: dict[str, float]
    best_step: int
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    wall_time_s: float = 0.0
    device: str = "cpu"
    #: Training samples per second of training time (evaluations excluded).
    samples_per_s: float = 0.0
    checkpoint: str | None = None
    #: Share of training time the host spent taking batches (index + gather).
    data_wait_share: float = 0.0


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


def total_steps(config: TrainConfig, train_rows: int) -> int:
    """``max_steps``, or ``epochs`` converted with the training-set size (ceil per epoch)."""
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * math.ceil(train_rows / config.batch_size)))


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


def load_backbone(model: StageModel, path: str | Path, config: TrainConfig) -> None:
    """Initialise ``model.backbone`` from an earlier stage's checkpoint (heads stay fresh)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"init_from: no checkpoint at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    saved = checkpoint.get("config", {}).get("model", {})
    mine = to_dict(config.model)
    for key in ("arch", "blocks", "channels"):
        if key in saved and saved[key] != mine[key]:
            raise UserError(
                f"init_from {path}: its backbone is {saved.get('arch')} with {saved.get('blocks')} blocks x "
                f"{saved.get('channels')} channels, this config's is {mine['arch']} with {mine['blocks']} "
                f"blocks x {mine['channels']} channels (model.{key} differs)")
    try:
        model.backbone.load_state_dict(checkpoint["backbone"])
    except (KeyError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise UserError(f"init_from {path}: the backbone weights do not fit this model ({first_line})") from None


def save_checkpoint(path: Path, model: StageModel, config: TrainConfig, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"stage": config.stage, "step": step, "config": to_dict(config),
                "backbone": {k: v.cpu() for k, v in model.backbone.state_dict().items()},
                "heads": {k: v.cpu() for k, v in model.heads.state_dict().items()}}, path)


def train_stage(config: TrainConfig, data: StageData, report: Report | None = None,
                checkpoint_dir: str | Path | None = None,
                on_step: Callable[[int, int], None] | None = None) -> StageResult:
    """Train ``config.stage`` on ``data``; ``on_step(step, max_steps)`` after every optimizer step."""
    started = time.perf_counter()
    if data.stage != config.stage:
        raise ValueError(f"config is for stage {config.stage} but the data is stage {data.stage}")

    # ---- setup: threads, seeds, device, data on the device, model, loss, optimizer ----
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    amp_dtype = torch.bfloat16 if config.amp and device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train = data.train.to(device)
    val = train if data.val is data.train else data.val.to(device)
    if 0 < config.eval_rows < len(val):  # a fixed subset, the same for every seed and trial
        keep = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[: config.eval_rows]
        val = val.subset(keep.sort().values.to(device))
    reference = reference_of(train.targets)

    model = build_model(config)
    if config.init_from:
        load_backbone(model, config.init_from, config)
    model.to(device)
    if config.freeze_backbone:
        model.backbone.requires_grad_(False)
    loss_fn = build_loss(config.stage, config.loss).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    o = config.optim
    if o.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay,
                                      fused=True if device.type == "cuda" else None)

    rows = len(train)
    batch_size = min(config.batch_size, rows)
    max_steps = total_steps(config, rows)
    eval_batch = max(config.batch_size, 256)
    selection, direction = SELECTION_METRICS[config.stage]
    generator = torch.Generator().manual_seed(config.seed)

    # ---- the loop ----
    model.train()
    if config.freeze_backbone:
        model.backbone.eval()  # frozen BatchNorm statistics too
    order, cursor = torch.empty(0, dtype=torch.long), rows
    running = RunningLoss(device)
    history: list[tuple[int, dict[str, float]]] = []
    best_metrics: dict[str, float] | None = None
    best_step, stop_reason, step, samples = 0, None, 0, 0
    data_time = eval_time = 0.0
    loop_started = time.perf_counter()

    def evaluate_and_report(at: int, metrics: dict[str, float]) -> str | None:
        """Validation metrics into ``metrics``, onto the history, out through ``report``: its stop reason."""
        metrics.update(evaluate(model, loss_fn, val, reference, eval_batch, amp_dtype))
        history.append((at, metrics))
        reason = report(at, metrics) if report is not None else None
        return str(reason) if reason else None

    if config.eval_at_start:  # step 0: the untrained model, the baseline divergence is measured from
        eval_started = time.perf_counter()
        stop_reason = evaluate_and_report(0, {"lr": learning_rate(o, 0, max_steps), "epoch": 0.0})
        eval_time += time.perf_counter() - eval_started
    while step < max_steps and stop_reason is None:
        fetch_started = time.perf_counter()
        if cursor >= rows:  # a new epoch: a fresh seeded permutation, on the device
            order, cursor = torch.randperm(rows, generator=generator).to(device), 0
        index = order[cursor: cursor + batch_size]
        cursor += batch_size
        board, hand, targets = train.batch(index)
        data_time += time.perf_counter() - fetch_started

        lr = learning_rate(o, step, max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(board, hand)
        loss = loss_fn(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        optimizer.step()
        step += 1
        samples += index.shape[0]
        running.add(loss)
        if on_step is not None:
            on_step(step, max_steps)

        if step % config.eval_every and step < max_steps and not running.non_finite:
            continue
        # ---- evaluation: validation metrics, report, stop? ----
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # queued training work counts as training time
        eval_started = time.perf_counter()
        train_loss = running.mean_and_reset()
        metrics = {"train_loss": train_loss, "lr": lr, "epoch": samples / rows}
        reason = evaluate_and_report(step, metrics)
        value = metrics.get(selection, float("nan"))  # best: over trained steps (step 0 excluded)
        if math.isfinite(value) and (best_metrics is None or (
                value > best_metrics[selection] if direction == "maximize" else value < best_metrics[selection])):
            best_metrics, best_step = metrics, step
        stop_reason = NAN_LOSS if not math.isfinite(train_loss) else reason
        eval_time += time.perf_counter() - eval_started

    # ---- wrap up ----
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = max(time.perf_counter() - loop_started - eval_time, 1e-9)
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME
        save_checkpoint(checkpoint, model, config, step)
    final_step, final_metrics = history[-1]
    if best_metrics is None:
        best_metrics, best_step = final_metrics, final_step
    return StageResult(
        stage=config.stage, steps_done=step, max_steps=max_steps, stopped_early=stop_reason is not None,
        stop_reason=stop_reason, final_metrics=final_metrics, best_metrics=best_metrics, best_step=best_step,
        history=history, wall_time_s=time.perf_counter() - started, device=str(device),
        samples_per_s=samples / train_time, checkpoint=str(checkpoint) if checkpoint else None,
        data_wait_share=data_time / train_time)
