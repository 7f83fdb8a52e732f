"""``sweep export``: every trial, every step's decision and the winning config, as files.

``results/<sweep>/trials.csv``   one row per trial: params, state, metrics, prune reason
``results/<sweep>/steps.csv``    one row per step and configuration: metric, direction, mean, std, n, winner,
                                 final_winner (the sweep's, on one row), the comparison with the carried one
``results/<sweep>/prune_reasons.csv`` trials per step, state and prune reason (how much each rule cut)
``results/<sweep>/best.yaml``    the winning resolved training config (runnable with ``sweep train``)
``results/<sweep>/best-args.txt`` the same as upstream ``maou learn-model`` flags (:mod:`maou.sweep.results.upstream`)
``results/<sweep>/stage1/all.feather`` a Stage 1 winner's data for upstream, when its build folder lacks it
``results/<sweep>/upstream-data/stageN/train.feather`` (``--upstream-data``) a Stage 2/3 winner's training split
                                 in upstream's dense columns (:mod:`maou.data.dense`), which best-args.txt then names

Without ``--upstream-data`` a dense copy already there of the same built file (its metadata names
the file's SHA-256) is still the one best-args.txt names; otherwise best-args.txt names the built
file, with a note giving the command that writes the copy and its size.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maou.data.dense import DenseCopy
from maou.errors import UserError
from maou.strict import flatten
from maou.sweep.attrs import TrialAttr
from maou.sweep.chain import command_name
from maou.sweep.identity import ConfigKey
from maou.sweep.records import StepRecord, SweepRecord, read_sweep
from maou.sweep.results.upstream import UpstreamData, render, upstream_args, upstream_data


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved training config as dotted keys (``loss.gamma_neg``); lists become text."""
    return {key: " ".join(map(str, value)) if isinstance(value, list) else value
            for key, value in flatten(config).items()}


def trial_rows(step: StepRecord, final_winner: ConfigKey | None = None) -> list[dict[str, Any]]:
    """One row per trial: every resolved training key as a column, whether its configuration won
    the step (``winner``) and the sweep (``final_winner``: passed for the sweep's last step only),
    whether it was copied from an earlier step (count a configuration once: ``reused``). ``device``
    is where it ran (``cpu``, ``cuda``); ``requested_device`` what its config asked for (``auto``)."""
    decision = step.decision
    winner = decision.winner_key if decision is not None and not decision.failed else None
    rows, T = [], TrialAttr
    for t in step.trials:
        config = flat_config(t.config)
        row: dict[str, Any] = {
            "study": step.study_name, "step": step.name, "trial": t.number, "state": t.state.name,
            "seed": t.seed, "config": t.key.text, "winner": winner is not None and t.key == winner,
            "final_winner": final_winner is not None and t.key == final_winner,
            "reused": t.reused, "metric": t.metric, "direction": t.direction, "reduce": t.reduce,
            "value": t.value, T.PRUNE_REASON: t.prune_reason, T.PRUNE_DETAIL: t.prune_detail,
            T.PRUNE_STEP: t.prune_step, T.STOP_REASON: t.stop_reason,
            T.FAIL_REASON: t.fail_reason, T.STEPS_DONE: t.steps_done,
            T.MAX_STEPS: t.max_steps, T.BEST_STEP: t.best_step,
            T.WALL_TIME_S: t.wall_time_s, T.REUSED_FROM: t.reused_from, T.DATASET_HASH: t.dataset_hash,
            T.PACKAGE_VERSION: t.package_version,
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
        }
        row["requested_device"] = config.pop("device", None)
        row.update(config)
        row["device"] = t.device
        row.update({f"final_{k}": v for k, v in t.final_metrics.items()})
        row.update({f"best_{k}": v for k, v in t.best_metrics.items()})
        rows.append(row)
    return rows


STEP_COLUMNS = ["study", "step", "metric", "direction", "config", "mean", "std", "sem", "n", "pruned", "failed",
                "winner", "final_winner", "carried", "adopted", "gain", "gain_se", "p", "holm_level", "needed",
                "significant", "guard_failures", "edge", "raced", "device"]


