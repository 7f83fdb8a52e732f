"""``sweep report``: the whole sweep on one self-contained HTML page (plotly inlined, no network).

The chain of steps with their questions and decisions, each step's leaderboard with its
comparisons and a figure of the means with error bars, its learning curves (pruned runs marked
where they were cut), and the trials of every step counted by state and prune reason.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any

from maou.sweep.identity import ConfigKey
from maou.sweep.records import RecordedDecision, StepRecord, read_sweep

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}.winner{background:#e8f5e9}.edge{color:#b26a00}.failed{color:#c62828}
section{margin-bottom:3em}code{background:#f4f4f4;padding:0 3px}"""


def _e(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("-" if value is None else str(value))


def _config(key: ConfigKey) -> str:
    return "<br>".join(f"<code>{_e(k)}={_e(v)}</code>" for k, v in key.items) or "<code>(base)</code>"


def _verdict(decision: RecordedDecision | None) -> str:
    from maou.sweep.results.status import verdict

    css = "failed" if decision is not None and decision.failed else ("edge" if decision and decision.edge else "")
    return f'<span class="{css}">{_e(verdict(decision))}</span>'


def _chain(spec: Any, steps: tuple[StepRecord, ...]) -> str:
    rows = []
    for index, step in enumerate(spec.steps):
        decision = steps[index].decision
        winner = _config(decision.winner_key) if decision is not None else "-"
        rows.append(f"<tr><td>{index + 1}. <a href='#step-{index + 1}'>{_e(step.name)}</a></td>"
                    f"<td>{_e(step.description)}</td><td>{winner}</td>"
                    f"<td>{_verdict(decision) if steps[index].started else 'not run yet'}</td></tr>")
    return ("<table><tr><th>step</th><th>question</th><th>winner</th><th>decision</th></tr>"
            + "".join(rows) + "</table>")


def _leaderboard(decision: RecordedDecision) -> str:
    rows = []
    for e in decision.leaderboard:
        c = decision.comparison_of(e.key) or {}
        css = ' class="winner"' if e.key == decision.winner_key else ""
        mark = "winner" if e.key == decision.winner_key else ("carried" if e.key == decision.carried_key else "")
        guards = "<br>".join(_e(g) for g in c.get("guard_failures", []))
        rows.append(f"<tr{css}><td>{_config(e.key)}</td><td>{_e(e.mean)}</td><td>{_e(e.sem)}</td><td>{e.n}</td>"
                    f"<td>{e.pruned}</td><td>{e.failed}</td><td>{_e(c.get('gain'))}</td><td>{_e(c.get('p'))}</td>"
                    f"<td>{_e(c.get('holm_level'))}</td><td>{guards}</td><td>{mark}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("configuration", "mean", "± se", "n", "pruned", "failed", "gain",
                                             "p", "Holm level", "guard", ""))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _counts(step: StepRecord) -> str:
    counts = Counter((t.state.name, (t.prune_reason or "") if t.state.name == "PRUNED" else "")
                     for t in step.trials)
    items = ", ".join(f"{_e(state)}{' (' + _e(reason) + ')' if reason else ''}: {n}"
                      for (state, reason), n in sorted(counts.items()))
    return f"<p>Trials: {items}</p>"


def _step_section(spec: Any, index: int, record: StepRecord, first_figure: bool) -> tuple[str, bool]:
    from maou.sweep.results.plots import curves_figure, means_figure

    step, objective = spec.steps[index], spec.step_objective(index)
    decision = record.decision
    trials = list(record.trials)
    parts = [f"<section id='step-{index + 1}'><h2>{index + 1}. {_e(step.name)}</h2>",
             f"<p><b>Question:</b> {_e(step.description)}<br><b>Objective:</b> {_e(objective.metric)} "
             f"({_e(objective.direction)})</p>", _counts(record)]
    if decision is None:
        return "".join(parts) + "<p>In progress: no decision yet.</p></section>", first_figure
    title = f"{index + 1:02d}-{step.name}"
    parts += [f"<p><b>Decision:</b> {_verdict(decision)}</p>", _leaderboard(decision),
              f"<p><small>{_e(decision.rule)}</small></p>"]
    for figure in (means_figure(decision, objective.metric, title), curves_figure(trials, objective.metric, title)):
        parts.append(figure.to_html(full_html=False, include_plotlyjs=first_figure))
        first_figure = False
    return "".join(parts) + "</section>", first_figure


def build_report(spec: Any, storage: Any) -> str:
    record = read_sweep(spec, storage)
    sections, first_figure = [], True
    for step in record.steps:
        if step.started:
            section, first_figure = _step_section(spec, step.index, step, first_figure)
            sections.append(section)
    title = f"sweep {spec.name}: stage {spec.stage}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_STYLE}</style>"
            f"</head><body><h1>{_e(title)}</h1><p>{_e(spec.description)}</p><h2>The chain of steps</h2>"
            f"{_chain(spec, record.steps)}{''.join(sections)}</body></html>")


def write_report(spec: Any, out: str | Path | None = None, storage_url: str | None = None) -> Path:
    from maou.sweep.results.export import write_atomic
    from maou.sweep.storage import open_storage

    storage = open_storage(storage_url or spec.storage_url, create=False)
    path = Path(out) if out else spec.results_path / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, build_report(spec, storage))
    return path


__all__ = ["build_report", "write_report"]
