"""``sweep export``: every trial, every step's decision and the winning config, as files.

``results/<sweep>/trials.csv``   one row per trial: params, state, metrics, prune reason
``results/<sweep>/steps.csv``    one row per step and configuration: mean, std, n, winner, margin
``results/<sweep>/prune_reasons.csv`` trials per step, state and prune reason (how much each detector cut)
``results/<sweep>/best.yaml``    the winning resolved training config (runnable with ``sweep train``)
``results/<sweep>/best-args.txt`` the same as upstream ``maou learn-model`` flags
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from maou.errors import UserError

#: Training-config keys -> upstream ``maou learn-model`` flags, per stage where they differ.
UPSTREAM_FLAGS: dict[str, str] = {
    "batch_size": "--batch-size",
    "optim.lr": "--learning-ratio",
    "optim.momentum": "--momentum",
    "optim.name": "--optimizer",
    "loss.policy_loss_ratio": "--policy-loss-ratio",
    "loss.value_loss_ratio": "--value-loss-ratio",
    "epochs": "--epoch",
    "freeze_backbone": "--freeze-backbone",
    "init_from": "--resume-from",
}
UPSTREAM_STAGE_FLAGS: dict[int, dict[str, str]] = {
    1: {"loss.pos_weight": "--stage1-pos-weight", "batch_size": "--stage1-batch-size",
        "optim.lr": "--stage1-learning-rate"},
    2: {"loss.pos_weight": "--stage2-pos-weight", "loss.gamma_pos": "--stage2-gamma-pos",
        "loss.gamma_neg": "--stage2-gamma-neg", "loss.asl_clip": "--stage2-clip",
        "model.hidden_dim": "--stage2-hidden-dim", "model.dropout": "--stage2-head-dropout",
        "batch_size": "--stage2-batch-size", "optim.lr": "--stage2-learning-rate"},
    3: {},
}


def upstream_args(stage: int, overrides: dict[str, Any], config: dict[str, Any]) -> str:
    """Upstream flags for the searched keys of the winner (plus its batch size and learning rate)."""
    flags = {**UPSTREAM_FLAGS, **UPSTREAM_STAGE_FLAGS.get(stage, {})}
    keys = list(dict.fromkeys([*overrides, "batch_size", "optim.lr"]))
    parts = []
    for key in keys:
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


def trial_rows(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row: dict[str, Any] = {
            "study": study.study_name, "step": attrs.get("step"), "trial": t.number, "state": t.state.name,
            "seed": attrs.get("seed"), "config": json.dumps(attrs.get("overrides", {}), sort_keys=True),
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


def step_rows(study) -> list[dict[str, Any]]:
    decision = study.user_attrs.get("decision")
    if not decision:
        return []
    winner = json.loads(decision["winner_key"])
    carried = json.loads(decision["carried_key"])
    rows = []
    for entry in decision["leaderboard"]:
        rows.append({"study": study.study_name, "step": study.user_attrs.get("step"),
                     "config": json.dumps(entry["config"], sort_keys=True), "mean": entry["mean"],
                     "std": entry["std"], "n": entry["n"], "pruned": entry["pruned"], "failed": entry["failed"],
                     "winner": entry["config"] == winner, "carried": entry["config"] == carried,
                     "adopted": decision["adopted"] and entry["config"] == winner,
                     "margin": decision["margin"], "noise": decision["noise"], "threshold": decision["threshold"]})
    return rows


def reason_rows(study) -> list[dict[str, Any]]:
    """How many trials of a step ended in each state, pruned ones split by their prune reason."""
    from collections import Counter

    counts = Counter((t.state.name, t.user_attrs.get("prune_reason", "unrecorded") if t.state.name == "PRUNED" else "")
                     for t in study.get_trials(deepcopy=False))
    return [{"study": study.study_name, "step": study.user_attrs.get("step"), "state": state,
             "prune_reason": reason, "trials": n} for (state, reason), n in sorted(counts.items())]


def export_sweep(spec, out_dir: str | Path | None = None, storage_url: str | None = None) -> dict[str, Path]:
    import optuna
    import pandas as pd

    from maou.config import dump_train_config, train_config_from_dict
    from maou.storage import open_storage, step_study_names

    storage = open_storage(storage_url or spec.storage_url)
    names = step_study_names(storage, spec.name)
    if not names:
        raise UserError(f"no studies of sweep {spec.name!r} in {storage_url or spec.storage_url}; "
                        f"run `sweep run` first")
    studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    out = Path(out_dir or f"results/{spec.name}")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trials": out / "trials.csv", "steps": out / "steps.csv", "prune_reasons": out / "prune_reasons.csv"}
    pd.DataFrame([r for s in studies for r in trial_rows(s)]).to_csv(paths["trials"], index=False)
    pd.DataFrame([r for s in studies for r in step_rows(s)],
                 columns=["study", "step", "config", "mean", "std", "n", "pruned", "failed", "winner",
                          "carried", "adopted", "margin", "noise", "threshold"]).to_csv(paths["steps"], index=False)
    pd.DataFrame([r for s in studies for r in reason_rows(s)],
                 columns=["study", "step", "state", "prune_reason", "trials"]).to_csv(paths["prune_reasons"],
                                                                                     index=False)
    last = next((s for s in reversed(studies) if s.user_attrs.get("decision")), None)
    if last is not None:
        winner_key = last.user_attrs["decision"]["winner_key"]
        trials = [t for t in last.get_trials(deepcopy=False)
                  if t.user_attrs.get("config_key") == winner_key and "config" in t.user_attrs]
        if trials:
            config = dict(trials[0].user_attrs["config"])
            config["seed"] = spec.seed_list[0]
            resolved = train_config_from_dict(config)
            paths["best"] = out / "best.yaml"
            paths["best"].write_text(f"# winner of sweep {spec.name} ({last.study_name}); "
                                     f"run with: sweep train {paths['best']}\n" + dump_train_config(resolved))
            paths["best_args"] = out / "best-args.txt"
            paths["best_args"].write_text(upstream_args(spec.stage, json.loads(winner_key), config) + "\n")
    return paths


def cli_export(args) -> int:
    from rich.console import Console

    from maou.spec import load_spec

    spec = load_spec(args.spec)
    paths = export_sweep(spec, args.out, args.storage)
    console = Console()
    for name, path in paths.items():
        console.print(f"{name:>13}: {path}")
    import pandas as pd

    reasons = pd.read_csv(paths["prune_reasons"])
    pruned = reasons[reasons["state"] == "PRUNED"].groupby("prune_reason")["trials"].sum()
    if len(pruned):
        console.print("pruned trials by reason: " + ", ".join(f"{r}: {n}" for r, n in pruned.items()))
    if "best_args" in paths:
        console.print(f"upstream flags: {paths['best_args'].read_text().strip()}")
    return 0
