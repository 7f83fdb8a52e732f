"""``sweep report``: the whole sweep on one self-contained HTML page (plotly inlined, no network).

The setup every trial shared (model, budget, seeds, data, device), a glossary of the words the
tables use, the chain of steps with their questions and decisions, and per step: its leaderboard
with its comparisons, a figure of the configurations' gains over the carried one, its learning
curves (one colour per configuration, a diverged run clipped to the axis edge, see
:mod:`maou.sweep.results.plots`), and every pruned or failed trial with its reason and numbers.

Everything is read through :mod:`maou.sweep.records`; every number is written by
:func:`maou.sweep.numbers.fmt`.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from maou.sweep.identity import BASE, ConfigKey
from maou.sweep.numbers import fmt
from maou.sweep.records import RecordedDecision, StepRecord, SweepRecord, TrialRecord, read_sweep

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}.winner{background:#e8f5e9}.edge{color:#b26a00}.failed{color:#c62828}
section{margin-bottom:3em}code{background:#f4f4f4;padding:0 3px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.term{text-decoration:underline dotted;cursor:help}.swatch{display:inline-block;width:0.8em;height:0.8em;
margin-right:0.4em;border-radius:2px;vertical-align:middle}table.setup th{width:7em}
dl.glossary{display:grid;grid-template-columns:max-content auto;gap:0.2em 1em;font-size:0.92em;margin:0.5em 0}
dl.glossary dt{font-weight:600}dl.glossary dd{margin:0}.caption{font-size:0.9em;color:#555;margin:0.2em 0 1em}"""

#: The words the tables use, explained once near the first table and on hover wherever they appear.
GLOSSARY = {
    BASE: "the spec's base configuration (its base, budget and data) with no override; every other "
          "configuration is written as the keys where it differs from it",
    "carried": "the configuration a step starts from: the previous step's winner (the base configuration in "
               "the first step); it runs in every step, and a challenger replaces it only with a significant gain",
    "winner": "the configuration the step hands on: the challenger adopted by the rule under the step's table, "
              "else the carried configuration itself",
    "edge": "the winner took the smallest or largest value of a grid key (with at least 3 numeric values): "
            "the best value may lie beyond the grid; a step's extend: N grows the grid past it",
    "gain": "a challenger's mean difference from the carried configuration over the seeds both completed, "
            "signed so that positive is better whichever the objective's direction",
    "raced": "a challenger stopped once it was significantly worse than the carried configuration at the same "
             "share of the budget (racing: paired over the seeds that got there); its seeds not started were not "
             "run; it counts in the correction for many challengers at p = 1",
    "pruned": "a trial stopped early by a pruning rule (its reason, step and numbers are listed under the "
              "step); a configuration with a pruned or failed trial never wins",
}


def _e(value: Any) -> str:
    """A value as text, numbers in the one format (:func:`fmt`)."""
    return html.escape(fmt(value))


def _term(word: str, shown: str | None = None) -> str:
    """``word`` with its glossary explanation on hover."""
    return f'<span class="term" title="{html.escape(GLOSSARY[word])}">{html.escape(shown or word)}</span>'


def _swatch(color: str | None) -> str:
    return f'<span class="swatch" style="background:{color}"></span>' if color else ""


def _config(key: ConfigKey, colors: dict[ConfigKey, str] | None = None) -> str:
    swatch = _swatch((colors or {}).get(key))
    if key.is_base:
        return f"{swatch}<code>{_term(BASE)}</code>"
    return swatch + "<br>".join(f"<code>{html.escape(pair)}</code>" for pair in key.pairs())


def _verdict(decision: RecordedDecision | None) -> str:
    from maou.sweep.results.status import verdict

    css = "failed" if decision is not None and decision.failed else ("edge" if decision and decision.edge else "")
    text = html.escape(verdict(decision))
    text = text.replace("kept carried", f"kept {_term('carried')}").replace("; edge:", f"; {_term('edge')}:")
    return f'<span class="{css}">{text}</span>'


# --------------------------------------------------------------------------- the setup


