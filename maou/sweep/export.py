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


def export_sweep(spec: Any, out_dir: str | Path | None = None, storage_url: str | None = None) -> Export:
    import optuna
    import pandas as pd

    from maou.sweep.storage import open_storage, step_study_names
    from maou.trainer.config import dump_train_config, train_config_from_dict

    storage = open_storage(storage_url or spec.storage_url)
    names = step_study_names(storage, spec.name)
    if not names:
        raise UserError(f"no studies of sweep {spec.name!r} in {storage_url or spec.storage_url}; "
                        f"run `sweep run` first")
    studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    out = Path(out_dir or f"results/{spec.name}")
    out.mkdir(parents=True, exist_ok=True)
    export = Export({"trials": out / "trials.csv", "steps": out / "steps.csv",
                     "prune_reasons": out / "prune_reasons.csv"})
    reasons = [r for s in studies for r in reason_rows(s)]
    pd.DataFrame([r for s in studies for r in trial_rows(s)]).to_csv(export.paths["trials"], index=False)
    pd.DataFrame([r for s in studies for r in step_rows(s)], columns=STEP_COLUMNS).to_csv(
        export.paths["steps"], index=False)
    pd.DataFrame(reasons, columns=REASON_COLUMNS).to_csv(export.paths["prune_reasons"], index=False)
    for row in reasons:
        if row["state"] == "PRUNED":
            export.pruned[row["prune_reason"]] += row["trials"]
    last = next((s for s in reversed(studies) if s.user_attrs.get("decision")), None)
    decision = RecordedDecision.of_study(last) if last is not None else None
    if last is not None and decision is not None:
        trials = [t for t in last.get_trials(deepcopy=False)
                  if t.user_attrs.get("config_key") == decision.winner_key.text and "config" in t.user_attrs]
        if trials:
            config = dict(trials[0].user_attrs["config"])
            config["seed"] = spec.seed_list[0]
            resolved = train_config_from_dict(config)
            best = export.paths["best"] = out / "best.yaml"
            best.write_text(f"# winner of sweep {spec.name} ({last.study_name}); run with: sweep train {best}\n"
                            + dump_train_config(resolved))
            export.paths["best_args"] = out / "best-args.txt"
            export.paths["best_args"].write_text(
                upstream_args(spec.stage, decision.winner_key.overrides, config) + "\n")
    return export


__all__ = ["Export", "export_sweep", "reason_rows", "step_rows", "trial_rows", "upstream_args"]
