"""Checkpoints: a stage's backbone and heads with its config; a later stage starts from the backbone."""

from __future__ import annotations

from pathlib import Path

import torch

from maou.errors import UserError
from maou.strict import to_dict
from maou.trainer.config import TrainConfig
from maou.trainer.models import StageModel

CHECKPOINT_NAME = "checkpoint.pt"
#: Backbone settings a checkpoint must share with the model it initialises.
_BACKBONE_KEYS = ("arch", "blocks", "channels")


def save_checkpoint(path: Path, model: StageModel, config: TrainConfig, step: int) -> None:
    """Write the checkpoint to a temporary file, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"stage": config.stage, "step": step, "config": to_dict(config),
                "backbone": {k: v.cpu() for k, v in model.backbone.state_dict().items()},
                "heads": {k: v.cpu() for k, v in model.heads.state_dict().items()}}, tmp)
    tmp.replace(path)


def load_backbone(model: StageModel, path: str | Path, config: TrainConfig) -> None:
    """Initialise ``model.backbone`` from an earlier stage's checkpoint (heads stay fresh)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"init_from: no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on a damaged file
        raise UserError(f"init_from {path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or "backbone" not in checkpoint:
        raise UserError(f"init_from {path}: not a maou-sweep checkpoint (no backbone weights)")
    saved = checkpoint.get("config", {}).get("model", {})
    mine = to_dict(config.model)
    for key in _BACKBONE_KEYS:
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


__all__ = ["CHECKPOINT_NAME", "load_backbone", "save_checkpoint"]