def step_rows(step: StepRecord, final_winner: ConfigKey | None = None) -> list[dict[str, Any]]:
    """One row per configuration of a step: its results and its own comparison with the carried one.
    ``final_winner`` (the sweep's winner, passed for its last step only) marks exactly one row."""
    decision = step.decision
    if decision is None:
        return []
    rows = []
    for e in decision.leaderboard:
        c = decision.comparison_of(e.key) or {}
        devices = sorted({t.device for t in step.trials_of(e.key) if t.device})
        rows.append({"study": step.study_name, "step": step.name, "metric": decision.metric,
                     "direction": decision.direction, "config": e.key.text,
                     "mean": e.mean, "std": e.std, "sem": e.sem, "n": e.n, "pruned": e.pruned, "failed": e.failed,
                     "winner": e.key == decision.winner_key, "final_winner": e.key == final_winner,
                     "carried": e.key == decision.carried_key,
                     "adopted": decision.adopted and e.key == decision.winner_key, "gain": c.get("gain"),
                     "gain_se": c.get("se"), "p": c.get("p"), "holm_level": c.get("holm_level"),
                     "needed": c.get("needed"), "significant": c.get("significant"),
                     "guard_failures": "; ".join(c.get("guard_failures", [])),
                     "edge": " ".join(decision.edge) if e.key == decision.winner_key else "",
                     "raced": e.raced,
                     "device": " ".join(devices)})
    return rows


REASON_COLUMNS = ["study", "step", "state", TrialAttr.PRUNE_REASON, "trials"]


def reason_rows(step: StepRecord) -> list[dict[str, Any]]:
    """How many trials of a step ended in each state, pruned ones split by their prune reason."""
    counts = Counter((t.state.name, (t.prune_reason or "pruned") if t.state.name == "PRUNED" else "")
                     for t in step.trials)
    if step.orphans:
        counts["FAIL", ""] += step.orphans
    return [{"study": step.study_name, "step": step.name, "state": state,
             TrialAttr.PRUNE_REASON: reason, "trials": n} for (state, reason), n in sorted(counts.items())]


#: Beside best-args.txt: upstream's dense copies of the winner's training split, by stage.
UPSTREAM_DATA = "upstream-data"


@dataclass
class Export:
    paths: dict[str, Path] = field(default_factory=dict)
    #: Pruned trials of the whole sweep by prune reason.
    pruned: Counter = field(default_factory=Counter)
    #: Why best.yaml and best-args.txt were not written (None when they were).
    no_winner: str | None = None
    #: Upstream's dense copy of the winner's training split, when ``upstream_data`` asked for it.
    upstream_copy: DenseCopy | None = None
    #: What the export says about the upstream data (Stage 1's file is upstream's form already).
    upstream_note: str | None = None
    #: Why the dense copy asked for was not written (None when it was, or was not asked for).
    no_upstream_data: str | None = None


def export_sweep(spec: Any, out_dir: str | Path | None = None, storage_url: str | None = None,
                 upstream_data: bool = False, progress: bool = False) -> Export:
    """Write the export files of ``spec``'s sweep; ``upstream_data``: also upstream's dense copy of a
    Stage 2/3 winner's training split (a progress bar while it is written, with ``progress``)."""
    import pandas as pd

    record = read_sweep(spec, storage_url=storage_url)
    ran = record.require_ran()  # a study of a step the spec no longer has is not exported and decides nothing
    out = Path(out_dir) if out_dir else spec.results_path
    out.mkdir(parents=True, exist_ok=True)
    export = Export({"trials": out / "trials.csv", "steps": out / "steps.csv",
                     "prune_reasons": out / "prune_reasons.csv"})
    final = record.final_winner
    last = len(spec.steps) - 1

    def winner_of(step: StepRecord) -> ConfigKey | None:
        return final if step.index == last else None

    reasons = [r for s in ran for r in reason_rows(s)]
    write_atomic(export.paths["trials"], pd.DataFrame([r for s in ran for r in trial_rows(s, winner_of(s))])
                 .to_csv(index=False))
    write_atomic(export.paths["steps"], pd.DataFrame([r for s in ran for r in step_rows(s, winner_of(s))],
                                                     columns=STEP_COLUMNS).to_csv(index=False))
    write_atomic(export.paths["prune_reasons"], pd.DataFrame(reasons, columns=REASON_COLUMNS).to_csv(index=False))
    for row in reasons:
        if row["state"] == "PRUNED":
            export.pruned[row[TrialAttr.PRUNE_REASON]] += row["trials"]
    command = f"sweep export {shlex.quote(command_name(spec))}" + (f" --out {shlex.quote(str(out_dir))}"
                                                                      if out_dir else "") + " --upstream-data"
    _export_winner(spec, record, out, export, DenseRequest(upstream_data, progress, command))
    return export