def _model(config: Any) -> str:
    m = config.model
    text = f"{m.arch}, {m.blocks} block{'s' if m.blocks != 1 else ''} × {m.channels} channels"
    if m.hidden_dim is not None:
        text += f", head hidden_dim {fmt(m.hidden_dim)}"
    if m.dropout:
        text += f", dropout {fmt(m.dropout)}"
    return html.escape(text)


def _budget(config: Any, trials: list[TrialRecord]) -> str:
    b = config.budget
    length = f"max_steps {fmt(b.max_steps)}" if b.max_steps is not None else f"epochs {fmt(b.epochs)}"
    ran = sorted({t.max_steps for t in trials if t.max_steps is not None})
    if b.max_steps is None and ran:
        length += f" (= {', '.join(fmt(s) for s in ran)} optimizer steps)"
    start = " and once before training (step 0)" if config.eval_at_start else ""
    return html.escape(f"{length} per trial, evaluated every {fmt(b.eval_every)} steps{start}; "
                       f"batch_size {fmt(config.batch_size)}")


def _rows(directory: str, stage_number: int) -> str:
    """``(N train / M val rows)`` from the built dataset's manifest, when it is there."""
    from maou.layout import stage_rows

    rows = stage_rows(directory, stage_number) or {}
    if "train" not in rows or "val" not in rows:
        return ""
    return f" ({fmt(rows['train'])} train / {fmt(rows['val'])} val rows)"


def _data(spec: Any, record: SweepRecord) -> str:
    from maou.stages import stage

    if stage(spec.stage).data_source == "synthetic":
        return f"synthetic Stage {spec.stage} rows (this stage reads no game records)"
    trials = record.trials()
    games = ", ".join(f"<code>{html.escape(g)}</code>" for g in spec.data.games)
    dirs = sorted({str(d) for t in trials if (d := (t.config.get("data") or {}).get("dir"))})
    if not dirs and spec.data.dir:
        dirs = [spec.data.dir]
    text = f"games: {games}; split: val_fraction {_e(spec.data.val_fraction)}, split_seed {_e(spec.data.split_seed)}"
    if dirs:
        text += "; dataset: " + ", ".join(f"<code>{html.escape(d)}</code>{_rows(d, spec.stage)}" for d in dirs)
    hashes = sorted({h for t in trials if (h := t.dataset_hash)}
                    | {h for s in record.ran if (h := (s.fingerprint or {}).get("dataset_hash"))})
    if hashes:
        text += "; content hash " + ", ".join(f"<code>{html.escape(h[:12])}</code>" for h in hashes)
    return text


def _device(config: Any, trials: list[TrialRecord]) -> str:
    ran = Counter(t.device for t in trials if t.device)
    executors = sorted({t.executor for t in trials if t.executor})
    used = ", ".join(f"{html.escape(d)} ({n} trial{'s' if n != 1 else ''})" for d, n in sorted(ran.items()))
    text = f"{used or 'no trial recorded one yet'}; requested: <code>{html.escape(config.device)}</code>"
    if executors:
        text += f"; executor: {html.escape(', '.join(executors))}"
    return text


def _setup(spec: Any, record: SweepRecord) -> str:
    config = spec.base_config()
    trials = record.trials()
    seeds = spec.seed_list
    objective = spec.step_objective(0)
    rows = [("model", _model(config)), ("budget", _budget(config, trials)),
            ("seeds", html.escape(f"{', '.join(fmt(s) for s in seeds)} ({len(seeds)} per configuration)")),
            ("data", _data(spec, record)), ("device", _device(config, trials)),
            ("objective", html.escape(f"{objective.metric} ({objective.direction}, {objective.reduce} value)")
             + (" unless a step sets its own" if any(s.objective for s in spec.steps) else "")),
            ("storage", f"<code>{html.escape(record.storage)}</code>")]
    body = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<h2>Setup</h2><table class='setup'>{body}</table>"


