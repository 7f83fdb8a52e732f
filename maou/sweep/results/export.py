"""``sweep export``: every trial, every step's decision and the winning config, as files.

``results/<sweep>/trials.csv``   one row per trial: params, state, metrics, prune reason
``results/<sweep>/steps.csv``    one row per step and configuration: mean, std, n, winner, margin
``results/<sweep>/prune_reasons.csv`` trials per step, state and prune reason (how much each rule cut)
``results/<sweep>/best.yaml``    the winning resolved training config (runnable with ``sweep train``)
``results/<sweep>/best-args.txt`` the same as upstream ``maou learn-model`` flags (:mod:`maou.sweep.results.upstream`)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maou.errors import UserError
from maou.strict import flatten
from maou.sweep.identity import ConfigKey
from maou.sweep.results.upstream import render, upstream_args
from maou.sweep.run.decision import RecordedDecision


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved training config as dotted keys (``loss.gamma_neg``); lists become text."""
    return {key: " ".join(map(str, value)) if isinstance(value, list) else value
            for key, value in flatten(config).items()}


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: every resolved training key as a column, whether its configuration won
    the step, whether it was copied from an earlier step (count a configuration once: ``reused``)."""
    decision = RecordedDecision.of_study(study)
    winner = decision.winner_key.text if decision is not None and not decision.failed else None
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row: dict[str, Any] = {
            "study": study.study_name, "step": attrs.get("step"), "trial": t.number, "state": t.state.name,
            "seed": attrs.get("seed"), "config": ConfigKey.of(attrs.get("overrides", {})).text,
            "winner": winner is not None and attrs.get("config_key") == winner,
            "reused": bool(attrs.get("reused_from")),
            "value": t.value, "prune_reason": attrs.get("prune_reason"), "prune_detail": attrs.get("prune_detail"),
            "prune_step": attrs.get("prune_step"), "stop_reason": attrs.get("stop_reason"),
            "fail_reason": attrs.get("fail_reason"), "steps_done": attrs.get("steps_done"),
            "max_steps": attrs.get("max_steps"), "best_step": attrs.get("best_step"),
            "wall_time_s": attrs.get("wall_time_s"), "device": attrs.get("device"),
            "reused_from": attrs.get("reused_from"), "dataset_hash": attrs.get("dataset_hash"),
            "package_version": attrs.get("package_version"),
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
        }
        row.update(flat_config(attrs.get("config") or {}))
        row.update({f"final_{k}": v for k, v in (attrs.get("final_metrics") or {}).items()})
        row.update({f"best_{k}": v for k, v in (attrs.get("best_metrics") or {}).items()})
        rows.append(row)
    return rows


STEP_COLUMNS = ["study", "step", "config", "mean", "std", "sem", "n", "pruned", "failed", "winner", "carried",
                "adopted", "gain", "gain_se", "p", "holm_level", "needed", "significant", "guard_failures", "edge"]


def step_rows(study: Any) -> list[dict[str, Any]]:
    """One row per configuration of a step: its results and its own comparison with the carried one."""
    decision = RecordedDecision.of_study(study)
    if decision is None:
        return []
    rows = []
    for e in decision.leaderboard:
        c = decision.comparison_of(e.key) or {}
        rows.append({"study": study.study_name, "step": study.user_attrs.get("step"), "config": e.key.text,
                     "mean": e.mean, "std": e.std, "sem": e.sem, "n": e.n, "pruned": e.pruned, "failed": e.failed,
                     "winner": e.key == decision.winner_key, "carried": e.key == decision.carried_key,
                     "adopted": decision.adopted and e.key == decision.winner_key, "gain": c.get("gain"),
                     "gain_se": c.get("se"), "p": c.get("p"), "holm_level": c.get("holm_level"),
                     "needed": c.get("needed"), "significant": c.get("significant"),
                     "guard_failures": "; ".join(c.get("guard_failures", [])),
                     "edge": " ".join(decision.edge) if e.key == decision.winner_key else ""})
    return rows


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
    out = Path(out_dir) if out_dir else spec.results_path
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
    write_atomic(export.paths["best_args"], render(upstream_args(train_config_from_dict(config))))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename: a reader (or a crash) never
    sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


__all__ = ["Export", "export_sweep", "reason_rows", "step_rows", "trial_rows", "write_atomic"]
