"""``sweep export``: every trial, every step's decision and the winning config, as files.

``results/<sweep>/trials.csv``   one row per trial: params, state, metrics, prune reason
``results/<sweep>/steps.csv``    one row per step and configuration: mean, std, n, winner, margin
``results/<sweep>/prune_reasons.csv`` trials per step, state and prune reason (how much each rule cut)
``results/<sweep>/best.yaml``    the winning resolved training config (runnable with ``sweep train``)
``results/<sweep>/best-args.txt`` the same as upstream ``maou learn-model`` flags
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maou.errors import UserError
from maou.stages import stage
from maou.sweep.decision import RecordedDecision
from maou.sweep.identity import ConfigKey

#: Training-config keys -> upstream ``maou learn-model`` flags shared by every stage.
UPSTREAM_FLAGS: dict[str, str] = {
    "batch_size": "--batch-size",
    "optim.lr": "--learning-ratio",
    "optim.momentum": "--momentum",
    "optim.name": "--optimizer",
    "loss.policy_loss_ratio": "--policy-loss-ratio",
    "loss.value_loss_ratio": "--value-loss-ratio",
    "budget.epochs": "--epoch",
    "freeze_backbone": "--freeze-backbone",
    "init_from": "--resume-from",
}
#: Keys with a stage-specific upstream flag: the stage's prefix (the registry's) + this name.
UPSTREAM_STAGE_FLAGS: dict[int, dict[str, str]] = {
    1: {"loss.pos_weight": "pos-weight", "batch_size": "batch-size", "optim.lr": "learning-rate"},
    2: {"loss.pos_weight": "pos-weight", "loss.gamma_pos": "gamma-pos", "loss.gamma_neg": "gamma-neg",
        "loss.asl_clip": "clip", "model.hidden_dim": "hidden-dim", "model.dropout": "head-dropout",
        "batch_size": "batch-size", "optim.lr": "learning-rate"},
    3: {},
}


def upstream_args(stage_number: int, overrides: dict[str, Any], config: dict[str, Any]) -> str:
    """Upstream flags for the searched keys of the winner (plus its batch size and learning rate)."""
    prefix = stage(stage_number).upstream_prefix
    flags = {**UPSTREAM_FLAGS,
             **{k: f"{prefix}{name}" for k, name in UPSTREAM_STAGE_FLAGS.get(stage_number, {}).items()}}
    parts = []
    for key in dict.fromkeys([*overrides, "batch_size", "optim.lr"]):
        flag = flags.get(key)
        value = _get(config, key)
        if flag is None or value is None:
            continue
        if isinstance(value, bool):
            if value:
                parts.append(flag)
            continue
        parts.append(f"{flag} {float(value) if isinstance(value, float) else value}")
    return " ".join(parts)


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row: dict[str, Any] = {
            "study": study.study_name, "step": attrs.get("step"), "trial": t.number, "state": t.state.name,
            "seed": attrs.get("seed"), "config": ConfigKey.of(attrs.get("overrides", {})).text,
            "value": t.value, "prune_reason": attrs.get("prune_reason"), "prune_detail": attrs.get("prune_detail"),
            "prune_step": attrs.get("prune_step"), "stop_reason": attrs.get("stop_reason"),
            "fail_reason": attrs.get("fail_reason"), "steps_done": attrs.get("steps_done"),
            "max_steps": attrs.get("max_steps"), "best_step": attrs.get("best_step"),
            "wall_time_s": attrs.get("wall_time_s"), "device": attrs.get("device"),
            "reused_from": attrs.get("reused_from"), "dataset_hash": attrs.get("dataset_hash"),
            "package_version": attrs.get("package_version"),
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
        }
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row.update({f"final_{k}": v for k, v in (attrs.get("final_metrics") or {}).items()})
        row.update({f"best_{k}": v for k, v in (attrs.get("best_metrics") or {}).items()})
        rows.append(row)
    return rows


STEP_COLUMNS = ["study", "step", "config", "mean", "std", "n", "pruned", "failed", "winner", "carried", "adopted",
                "margin", "noise", "threshold"]


def step_rows(study: Any) -> list[dict[str, Any]]:
    decision = RecordedDecision.of_study(study)
    if decision is None:
        return []
    return [{"study": study.study_name, "step": study.user_attrs.get("step"), "config": e.key.text,
             "mean": e.mean, "std": e.std, "n": e.n, "pruned": e.pruned, "failed": e.failed,
             "winner": e.key == decision.winner_key, "carried": e.key == decision.carried_key,
             "adopted": decision.adopted and e.key == decision.winner_key,
             "margin": decision.margin, "noise": decision.noise, "threshold": decision.threshold}
            for e in decision.leaderboard]


REASON_COLUMNS = ["study", "step", "state", "prune_reason", "trials"]


def reason_rows(study: Any) -> list[dict[str, Any]]:
    """How many trials of a step ended in each state, pruned ones split by their prune reason."""
    counts = Counter((t.state.name, t.user_attrs.get("prune_reason", "unrecorded") if t.state.name == "PRUNED" else "")
                     for t in study.get_trials(deepcopy=False))
    return [{"study": study.study_name, "step": study.user_attrs.get("step"), "state": state,
             "prune_reason": reason, "trials": n} for (state, reason), n in sorted(counts.items())]


@dataclass
class Export:
    paths: dict[str, Path] = field(default_factory=dict)
    #: Pruned trials of the whole sweep by prune reason.
    pruned: Counter = field(default_factory=Counter)
    #: Why best.yaml and best-args.txt were not written (None when they were).
    no_winner: str | None = None


def export_sweep(spec: Any, out_dir: str | Path | None = None, storage_url: str | None = None) -> Export:
    import optuna
    import pandas as pd

    from maou.sweep.storage import mask_url, open_storage, step_study_names

    url = storage_url or spec.storage_url
    storage = open_storage(url, create=False)
    present = set(step_study_names(storage, spec.name))
    # the spec's steps, in order, as far as they ran: a study of a step the spec no longer has
    # (renamed, removed) is not exported and decides nothing
    names = [spec.study_name(i) for i in range(len(spec.steps))]
    names = names[:next((i for i, n in enumerate(names) if n not in present), len(names))]
    if not names:
        raise UserError(f"sweep {spec.name!r} has no step in {mask_url(url)} yet; run `sweep run` first")
    studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    out = Path(out_dir or f"results/{spec.name}")
    out.mkdir(parents=True, exist_ok=True)
    export = Export({"trials": out / "trials.csv", "steps": out / "steps.csv",
                     "prune_reasons": out / "prune_reasons.csv"})
    reasons = [r for s in studies for r in reason_rows(s)]
    write_atomic(export.paths["trials"], pd.DataFrame([r for s in studies for r in trial_rows(s)]).to_csv(index=False))
    write_atomic(export.paths["steps"], pd.DataFrame([r for s in studies for r in step_rows(s)],
                                                     columns=STEP_COLUMNS).to_csv(index=False))
    write_atomic(export.paths["prune_reasons"], pd.DataFrame(reasons, columns=REASON_COLUMNS).to_csv(index=False))
    for row in reasons:
        if row["state"] == "PRUNED":
            export.pruned[row["prune_reason"]] += row["trials"]
    _export_winner(spec, studies, len(spec.steps), out, export)
    return export


def _export_winner(spec: Any, studies: list[Any], steps: int, out: Path, export: Export) -> None:
    """best.yaml and best-args.txt from the spec's last step, or the reason there is no winner."""
    from maou.trainer.config import dump_train_config, train_config_from_dict

    for stale in ("best.yaml", "best-args.txt"):  # never leave an earlier export's winner behind
        (out / stale).unlink(missing_ok=True)
    last = studies[-1]
    decision = RecordedDecision.of_study(last)
    if len(studies) < steps or decision is None:
        export.no_winner = f"the sweep has not finished: step {last.study_name} is the last that ran"
        return
    if decision.failed:
        export.no_winner = f"step {last.study_name}: no trial completed"
        return
    trials = [t for t in last.get_trials(deepcopy=False)
              if t.user_attrs.get("config_key") == decision.winner_key.text and "config" in t.user_attrs]
    if not trials:
        export.no_winner = f"step {last.study_name}: no trial of the winner recorded its config"
        return
    config = dict(trials[0].user_attrs["config"])
    config["seed"] = spec.seed_list[0]
    best = export.paths["best"] = out / "best.yaml"
    write_atomic(best, f"# winner of sweep {spec.name} ({last.study_name}); run with: sweep train {best}\n"
                 + dump_train_config(train_config_from_dict(config)))
    export.paths["best_args"] = out / "best-args.txt"
    write_atomic(export.paths["best_args"], upstream_args(spec.stage, decision.winner_key.overrides, config) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename: a reader (or a crash) never
    sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


__all__ = ["Export", "export_sweep", "reason_rows", "step_rows", "trial_rows", "upstream_args", "write_atomic"]