def _glossary(record: SweepRecord) -> str:
    raced = any(e.raced is not None for s in record.steps if s.decision for e in s.decision.leaderboard)
    items = "".join(f"<dt>{html.escape(word)}</dt><dd>{html.escape(text)}</dd>" for word, text in GLOSSARY.items()
                    if word != "raced" or raced)  # a word no table uses is not explained
    return (f"<p class='caption'>Words in the tables (also on hover where they appear; numbers to 4 significant "
            f"digits):</p><dl class='glossary'>{items}</dl>")


# --------------------------------------------------------------------------- the steps


def _chain(spec: Any, steps: tuple[StepRecord, ...]) -> str:
    rows = []
    for index, step in enumerate(spec.steps):
        decision = steps[index].decision
        winner = _config(decision.winner_key) if decision is not None else "-"
        rows.append(f"<tr><td>{index + 1}. <a href='#step-{index + 1}'>{html.escape(step.name)}</a></td>"
                    f"<td>{html.escape(step.description)}</td><td>{winner}</td>"
                    f"<td>{_verdict(decision) if steps[index].started else 'not run yet'}</td></tr>")
    return (f"<table><tr><th>step</th><th>question</th><th>{_term('winner')}</th><th>decision</th></tr>"
            + "".join(rows) + "</table>")


def _leaderboard(decision: RecordedDecision, colors: dict[ConfigKey, str]) -> str:
    rows = []
    for e in decision.leaderboard:
        c = decision.comparison_of(e.key) or {}
        css = ' class="winner"' if e.key == decision.winner_key else ""
        marks = [_term("winner")] if e.key == decision.winner_key else []
        if e.key == decision.carried_key:
            marks.append(_term("carried"))
        if e.raced is not None:
            marks.append(f"{_term('raced')} at step {e.raced}")
        if e.key == decision.winner_key and decision.edge:
            marks.append(f"<span class='edge'>{_term('edge')}: {html.escape(', '.join(decision.edge))}</span>")
        guards = "<br>".join(html.escape(str(g)) for g in c.get("guard_failures", []))
        numbers = (e.mean, e.sem, e.n, e.pruned, e.failed, c.get("gain"), c.get("p"), c.get("holm_level"))
        cells = "".join(f"<td class='num'>{_e(v)}</td>" for v in numbers)
        rows.append(f"<tr{css}><td>{_config(e.key, colors)}</td>{cells}<td>{guards}</td>"
                    f"<td>{'<br>'.join(marks)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("configuration", "mean", "± se", "n", _term("pruned"), "failed",
                                             _term("gain"), "p", "Holm level", "guard", ""))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _counts(step: StepRecord) -> str:
    counts = Counter((t.state.name, (t.prune_reason or "") if t.state == TrialState.PRUNED else "")
                     for t in step.trials)
    items = ", ".join(f"{html.escape(state)}{' (' + html.escape(reason) + ')' if reason else ''}: {n}"
                      for (state, reason), n in sorted(counts.items()))
    if step.orphans:
        items += f", never configured (interrupted before its configuration was recorded): {step.orphans}"
    return f"<p>Trials: {items or 'none yet'}</p>"


def _error_line(trial: TrialRecord) -> str:
    lines = (trial.error or "").strip().splitlines()
    return lines[-1] if lines else ""


def _ended(step: StepRecord, colors: dict[ConfigKey, str]) -> str:
    """Every pruned trial with its reason, step and detail; every failed trial with its reason."""
    ended = sorted((t for t in step.trials if t.state in (TrialState.PRUNED, TrialState.FAIL)),
                   key=lambda t: t.number)
    if not ended:
        return "<p>No trial of this step was pruned or failed.</p>"
    rows = []
    for t in ended:
        if t.state == TrialState.PRUNED:
            outcome, reason, at, detail = "pruned", t.prune_reason or "pruned", t.prune_step, t.prune_detail
        else:
            outcome, reason, at, detail = "failed", t.fail_reason or "error", t.steps_done, _error_line(t)
        copied = f"<br><small>copied from {html.escape(t.reused_from)}</small>" if t.reused_from else ""
        rows.append(f"<tr class='{'failed' if outcome == 'failed' else ''}' id='trial-{step.index + 1}-{t.number}'>"
                    f"<td class='num'>#{t.number}</td><td>{_config(t.key, colors)}</td><td class='num'>{_e(t.seed)}"
                    f"</td><td>{outcome}</td><td><code>{html.escape(reason)}</code></td><td class='num'>{_e(at)}</td>"
                    f"<td>{html.escape(detail or '')}{copied}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("trial", "configuration", "seed", "outcome", "reason", "at step",
                                             "detail"))
    return (f"<h3>Pruned and failed trials</h3><table class='ended'><tr>{head}</tr>{''.join(rows)}</table>")


