"""The figures of a step (plotly): its configurations' results as gains over the carried
configuration, and the learning curves of its trials. Attached to each step study for
optuna-dashboard, and drawn again in ``sweep report``.

* One colour per configuration (:func:`step_colors`: the carried configuration first, then the
  others in their key order), the same in both figures and in the report's tables.
* Learning curves: all seeds of a configuration in its colour, one legend entry per configuration
  (plotly ``legendgroup``, so a click hides all its seeds), the legend below the plot; a pruned run
  dashed with an x where it was cut.
* The curves' y axis (:func:`y_window`): the typical run's range, the medians over the completed
  runs of each run's lowest and highest value, widened by that range's own span on each side.
  Values beyond it are drawn at the axis edge, marked with a triangle and a ``clipped:`` note
  giving the value and its step, so one diverged run no longer flattens every healthy curve.
* Configuration bars (:func:`means_figure`): the gain over the carried configuration's mean, sign
  set so that up is better (the table's ``gain``), error bars of one standard error; 0 is the
  carried configuration, and its mean is written on the axis.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from maou.stages import direction_sign
from maou.sweep.identity import ConfigKey
from maou.sweep.numbers import fmt
from maou.sweep.records import RecordedDecision, StepRecord, TrialRecord

#: Colours of the configurations, in turn (plotly's qualitative "D3" palette).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
WINNER_OUTLINE = "#1b5e20"
#: The clipping rule (the curve figure's subtitle, one line each; the report's caption).
CLIP_RULE_LINES = ("y range: the typical run's range (medians over the completed runs of each run's lowest and "
                   "highest value) widened by its own span on each side",
                   "values beyond it are clipped to the axis edge (▲ ▼)")
CLIP_RULE = "; ".join(CLIP_RULE_LINES)
#: Clipped runs that get a written note on the figure; the others are marked and listed on hover.
MAX_CLIP_NOTES = 4


def config_colors(keys: Iterable[ConfigKey], carried: ConfigKey | None = None) -> dict[ConfigKey, str]:
    """A colour per configuration: ``carried`` first (when given), then the others in key order."""
    ordered = sorted(set(keys))
    if carried is not None:
        ordered = [carried] + [k for k in ordered if k != carried]
    return {key: PALETTE[i % len(PALETTE)] for i, key in enumerate(ordered)}


def step_colors(step: StepRecord) -> dict[ConfigKey, str]:
    """The colours of a step's configurations (its trials' and its leaderboard's)."""
    keys = {t.key for t in step.trials}
    carried = ConfigKey.of(step.carried_in)
    if step.decision is not None:
        keys |= {e.key for e in step.decision.leaderboard}
        carried = step.decision.carried_key
    return config_colors(keys | {carried}, carried)


def _label(key: ConfigKey) -> str:
    return key.label("<br>")


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def y_window(runs: Sequence[tuple[Sequence[float | None], bool]]) -> tuple[float, float] | None:
    """The window of values the curves' y axis shows, from ``(values, completed)`` per run: the
    typical run's range, ``[lo, hi]`` = the medians over the completed runs (over all runs when
    none completed) of each run's lowest and highest finite value, widened by ``hi - lo`` on each
    side (by a tenth of ``|hi|``, else 1, when that is 0). None: no finite value at all."""
    finite = [([v for v in values if _finite(v)], completed) for values, completed in runs]
    typical = [vs for vs, completed in finite if vs and completed] or [vs for vs, _ in finite if vs]
    if not typical:
        return None
    lo = statistics.median(min(vs) for vs in typical)
    hi = statistics.median(max(vs) for vs in typical)
    span = (hi - lo) or abs(hi) * 0.1 or 1.0
    return lo - span, hi + span


def y_range(runs: Sequence[tuple[Sequence[float | None], bool]]) -> tuple[float, float, float, float] | None:
    """``(bottom, top, low_fence, high_fence)``: the axis range (every value inside the
    :func:`y_window`, padded by 5%) and the window itself; a value outside the window is clipped."""
    window = y_window(runs)
    if window is None:
        return None
    low, high = window
    inside = [v for values, _ in runs for v in values if _finite(v) and low <= v <= high] or [low, high]
    bottom, top = min(inside), max(inside)
    pad = (top - bottom) * 0.05 or (high - low) * 0.05
    return bottom - pad, top + pad, low, high


@dataclass(frozen=True)
class Clipped:
    """A run's values beyond the y window: drawn at the axis edge."""

    trial: TrialRecord
    steps: list[Any]
    values: list[float]
    edges: list[float]

    @property
    def worst(self) -> tuple[Any, float, float]:
        """(step, value, edge) of its value farthest outside (the first of equals)."""
        i = max(range(len(self.values)), key=lambda j: abs(self.values[j] - self.edges[j]))
        return self.steps[i], self.values[i], self.edges[i]


