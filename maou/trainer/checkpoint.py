"""Checkpoints: a stage's backbone and heads with its config; a later stage starts from the backbone."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch

from maou.errors import UserError
from maou.strict import to_dict
from maou.trainer.config import TrainConfig
from maou.trainer.models import StageModel
from maou.trainer.result import ResourceExhausted

CHECKPOINT_NAME = "checkpoint.pt"
#: Below this much free space, a failed checkpoint write is taken for a full disk.
_NEARLY_FULL_BYTES = 64 * 2**20
#: Backbone settings a checkpoint must share with the model it initialises.
_BACKBONE_KEYS = ("arch", "blocks", "channels")


def save_checkpoint(path: Path, model: StageModel, config: TrainConfig, step: int) -> None:
    """Write the checkpoint to a temporary file, then rename: a crash never leaves half a file, and a
    failed write leaves no partial one (a full disk is named, with its free space)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save({"stage": config.stage, "step": step, "config": to_dict(config),
                    "backbone": {k: v.cpu() for k, v in model.backbone.state_dict().items()},
                    "heads": {k: v.cpu() for k, v in model.heads.state_dict().items()}}, tmp)
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)) and _disk_full(exc, path.parent):
            free = shutil.disk_usage(path.parent).free
            raise ResourceExhausted(f"disk full: cannot write the checkpoint {path} ({free / 2**20:.1f} MiB free "
                                    f"there); free space or point runs_dir elsewhere, then resume") from None
        raise


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """The write failed for lack of space: ENOSPC, or torch's stream writer failing on a nearly full disk
    (its message names no cause: ``unexpected pos 64 vs 0``)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


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
