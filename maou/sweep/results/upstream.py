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
* The data: upstream requires the stage's ``--stageN-data-path`` (a file or a folder; a folder is
  read whole, every file in it, so ``manifest.json`` beside the data would break it). The flag
  names the absolute path of the file the winner trained on (:func:`upstream_data`): the training
  split ``stageN/train.feather`` of the winner's built datasets (``build_dir(config.data)``),
  whose validation games stay out of upstream's training too; for Stage 1, whose rows are
  synthetic, ``stage1/all.feather``, the same 1,105 rows (``sweep export`` writes them beside
  best-args.txt when the build folder lacks them). Upstream reads its own dense target columns
  (``legalMovesLabel``, ``moveLabel``), not the compact ones a build stores (``legalMovesBits``,
  ``moveLabelSparse``): the flag names upstream's dense copy of that file when ``sweep export
  --upstream-data`` wrote it (:mod:`maou.data.dense`, ``upstream-data/stageN/train.feather``
  beside best-args.txt), else the built file with a note giving that command and the copy's size.
* A budget in steps: upstream trains whole epochs, so the epoch flag carries the equivalent
  ``steps x batch / training rows`` (the built manifest's count) rounded up, and a note says so;
  with the row count unknown (no manifest) no epoch flag is written and the note says why.

Keys upstream cannot express are returned with the reason, never dropped: :func:`render` lists
them under the command, after the notes on the data. Run mechanics (device, threads, seed,
evaluation) are no hyperparameters and are left out. The command is one line; values that a shell
would split (a path with a space) are quoted.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
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
    #: What to know before running the command (where its data comes from), one ``#`` line each.
    notes: list[str] = field(default_factory=list)

    def add(self, flag: str, value: Any = None) -> None:
        self.flags.append((flag, None if value is None else _text(value)))

    def cannot(self, key: str, value: Any, reason: str) -> None:
        self.unexpressed.append((key, value, reason))

    def note(self, text: str) -> None:
        self.notes.append(text)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 12))
    return str(value)


@dataclass(frozen=True)
class UpstreamData:
    """The file upstream trains the winner's stage on, and its rows."""

    #: Absolute path of the stage's training file.
    path: Path
    #: Its rows (None: unknown, its manifest is missing or unreadable).
    train_rows: int | None
    #: Where the count came from, or why it is unknown.
    source: str
    #: The training file's SHA-256 from the manifest (None: unknown).
    sha256: str | None = None
    #: The built file that ``path`` is upstream's dense copy of (None: ``path`` is the built file).
    dense_of: Path | None = None
    #: The command that writes upstream's dense copy, for the note when ``path`` is a built file
    #: whose compact columns upstream cannot read.
    dense_command: str = "sweep export SPEC --upstream-data"


def upstream_data(config: TrainConfig) -> UpstreamData:
    """The training file of ``config``'s stage in its built datasets (``build_dir(config.data)``),
    absolute, and its row count from the stage's ``manifest.json``; Stage 1's synthetic rows are
    ``stage1/all.feather`` there, their count known without a build."""
    from maou.data.build import build_dir
    from maou.layout import MANIFEST, SYNTHETIC_FILE, split_path, stage_name
    from maou.shogi.shapes import STAGE1_ROWS_NUM

    built = build_dir(config.data).absolute()
    folder = built / stage_name(config.stage)
    if stage_info(config.stage).data_source == "synthetic":
        return UpstreamData(folder / SYNTHETIC_FILE, STAGE1_ROWS_NUM, "the synthetic Stage 1 rows")
    manifest, train = folder / MANIFEST, split_path(built, config.stage, "train")
    try:
        entries = json.loads(manifest.read_text())
        rows = int(entries["rows"]["train"])
    except FileNotFoundError:
        return UpstreamData(train, None, f"no {manifest} on this machine")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return UpstreamData(train, None, f"{manifest} unreadable: {type(exc).__name__}")
    sha256 = (entries.get("files") or {}).get("train", {}).get("sha256")
    return UpstreamData(train, rows, str(manifest), sha256 if isinstance(sha256, str) else None)


def upstream_args(config: TrainConfig, data: UpstreamData | None = None) -> UpstreamArgs:
    """The flags that run ``config`` in upstream's ``maou learn-model``, and what they cannot say.
    ``data``: where the stage's training data is (default :func:`upstream_data`)."""
    data = data if data is not None else upstream_data(config)
    out = UpstreamArgs(config.stage)
    out.add("--stage", config.stage)
    _data_path(config, data, out)
    out.add("--model-architecture", _ARCHITECTURES[config.model.arch])
    for key in ("model.blocks", "model.channels"):
        out.cannot(key, lookup(config, key), "upstream's backbones fix their own depth and width")
    _budget_and_batch(config, data, out)
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


