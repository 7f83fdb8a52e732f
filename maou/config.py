"""The training configuration: frozen, typed, strict (unknown keys rejected with their path).

One :class:`TrainConfig` describes one training run of one stage. Sweeps override its leaves by
dotted key (``loss.gamma_neg``, ``optim.lr``); :func:`maou.strict.with_overrides` re-validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from maou.strict import ConfigError, from_dict, require, to_dict

Stage = Literal[1, 2, 3]


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["resnet", "mlp_mixer"] = "resnet"
    blocks: int = 2
    channels: int = 32
    #: Stage 2 head: Linear(D, H) -> GELU -> Dropout -> Linear(H, 1496) when set, else Linear(D, 1496).
    hidden_dim: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(self.blocks >= 1, "blocks", "must be >= 1")
        require(self.channels >= 1, "channels", "must be >= 1")
        require(self.hidden_dim is None or self.hidden_dim >= 1, "hidden_dim", "must be >= 1 or null")
        require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class LossConfig:
    #: Stage 1 and Stage 2 (BCE branch): weight of positive targets in BCEWithLogits.
    pos_weight: float = 1.0
    #: Stage 2 asymmetric loss; all three zero means plain BCEWithLogits.
    gamma_pos: float = 0.0
    gamma_neg: float = 0.0
    asl_clip: float = 0.0
    #: Stage 3 weights of the policy and value terms.
    policy_loss_ratio: float = 1.0
    value_loss_ratio: float = 1.0
    #: Stage 3 value loss: ``bce`` on the logit (default) or ``mse`` on a sigmoid output.
    value_loss: Literal["bce", "mse"] = "bce"

    def __post_init__(self) -> None:
        require(self.pos_weight > 0, "pos_weight", "must be > 0")
        require(self.gamma_pos >= 0, "gamma_pos", "must be >= 0")
        require(self.gamma_neg >= 0, "gamma_neg", "must be >= 0")
        require(0.0 <= self.asl_clip < 1.0, "asl_clip", "must be in [0, 1)")
        require(self.policy_loss_ratio >= 0, "policy_loss_ratio", "must be >= 0")
        require(self.value_loss_ratio >= 0, "value_loss_ratio", "must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    #: Linear warmup over this fraction of the total steps, then cosine decay to ``min_lr_ratio * lr``.
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0
    #: Clip the global gradient norm to this value; 0 disables clipping.
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", "must be > 0")
        require(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(0.0 <= self.warmup_fraction < 1.0, "warmup_fraction", "must be in [0, 1)")
        require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be in [0, 1]")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables)")


@dataclass(frozen=True)
class DataConfig:
    #: Game records (files or folders: CSA, KIF, .gz, HCPE .feather) the datasets are built from.
    games: tuple[str, ...] = ("data/games",)
    #: Where the built Stage 1/2/3 datasets live; rebuilt when the games or split change.
    dir: str = "data/build"
    #: Fraction of games held out for validation (split by game, seeded).
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        require(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    stage: Stage
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 64
    #: Training budget in optimizer steps. ``epochs`` (if set) is converted to steps at run time.
    max_steps: int | None = 200
    epochs: float | None = None
    #: Evaluate on the validation set every this many optimizer steps (and at the end).
    eval_every: int = 50
    #: Also evaluate the untrained model, as step 0: the reference a diverging run is measured
    #: against (a run that blows up before its first scheduled evaluation is otherwise its own best).
    eval_at_start: bool = True
    seed: int = 0
    #: ``auto`` picks CUDA when available, else CPU.
    device: str = "auto"
    #: torch intra-op threads; 0 keeps torch's default.
    threads: int = 1
    #: Mixed precision (bf16 autocast) on CUDA; ignored on CPU.
    amp: bool = True
    #: Checkpoint of an earlier stage whose backbone initialises this one (heads stay fresh).
    init_from: str | None = None
    freeze_backbone: bool = False
    #: Validation rows to evaluate on (a fixed, seeded subset when the split is larger); 0 = all.
    eval_rows: int = 0

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.max_steps is not None or self.epochs is not None, "max_steps",
                "set max_steps or epochs")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1")
        require(self.epochs is None or self.epochs > 0, "epochs", "must be > 0")
        require(self.eval_every >= 1, "eval_every", "must be >= 1")
        require(self.threads >= 0, "threads", "must be >= 0")
        require(self.eval_rows >= 0, "eval_rows", "must be >= 0")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                "device", "must be auto, cpu or cuda[:N]")


def train_config_from_dict(data: dict[str, Any], path: str = "") -> TrainConfig:
    return from_dict(TrainConfig, data, path)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a training config YAML file (``yaml.safe_load``), strictly."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return train_config_from_dict(data)


def dump_train_config(config: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