def curves_figure(trials: list[TrialRecord], metric: str, title: str,
                  colors: dict[ConfigKey, str] | None = None) -> Any:
    """Learning curves of ``metric``: one colour per configuration, its seeds alike; a pruned run
    dashed, with an x where it was cut; values beyond the :func:`y_window` clipped to its edge."""
    import plotly.graph_objects as go

    runs = [t for t in sorted(trials, key=lambda t: (t.key, t.number))
            if t.curves.get("step") and t.curves.get(metric)]
    colors = colors or config_colors(t.key for t in runs)
    bounds = y_range([(t.curves[metric], t.state.name == "COMPLETE") for t in runs])
    figure = go.Figure()
    clipped: list[Clipped] = []
    order = list(colors)
    for key in sorted({t.key for t in runs}, key=lambda k: (order.index(k) if k in order else len(order), k)):
        n = sum(1 for t in runs if t.key == key)  # one legend entry per configuration, in colour order
        drawn = sum(1 for t in runs if t.key == key and any(_finite(v) for v in t.curves[metric]))
        runs_text = f"{n} run{'s' if n != 1 else ''}" + ("" if drawn == n else f", {n - drawn} without a finite value")
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"color": colors.get(key, "#444")},
                                    name=f"{key.label()} ({runs_text})", legendgroup=key.text, showlegend=True))
    for t in runs:
        steps, values = list(t.curves["step"]), list(t.curves[metric])
        color = colors.get(t.key, "#444")
        shown = list(values)
        cut: Clipped | None = None
        if bounds is not None:
            bottom, top, low, high = bounds
            out = [i for i, v in enumerate(values) if _finite(v) and not low <= v <= high]
            for i in out:
                shown[i] = top if values[i] > high else bottom
            if out:
                cut = Clipped(t, [steps[i] for i in out], [values[i] for i in out], [shown[i] for i in out])
                clipped.append(cut)
        pruned = t.state.name == "PRUNED"
        head = f"#{t.number} {t.key.label()}, seed {t.seed}" + (f" (pruned: {t.prune_reason})" if pruned else "")
        figure.add_trace(go.Scatter(
            x=steps, y=shown, mode="lines", line={"color": color, "dash": "dash" if pruned else "solid", "width": 1.5},
            legendgroup=t.key.text, showlegend=False, name=f"#{t.number} seed {t.seed}",
            customdata=[fmt(v) for v in values],
            hovertemplate=f"{head}<br>step %{{x}}: {metric} %{{customdata}}<extra></extra>"))
        if pruned:
            at = t.prune_step if t.prune_step is not None else steps[-1]
            last = next(((s, v) for s, v, raw in zip(reversed(steps), reversed(shown), reversed(values))
                         if _finite(raw) and s <= at), None)
            if last is not None:
                figure.add_trace(go.Scatter(
                    x=[last[0]], y=[last[1]], mode="markers", legendgroup=t.key.text, showlegend=False,
                    marker={"symbol": "x", "size": 11, "color": color, "line": {"width": 1, "color": "#222"}},
                    name=f"#{t.number} pruned", cliponaxis=False,
                    hovertemplate=f"{head}<br>cut at step {fmt(t.prune_step)}: {t.prune_detail or ''}<extra></extra>"))
        if cut is not None:
            figure.add_trace(go.Scatter(
                x=cut.steps, y=cut.edges, mode="markers", legendgroup=t.key.text, showlegend=False,
                marker={"symbol": ["triangle-up" if v > e else "triangle-down" for v, e in zip(cut.values, cut.edges)],
                        "size": 12, "color": color, "line": {"width": 1, "color": "#222"}},
                cliponaxis=False, name=f"#{t.number} clipped", customdata=[fmt(v) for v in cut.values],
                hovertemplate=f"{head}<br>clipped: {metric} %{{customdata}} at step %{{x}}<extra></extra>"))
    _legend_keys(figure, pruned=any(t.state.name == "PRUNED" for t in runs), clipped=bool(clipped))
    notes = _clip_notes(figure, clipped, metric)
    lines = [CLIP_RULE_LINES[0], CLIP_RULE_LINES[1] + (f"; {notes}" if notes else "")]
    subtitle = "</sup><br><sup>".join(lines)
    figure.update_layout(
        title={"text": f"{title}: {metric} in training, one colour per configuration<br>"
                       f"<sup>{subtitle}</sup>", "x": 0.01, "xanchor": "left"},
        xaxis={"title": "optimizer step"},
        yaxis={"title": metric, **({"range": list(bounds[:2])} if bounds is not None else {})},
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": -0.14, "yanchor": "top",
                "groupclick": "togglegroup", "font": {"size": 11}},
        height=540, margin={"l": 70, "r": 30, "t": 100, "b": 60})
    return figure


def _legend_keys(figure: Any, pruned: bool, clipped: bool) -> None:
    """Legend entries for the marks (grey): a pruned run's dash and x, a clipped value's triangle."""
    import plotly.graph_objects as go

    if pruned:
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="lines+markers", name="pruned: dashed, x = cut",
                                    line={"color": "#666", "dash": "dash"}, marker={"symbol": "x", "color": "#666"},
                                    legendgroup="_marks", showlegend=True))
    if clipped:
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="▲ ▼ clipped to the axis edge",
                                    marker={"symbol": "triangle-up", "color": "#666"}, legendgroup="_marks",
                                    showlegend=True))