def _step_section(spec: Any, index: int, record: StepRecord, first_figure: bool) -> tuple[str, bool]:
    from maou.sweep.results.plots import CLIP_RULE, curves_figure, means_figure, step_colors

    step, objective = spec.steps[index], spec.step_objective(index)
    decision = record.decision
    colors = step_colors(record)
    carried = decision.carried_key if decision is not None else ConfigKey.of(record.carried_in)
    parts = [f"<section id='step-{index + 1}'><h2>{index + 1}. {html.escape(step.name)}</h2>",
             f"<p><b>Question:</b> {html.escape(step.description)}<br><b>Objective:</b> "
             f"{html.escape(objective.metric)} ({html.escape(objective.direction)})<br>"
             f"<b>{_term('carried', 'Carried')} in:</b> {_config(carried, colors)}</p>", _counts(record)]
    ended = _ended(record, colors)
    if decision is None:
        return "".join(parts) + "<p>In progress: no decision yet.</p>" + ended + "</section>", first_figure
    title = f"{index + 1:02d}-{step.name}"
    parts += [f"<p><b>Decision:</b> {_verdict(decision)}</p>", _leaderboard(decision, colors),
              f"<p><small>Rule: {html.escape(decision.rule)}</small></p>"]
    figures = [(curves_figure(list(record.trials), objective.metric, title, colors),
                f"Curves: one colour per configuration, all its seeds alike; pruned runs dashed, x where cut. "
                f"{CLIP_RULE}; the note gives a clipped run's value and step.")]
    if sum(e.mean is not None for e in decision.leaderboard) > 1:  # one configuration: its mean is the table
        figures.insert(0, (means_figure(decision, objective.metric, title, objective.direction, colors),
                           "Bars: each configuration's mean minus the carried configuration's (negated when lower "
                           "is better), so 0 is the carried configuration and up is better; error bars: ± 1 "
                           "standard error of the configuration's mean."))
    for figure, caption in figures:
        parts.append(figure.to_html(full_html=False, include_plotlyjs=first_figure,
                                    config={"responsive": True, "displaylogo": False}))
        parts.append(f"<p class='caption'>{html.escape(caption)}</p>")
        first_figure = False
    return "".join(parts) + ended + "</section>", first_figure


def build_report(spec: Any, storage: Any) -> str:
    record = read_sweep(spec, storage)
    sections, first_figure = [], True
    for step in record.steps:
        if step.started:
            section, first_figure = _step_section(spec, step.index, step, first_figure)
            sections.append(section)
    title = f"sweep {spec.name}: stage {spec.stage}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(spec.description)}</p>"
            f"{_setup(spec, record)}<h2>The chain of steps</h2>{_glossary(record)}{_chain(spec, record.steps)}"
            f"{''.join(sections)}</body></html>")


def write_report(spec: Any, out: str | Path | None = None, storage_url: str | None = None) -> Path:
    from maou.sweep.results.export import write_atomic
    from maou.sweep.storage import open_storage

    storage = open_storage(storage_url or spec.storage_url, create=False)
    read_sweep(spec, storage, storage_url).require_ran()  # a storage without a step: refused, as export does
    path = Path(out) if out else spec.results_path / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, build_report(spec, storage))
    return path


__all__ = ["GLOSSARY", "build_report", "write_report"]