@dataclass(frozen=True)
class DenseRequest:
    """Whether to write upstream's dense copy, with a progress bar or not, and the command that does."""

    write: bool = False
    progress: bool = False
    command: str = "sweep export SPEC --upstream-data"


def _export_winner(spec: Any, record: SweepRecord, out: Path, export: Export,
                   dense: DenseRequest = DenseRequest()) -> None:
    """best.yaml and best-args.txt from the spec's last step, or the reason there is no winner."""
    from maou.trainer.config import dump_train_config, train_config_from_dict

    for stale in ("best.yaml", "best-args.txt", "stage1/all.feather"):  # never leave an earlier winner behind
        (out / stale).unlink(missing_ok=True)
    last = record.ran[-1]
    decision = last.decision
    if len(record.ran) < len(spec.steps) or decision is None:
        export.no_winner = f"the sweep has not finished: step {last.study_name} is the last that ran"
        return
    if decision.failed:
        export.no_winner = f"step {last.study_name}: no trial completed"
        return
    trials = [t for t in last.trials_of(decision.winner_key) if t.config]
    if not trials:
        export.no_winner = f"step {last.study_name}: no trial of the winner recorded its config"
        return
    config = dict(trials[0].config)
    config["seed"] = spec.seed_list[0]
    best = export.paths["best"] = out / "best.yaml"
    write_atomic(best, f"# winner of sweep {spec.name} ({last.study_name}); run with: sweep train {best}\n"
                 + dump_train_config(train_config_from_dict(config)))
    winner = train_config_from_dict(config)
    data = _synthetic_data(winner.stage, upstream_data(winner), out, export)
    data = _dense_data(winner.stage, data, out, export, dense)
    export.paths["best_args"] = out / "best-args.txt"
    write_atomic(export.paths["best_args"], render(upstream_args(winner, data)))


def _synthetic_data(stage_number: int, data: UpstreamData, out: Path, export: Export) -> UpstreamData:
    """Stage 1's synthetic rows for upstream: in the winner's build folder when a build wrote them
    there, else written beside best-args.txt (``stage1/all.feather``, the same 1,105 rows)."""
    from maou.stages import stage

    if data.path.is_file() or stage(stage_number).data_source != "synthetic":
        return data
    from maou.data.writers import write_stage1

    folder = out / data.path.parent.name
    write_stage1(folder)
    export.paths["stage1_data"] = folder / data.path.name
    return dataclasses.replace(data, path=(folder / data.path.name).absolute())


def _dense_data(stage_number: int, data: UpstreamData, out: Path, export: Export,
                dense: DenseRequest) -> UpstreamData:
    """Upstream's dense copy of a Stage 2/3 winner's training split (``upstream-data/stageN/``): written
    when asked (the built file verified against its manifest first), named when a current copy is
    there; else the built file, whose note gives ``dense.command``."""
    from maou.data.dense import is_current_copy, needs_dense_copy, write_dense_copy

    if not needs_dense_copy(stage_number):
        if dense.write:
            export.upstream_note = (f"Stage {stage_number}'s data file is upstream's dense form already: "
                                    "no copy to write")
        return data
    data = dataclasses.replace(data, dense_command=dense.command)
    dest = (out / UPSTREAM_DATA / data.path.parent.name / data.path.name).absolute()
    if dense.write:
        if not data.path.is_file():
            export.no_upstream_data = (f"{data.path} is not on this machine, so neither is its dense copy: "
                                       "build it (best-args.txt says how), then export again")
            return data
        _verify_built(data.path, stage_number)
        export.upstream_copy = write_dense_copy(data.path, dest, stage_number, data.sha256, dense.progress)
    elif not is_current_copy(dest, stage_number, data.sha256):
        return data
    export.paths["upstream_data"] = dest
    return dataclasses.replace(data, path=dest, dense_of=data.path)


def _verify_built(path: Path, stage_number: int) -> None:
    """The built file about to be converted, against its build's manifest (sizes and SHA-256, cached)."""
    from maou.data.verify import rebuild_command, verify_dataset
    from maou.layout import MANIFEST

    folder = path.parent.parent
    if not (folder / MANIFEST).is_file():
        return
    mismatch = verify_dataset(folder, [stage_number], "full").mismatch
    if mismatch is not None:
        raise UserError(f"{mismatch.describe()}; rebuild it with `{rebuild_command(folder)}`, then export again")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename: a reader (or a crash) never
    sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


__all__ = ["DenseRequest", "Export", "UPSTREAM_DATA", "export_sweep", "reason_rows", "step_rows", "trial_rows",
           "write_atomic"]
