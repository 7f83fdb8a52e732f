"""The training configuration: frozen, typed, strict (unknown keys rejected with their path).

One :class:`TrainConfig` describes one training run of one stage. Sweeps override its leaves by
dotted key (``loss.gamma_neg``, ``optim.lr``); :func:`maou.strict.with_overrides` re-validates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from maou.stages import STAGES
from maou.strict import from_dict, read_yaml_file, require, to_dict


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["resnet", "mlp_mixer"] = "resnet"
    blocks: int = 2
    channels: int = 32
    #: Stage 2 head: Linear(D, H) -> GELU -> Dropout -> Linear(H, 1496) when set, else Linear(D, 1496).
    hidden_dim: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(self, "blocks", 1 <= self.blocks <= 256, "must be in [1, 256]")
        require(self, "channels", 1 <= self.channels <= 4096, "must be in [1, 4096]")
        require(self, "hidden_dim", self.hidden_dim is None or 1 <= self.hidden_dim <= 65536,
                "must be in [1, 65536] or null")
        require(self, "dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)")


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
        require(self, "pos_weight", 0 < self.pos_weight <= 1e6, "must be in (0, 1e6]")
        require(self, "gamma_pos", 0 <= self.gamma_pos <= 100, "must be in [0, 100]")
        require(self, "gamma_neg", 0 <= self.gamma_neg <= 100, "must be in [0, 100]")
        require(self, "asl_clip", 0.0 <= self.asl_clip < 1.0, "must be in [0, 1)")
        require(self, "policy_loss_ratio", 0 <= self.policy_loss_ratio <= 1e6, "must be in [0, 1e6]")
        require(self, "value_loss_ratio", 0 <= self.value_loss_ratio <= 1e6, "must be in [0, 1e6]")


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
        #: above 100 no optimizer here trains: such a value is a typo, not an experiment
        require(self, "lr", 0 < self.lr <= 100, "must be in (0, 100]")
        require(self, "momentum", 0.0 <= self.momentum < 1.0, "must be in [0, 1)")
        require(self, "weight_decay", 0 <= self.weight_decay <= 10, "must be in [0, 10]")
        require(self, "warmup_fraction", 0.0 <= self.warmup_fraction < 1.0, "must be in [0, 1)")
        require(self, "min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "must be in [0, 1]")
        require(self, "grad_clip", 0 <= self.grad_clip <= 1e6, "must be in [0, 1e6] (0 disables)")


@dataclass(frozen=True)
class DataConfig:
    #: Game records (files or folders: CSA, KIF, .gz, HCPE .feather) the datasets are built from.
    games: tuple[str, ...] = ("data/games",)
    #: Where the built Stage 1/2/3 datasets live; rebuilt when the games or split change. Null
    #: (the default): ``data/build/<key>``, a folder of their own for these games and this split.
    dir: str | None = None
    #: Fraction of games held out for validation (split by game, seeded).
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        require(self, "val_fraction", 0.0 < self.val_fraction < 1.0, "must be in (0, 1)")


@dataclass(frozen=True)
class LoaderConfig:
    """How training batches reach the model (never what they hold)."""

    #: Training batches prepared ahead in a background thread (memory-mapped datasets, on CUDA; on
    #: CPU the training thread gathers each batch itself: a thread would compete with torch's).
    prefetch_batches: int = 4
    #: Row order of each epoch: ``full`` (a seeded permutation of every row), ``block`` (blocks of
    #: 4096 consecutive rows in seeded order, shuffled within windows of 16 blocks: mostly
    #: sequential reads, for data larger than memory), ``auto`` (``block`` when the training
    #: split's mapped bytes exceed half of this machine's memory, else ``full``).
    shuffle: Literal["auto", "full", "block"] = "auto"

    def __post_init__(self) -> None:
        require(self, "prefetch_batches", self.prefetch_batches >= 1, "must be >= 1")


@dataclass(frozen=True)
class Budget:
    """How long one run trains: exactly one of ``max_steps`` and ``epochs``; evaluated every
    ``eval_every`` optimizer steps (and at the end)."""

    max_steps: int | None = None
    epochs: float | None = None
    eval_every: int = 50

    def __post_init__(self) -> None:
        require(self, "max_steps", (self.max_steps is None) != (self.epochs is None),
                "set exactly one of budget.max_steps and budget.epochs")
        require(self, "max_steps", self.max_steps is None or 1 <= self.max_steps <= 10**9, "must be in [1, 1e9]")
        require(self, "epochs", self.epochs is None or 0 < self.epochs <= 1e6, "must be in (0, 1e6]")
        require(self, "eval_every", self.eval_every >= 1, "must be >= 1")

    def total_steps(self, train_rows: int, batch_size: int) -> int:
        """Optimizer steps of the run: ``max_steps``, or ``epochs`` of ``ceil(rows / batch)`` steps."""
        if self.max_steps is not None:
            return self.max_steps
        assert self.epochs is not None
        return max(1, math.ceil(self.epochs * math.ceil(train_rows / max(1, min(batch_size, train_rows)))))


def default_budget() -> Budget:
    return Budget(max_steps=200, eval_every=50)


@dataclass(frozen=True)
class TrainConfig:
    #: A registered stage number (:mod:`maou.stages`).
    stage: int
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 64
    budget: Budget = field(default_factory=default_budget)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
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
        require(self, "stage", self.stage in STAGES, f"must be one of {', '.join(map(str, STAGES))}")
        #: the training split bounds it too (a larger batch is refused before training)
        require(self, "batch_size", 1 <= self.batch_size <= 2**24, "must be in [1, 16777216]")
        require(self, "threads", self.threads >= 0, "must be >= 0")
        require(self, "eval_rows", self.eval_rows >= 0, "must be >= 0")
        require(self, "device", self.device in ("auto", "cpu") or self.device.startswith("cuda"),
                "must be auto, cpu or cuda[:N]")


def train_config_from_dict(data: dict[str, Any], path: str = "") -> TrainConfig:
    return from_dict(TrainConfig, data, path)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a training config YAML file (safe, YAML 1.2 numbers), strictly."""
    return train_config_from_dict(read_yaml_file(path, "config file"))


def dump_train_config(config: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
