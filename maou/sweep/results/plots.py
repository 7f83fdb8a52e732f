"""The figures of a step (plotly): its configurations' means with error bars, and the learning
curves of its trials with pruned runs marked where they were cut. Attached to each step study
for optuna-dashboard, and drawn again in ``sweep report``."""

from __future__ import annotations

import math
from typing import Any

from maou.sweep.identity import ConfigKey
from maou.sweep.records import RecordedDecision, TrialRecord

WINNER, CARRIED, OTHER, PRUNED = "#2e7d32", "#1565c0", "#9e9e9e", "#c62828"


def _label(key: ConfigKey) -> str:
    return "<br>".join(f"{k}={v}" for k, v in key.items) or "(base)"


def means_figure(decision: RecordedDecision, metric: str, title: str) -> Any:
    """Configuration means over seeds, error bars of one standard error, winner and carried marked."""
    import plotly.graph_objects as go

    entries = [e for e in decision.leaderboard if e.mean is not None]
    colors = [WINNER if e.key == decision.winner_key else CARRIED if e.key == decision.carried_key else OTHER
              for e in entries]
    figure = go.Figure(go.Bar(
        x=[_label(e.key) for e in entries], y=[e.mean for e in entries], marker_color=colors,
        error_y={"type": "data", "array": [e.sem or 0.0 for e in entries], "visible": True},
        hovertext=[f"n={e.n}, pruned={e.pruned}, failed={e.failed}" for e in entries]))
    spans = [(e.mean - (e.sem or 0.0), e.mean + (e.sem or 0.0)) for e in entries if e.mean is not None]
    low, high = min((s[0] for s in spans), default=0.0), max((s[1] for s in spans), default=1.0)
    pad = (high - low) * 0.2 or abs(high) * 0.05 or 0.01
    figure.update_layout(title=f"{title}: mean {metric} (± se); green won, blue carried",
                         yaxis={"title": metric, "range": [low - pad, high + pad]}, showlegend=False,
                         margin={"l": 60, "r": 20, "t": 60, "b": 120})
    return figure


def curves_figure(trials: list[TrialRecord], metric: str, title: str) -> Any:
    """Learning curves of ``metric`` per trial; a pruned trial dashed, with an x where it was cut."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for t in sorted(trials, key=lambda t: t.number):
        curves = t.curves
        steps, values = curves.get("step", []), curves.get(metric, [])
        if not steps or not values:
            continue
        pruned = t.state.name == "PRUNED"
        name = f"#{t.number} {t.key} seed {t.seed}"
        figure.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=name,
                                    line={"dash": "dot" if pruned else "solid", "color": PRUNED if pruned else None}))
        if pruned:
            cut = t.prune_step if t.prune_step is not None else steps[-1]
            last = next((v for s, v in zip(reversed(steps), reversed(values)) if v is not None and s <= cut), None)
            if last is not None and math.isfinite(last):
                figure.add_trace(go.Scatter(
                    x=[cut], y=[last], mode="markers", marker={"symbol": "x", "size": 12, "color": PRUNED},
                    name=f"#{t.number} pruned: {t.prune_reason}", showlegend=False))
    figure.update_layout(title=f"{title}: {metric} in training (red dots: pruned at x)",
                         xaxis={"title": "optimizer step"}, yaxis={"title": metric},
                         margin={"l": 60, "r": 20, "t": 60, "b": 40})
    return figure


__all__ = ["curves_figure", "means_figure"]
