"""A winning training config as upstream ``maou learn-model`` flags, faithfully.

Upstream (the ``maou`` trainer) differs from this trainer in ways the flags must absorb:

* ``--stage N`` is required: upstream trains Stage 3 by default, and would ignore ``--stage2-*``.
* Stages 1 and 2 take ``--stageN-batch-size``, ``--stageN-learning-rate`` and
  ``--stageN-max-epochs``; Stage 3 takes ``--batch-size``, ``--learning-ratio`` and ``--epoch``.
* Upstream multiplies the Stage 1/2 learning rate by ``sqrt(B / 256)`` above batch 256; this
  trainer uses the rate as given, so the flag carries ``lr / sqrt(B / 256)`` there (the rate
  upstream then trains with is the winner's).
* The schedule is explicit: this trainer warms up linearly, then decays on a cosine (or keeps a
  constant rate: ``warmup_fraction 0`` with ``min_lr_ratio 1``); upstream's Stage 1/2 default
  ``auto`` would pick by batch size, so ``--stage12-lr-scheduler`` is always written.
* Stage 3 policy targets here are move frequencies: upstream's ``--policy-target-mode move-label``
  (its default is ``win-rate``).
* ``init_from`` becomes ``--resume-backbone-from`` with the real checkpoint path.

Keys upstream cannot express are returned with the reason, never dropped: :func:`render` lists
them under the command. Run mechanics (device, threads, seed, evaluation, data) are no
hyperparameters and are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from maou.stages import resolve_reference
from maou.stages import stage as stage_info
from maou.strict import lookup
from maou.trainer.config import TrainConfig

COMMAND = "maou learn-model"
_ARCHITECTURES = {"resnet": "resnet", "mlp_mixer": "mlp-mixer"}


@dataclass
class UpstreamArgs:
    stage: int
    flags: list[tuple[str, str | None]] = field(default_factory=list)
    #: (key, value, why upstream cannot express it)
    unexpressed: list[tuple[str, Any, str]] = field(default_factory=list)

    def add(self, flag: str, value: Any = None) -> None:
        self.flags.append((flag, None if value is None else _text(value)))

    def cannot(self, key: str, value: Any, reason: str) -> None:
        self.unexpressed.append((key, value, reason))


def _text(value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 12))
    return str(value)


def upstream_args(config: TrainConfig) -> UpstreamArgs:
    """The flags that run ``config`` in upstream's ``maou learn-model``, and what they cannot say."""
    out = UpstreamArgs(config.stage)
    out.add("--stage", config.stage)
    out.add("--model-architecture", _ARCHITECTURES[config.model.arch])
    for key in ("model.blocks", "model.channels"):
        out.cannot(key, lookup(config, key), "upstream's backbones fix their own depth and width")
    _budget_and_batch(config, out)
    _optimizer(config, out)
    _schedule(config, out)
    _stage_loss_and_head(config, out)
    if config.init_from:
        out.add("--resume-backbone-from", config.init_from)
        out.cannot("init_from", config.init_from, "a maou-sweep checkpoint (a torch dict with 'backbone'); "
                   "upstream loads its own backbone parameter files: convert it first")
    if config.freeze_backbone:
        out.add("--freeze-backbone")
    return out


def _budget_and_batch(config: TrainConfig, out: UpstreamArgs) -> None:
    flags = stage_info(config.stage).upstream
    batch, lr = config.batch_size, config.optim.lr
    out.add(flags.batch, batch)
    above = flags.lr_scaled_above_batch
    scale = math.sqrt(batch / above) if above is not None and batch > above else 1.0
    out.add(flags.learning_rate, lr / scale)
    epochs = config.budget.epochs
    if epochs is None:
        out.cannot("budget.max_steps", config.budget.max_steps, "upstream trains whole epochs, not a step count")
        return
    whole = math.ceil(epochs - 1e-9)
    out.add(flags.epochs, whole)
    if whole != epochs:
        out.cannot("budget.epochs", epochs, f"upstream trains whole epochs: {whole} written")


def _optimizer(config: TrainConfig, out: UpstreamArgs) -> None:
    o = config.optim
    out.add("--optimizer", o.name)
    if o.name == "sgd":
        out.add("--momentum", o.momentum)
    out.cannot("optim.weight_decay", o.weight_decay, "no upstream flag (upstream's optimizers set their own)")
    if o.grad_clip:
        out.cannot("optim.grad_clip", o.grad_clip, "no upstream flag for gradient-norm clipping")


def _schedule(config: TrainConfig, out: UpstreamArgs) -> None:
    o, flags = config.optim, stage_info(config.stage).upstream
    constant = o.warmup_fraction == 0 and o.min_lr_ratio == 1.0
    if flags.scheduler_can_be_constant:
        out.add(flags.scheduler, "none" if constant else "Warmup+CosineDecay")
    elif constant:
        out.cannot("optim.min_lr_ratio", o.min_lr_ratio, f"a constant rate: upstream's Stage {config.stage} "
                   "always schedules")
    else:
        out.add(flags.scheduler, "Warmup+CosineDecay")
    if not constant:
        out.cannot("optim.warmup_fraction", o.warmup_fraction, "upstream's Warmup+CosineDecay sets its own warmup")
        if o.min_lr_ratio:
            out.cannot("optim.min_lr_ratio", o.min_lr_ratio, "upstream's cosine decays to zero")


def _stage_loss_and_head(config: TrainConfig, out: UpstreamArgs) -> None:
    resolve_reference(stage_info(config.stage).upstream.loss_and_head)(config, out)


def stage1_flags(config: TrainConfig, out: UpstreamArgs) -> None:
    out.add("--stage1-pos-weight", config.loss.pos_weight)


def stage2_flags(config: TrainConfig, out: UpstreamArgs) -> None:
    loss, model = config.loss, config.model
    for flag, value in (("--stage2-pos-weight", loss.pos_weight), ("--stage2-gamma-pos", loss.gamma_pos),
                        ("--stage2-gamma-neg", loss.gamma_neg), ("--stage2-clip", loss.asl_clip),
                        ("--stage2-head-dropout", model.dropout)):
        out.add(flag, value)
    if model.hidden_dim is not None:
        out.add("--stage2-hidden-dim", model.hidden_dim)


def stage3_flags(config: TrainConfig, out: UpstreamArgs) -> None:
    loss = config.loss
    out.add("--policy-loss-ratio", loss.policy_loss_ratio)
    out.add("--value-loss-ratio", loss.value_loss_ratio)
    out.add("--policy-target-mode", "move-label")  # targets here: move frequencies
    if loss.value_loss != "bce":
        out.cannot("loss.value_loss", loss.value_loss, "upstream's value loss is BCE on the logit")


def render(args: UpstreamArgs) -> str:
    """best-args.txt: the command on one line, then what it cannot express, one ``#`` line each."""
    parts = [COMMAND] + [flag if value is None else f"{flag} {value}" for flag, value in args.flags]
    lines = [" ".join(parts)]
    if args.unexpressed:
        lines.append("# not expressible upstream (listed so that nothing is dropped silently):")
        lines += [f"#   {key} = {value}: {reason}" for key, value, reason in args.unexpressed]
    return "\n".join(lines) + "\n"


__all__ = ["COMMAND", "UpstreamArgs", "render", "stage1_flags", "stage2_flags", "stage3_flags", "upstream_args"]