def _clip_notes(figure: Any, clipped: list[Clipped], metric: str) -> str:
    """A ``clipped: value V at step N`` note on the figure for each clipped run (the first
    :data:`MAX_CLIP_NOTES`, farthest out first); the text for the subtitle about the rest."""
    ranked = sorted(clipped, key=lambda c: (-abs(c.worst[1] - c.worst[2]), c.trial.number))
    for c in ranked[:MAX_CLIP_NOTES]:
        step, value, edge = c.worst
        figure.add_annotation(x=step, y=edge, yref="y", showarrow=True, arrowhead=2, ax=40,
                              ay=28 if value > edge else -28, bgcolor="rgba(255,255,255,0.85)", bordercolor="#999",
                              font={"size": 11},
                              text=f"clipped: #{c.trial.number} {metric} {fmt(value)} at step {fmt(step)}")
    rest = len(ranked) - MAX_CLIP_NOTES
    return f"{rest} more clipped run{'s' if rest != 1 else ''} (▲ ▼; hover for the values)" if rest > 0 else ""


def means_figure(decision: RecordedDecision, metric: str, title: str, direction: str | None = None,
                 colors: dict[ConfigKey, str] | None = None) -> Any:
    """Each configuration's mean over its seeds as a gain over the carried configuration's mean
    (up is better whichever the direction), error bars one standard error; the winner outlined."""
    import plotly.graph_objects as go

    direction = direction or decision.direction or "maximize"
    sign = direction_sign(direction)
    entries = [e for e in decision.leaderboard if e.mean is not None]
    missing = [e.key.label() for e in decision.leaderboard if e.mean is None]
    colors = colors or config_colors((e.key for e in decision.leaderboard), decision.carried_key)
    carried = next((e for e in entries if e.key == decision.carried_key), None)
    if carried is not None and carried.mean is not None:
        base, base_text = carried.mean, f"0 = carried mean {fmt(carried.mean)}"
    else:  # the carried configuration has no completed run
        base = statistics.median(e.mean for e in entries if e.mean is not None) if entries else 0.0
        base_text = f"0 = median of the means {fmt(base)}"
    gains = [sign * ((e.mean or 0.0) - base) for e in entries]
    marks = [", ".join(m for m, k in (("winner", decision.winner_key), ("carried", decision.carried_key))
                       if e.key == k) for e in entries]
    ticks = [f"{_label(e.key)}<br><b>{m}</b> {fmt(g)}" if m else f"{_label(e.key)}<br>{fmt(g)}"
             for e, m, g in zip(entries, marks, gains)]
    figure = go.Figure(go.Bar(
        x=ticks, y=gains,
        marker={"color": [colors.get(e.key, "#9e9e9e") for e in entries],
                "line": {"color": [WINNER_OUTLINE if m.startswith("winner") else "rgba(0,0,0,0)" for m in marks],
                         "width": 3}},
        error_y={"type": "data", "array": [e.sem or 0.0 for e in entries], "visible": True, "color": "#333"},
        customdata=[[fmt(e.mean), fmt(e.sem), e.n, e.pruned, e.failed, fmt(g)] for e, g in zip(entries, gains)],
        hovertemplate=(f"%{{x}}<br>mean {metric} %{{customdata[0]}} ± %{{customdata[1]}} (se)<br>"
                       "gain %{customdata[5]}<br>n=%{customdata[2]}, pruned=%{customdata[3]}, failed=%{customdata[4]}"
                       "<extra></extra>")))
    better = "higher" if sign > 0 else "lower"
    formula = "mean − carried mean" if sign > 0 else "carried mean − mean"
    lines = [f"bar = gain over the carried configuration ({formula}; {better} {metric} is better, so up is better)",
             "error bars ± 1 se of the configuration's mean; winner outlined; under each bar its gain"]
    if carried is None:
        lines.append("the carried configuration has no completed run: 0 is the median of the means")
    if missing:
        lines.append(f"no completed run, not drawn: {', '.join(missing)}")
    subtitle = "</sup><br><sup>".join(lines)
    figure.update_layout(
        title={"text": f"{title}: {metric} per configuration, relative to the carried one<br><sup>{subtitle}</sup>",
               "x": 0.01, "xanchor": "left"},
        yaxis={"title": f"gain ({base_text})", "zeroline": True, "zerolinewidth": 2, "zerolinecolor": "#444"},
        showlegend=False, height=500, margin={"l": 80, "r": 30, "t": 74 + 18 * len(lines), "b": 120})
    return figure


__all__ = ["CLIP_RULE", "CLIP_RULE_LINES", "PALETTE", "config_colors", "curves_figure", "means_figure", "step_colors",
           "y_range", "y_window"]