def _data_path(config: TrainConfig, data: UpstreamData, out: UpstreamArgs) -> None:
    flag = stage_info(config.stage).upstream.data_path
    out.add(flag, data.path)
    if not data.path.is_file():
        games = " ".join(map(shlex.quote, config.data.games))
        out.note(f"{flag}: {data.path} is not on this machine: `sweep data build --games {games} --out "
                 f"{shlex.quote(str(data.path.parent.parent))} --split-seed {config.data.split_seed} --val-fraction "
                 f"{config.data.val_fraction}` writes it (or copy it here)")
        return
    rows = f"{data.train_rows:,} rows" if data.train_rows is not None else f"rows unknown: {data.source}"
    if stage_info(config.stage).data_source == "synthetic":
        out.note(f"{flag}: the {rows} of Stage {config.stage} the winner trained on, synthetic and the same for "
                 "every config (upstream reads them from a file; it does not generate them)")
        return
    if data.dense_of is not None:
        out.note(f"{flag}: upstream's dense copy ({_dense_columns(config.stage)}) of the training split the winner "
                 f"trained on ({rows}), converted from {data.dense_of} (its held-out games are in val.feather beside "
                 "that); the file, as upstream reads a folder whole")
        return
    out.note(f"{flag}: the training split the winner trained on ({rows}; its held-out games are in "
             "val.feather beside it); the file, as upstream reads a folder whole, manifest.json included")
    _dense_copy_note(config, data, out)


def _dense_columns(stage_number: int) -> str:
    return ", ".join(t.column for t in stage_info(stage_number).targets)


def _dense_copy_note(config: TrainConfig, data: UpstreamData, out: UpstreamArgs) -> None:
    """The note that upstream needs the dense copy of a built file that stores a target compactly."""
    from maou.data.dense import dense_bytes, needs_dense_copy, size_text

    if not needs_dense_copy(config.stage):
        return
    targets = stage_info(config.stage).targets
    compact = ", ".join(f"{t.column} as {t.compact_column} ({t.storage})" for t in targets if t.compact_column)
    size = (f"{size_text(dense_bytes(config.stage, data.train_rows))} dense, less on disk: LZ4"
            if data.train_rows is not None else "its size unknown with the rows")
    out.note(f"{stage_info(config.stage).upstream.data_path}: upstream reads its dense columns "
             f"({_dense_columns(config.stage)}) and this file stores {compact}: upstream needs the dense copy; "
             f"run `{data.dense_command}` to write it ({size}) and point this flag at it")


def _budget_and_batch(config: TrainConfig, data: UpstreamData, out: UpstreamArgs) -> None:
    flags = stage_info(config.stage).upstream
    batch, lr = config.batch_size, config.optim.lr
    out.add(flags.batch, batch)
    above = flags.lr_scaled_above_batch
    scale = math.sqrt(batch / above) if above is not None and batch > above else 1.0
    out.add(flags.learning_rate, lr / scale)
    epochs = config.budget.epochs
    if epochs is None:
        steps, rows = config.budget.max_steps, data.train_rows
        assert steps is not None  # a budget has exactly one of max_steps and epochs
        if rows is None:
            out.cannot("budget.max_steps", steps, f"upstream trains whole epochs, and the training rows are unknown "
                       f"({data.source}), so are the epochs it equals: no {flags.epochs} written, upstream's "
                       "default applies")
            return
        equivalent = steps * batch / rows
        whole = max(1, math.ceil(equivalent - 1e-9))
        out.add(flags.epochs, whole)
        out.cannot("budget.max_steps", steps, f"upstream trains whole epochs: {steps} steps x batch {batch} / "
                   f"{rows:,} training rows = {equivalent:.4g} epochs; {flags.epochs} {whole} written (rounded up)")
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
    """best-args.txt: the command on one line, then the notes and what it cannot express, one ``#``
    line each."""
    parts = [COMMAND] + [flag if value is None else f"{flag} {shlex.quote(value)}" for flag, value in args.flags]
    lines = [" ".join(parts)]
    lines += [f"# {note}" for note in args.notes]
    if args.unexpressed:
        lines.append("# not expressible upstream (listed so that nothing is dropped silently):")
        lines += [f"#   {key} = {value}: {reason}" for key, value, reason in args.unexpressed]
    return "\n".join(lines) + "\n"


__all__ = ["COMMAND", "UpstreamArgs", "UpstreamData", "render", "stage1_flags", "stage2_flags", "stage3_flags",
           "upstream_args", "upstream_data"]
