"""What ``sweep report`` tells a reader: the setup the trials shared, the words of its tables, every
pruned or failed trial with its numbers, figures whose axes a diverged run cannot flatten and whose
bars start from a stated baseline, and one number format throughout."""

from __future__ import annotations

import html
import math
import re
from datetime import datetime

import pytest
import yaml
from fakes import DIVERGED_LOSS, FakeTrainer, lr_batch_score
from optuna.trial import TrialState

from maou.sweep.identity import ConfigKey
from maou.sweep.locate import load_spec
from maou.sweep.numbers import fmt
from maou.sweep.records import LeaderboardEntry, RecordedDecision, TrialRecord, read_sweep
from maou.sweep.results.plots import CLIP_RULE, curves_figure, means_figure, y_range, y_window
from maou.sweep.results.report import GLOSSARY, build_report
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.run.protocol import run_sweep
from maou.sweep.storage import open_storage

STEPS = [{"name": "baseline", "description": "the base configuration alone"},
         # 0.01 wins at the top of the grid (an edge); 1e-4 diverges on seed 0; 1e-5 is not finite
         {"name": "lr", "description": "does another learning rate help?",
          "grid": {"optim.lr": [1e-5, 0.0001, 0.01]}},
         # 4.0 from YAML is a float: it must read 4, as the base's 1.0 reads 1
         {"name": "pos-weight", "description": "does weighting positives help?",
          "grid": {"loss.pos_weight": [1.0, 4.0]}}]


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """A finished sweep minimizing val_loss (fake trainer) with a diverged run, non-finite runs and
    a failed run (its step stopped undecided, then resumed); its spec and its report's text."""
    from maou.sweep.run.protocol import StepIncomplete

    root = tmp_path_factory.mktemp("report")
    (root / "sweeps").mkdir()
    path = root / "sweeps" / "diverged.yaml"
    path.write_text(yaml.safe_dump({
        "name": "diverged", "stage": 1, "seeds": 3, "steps": STEPS, "description": "a sweep with a diverged run",
        "racing": {"enabled": False},  # every seed of a pruned configuration runs: each is drawn
        "objective": {"metric": "val_loss"}, "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1},
        "budget": {"max_steps": 40, "eval_every": 10}}))
    spec = load_spec(path)
    quirks = {"nan_when": lambda c: c.optim.lr == 1e-5,
              "explode_when": lambda c: c.optim.lr == 0.0001 and c.seed == 0}
    failing = FakeTrainer(lr_batch_score, **quirks, fail_when=lambda c: c.loss.pos_weight == 4.0 and c.seed == 2)
    with pytest.raises(StepIncomplete):
        run_sweep(spec, executor=LocalExecutor(failing))
    run_sweep(spec, executor=LocalExecutor(FakeTrainer(lr_batch_score, **quirks)))  # the resume heals it
    storage = open_storage(spec.storage_url, create=False)
    return spec, read_sweep(spec, storage), build_report(spec, storage)


def visible(page: str) -> str:
    """The page without its scripts (plotly.js and the figures' data)."""
    return re.sub(r"<script.*?</script>", "", page, flags=re.S)


def row(page: str, step: int, number: int) -> str:
    match = re.search(rf"<tr[^>]*id='trial-{step}-{number}'>.*?</tr>", page, flags=re.S)
    assert match, f"no row for trial #{number} of step {step}"
    return match.group(0)


def test_every_pruned_and_failed_trial_is_listed_with_its_reason_and_numbers(diverged):
    _, record, page = diverged
    ended = [(s, t) for s in record.ran for t in s.trials if t.state in (TrialState.PRUNED, TrialState.FAIL)]
    reasons = {t.prune_reason or t.fail_reason for _, t in ended}
    assert reasons == {"divergence", "non_finite", "error"}  # the sweep has all three
    for step, t in ended:
        line = row(page, step.index + 1, t.number)
        assert f"#{t.number}<" in line and f">{t.seed}<" in line
        assert all(f"<code>{html.escape(pair)}</code>" in line for pair in t.key.pairs())
        if t.state == TrialState.PRUNED:
            assert f"<code>{t.prune_reason}</code>" in line and f">{t.prune_step}<" in line
            assert t.prune_detail and html.escape(t.prune_detail) in line
        else:
            assert "<code>error</code>" in line and "fake failure: seed 2 out of memory" in line
    diverged_run = next(t for _, t in ended if t.prune_reason == "divergence")
    assert "val_loss 2021 &gt; 3 x best" in row(page, 2, diverged_run.number)


def test_the_header_states_model_budget_seeds_data_and_device(diverged):
    _, record, page = diverged
    setup = visible(page).split("<h2>The chain of steps</h2>")[0]
    trials = sum(1 for t in record.trials() if t.device)  # a failed training recorded none
    for fragment in ("resnet, 1 block × 8 channels", "max_steps 40 per trial, evaluated every 10 steps",
                     "batch_size 64", "0, 1, 2 (3 per configuration)", "synthetic Stage 1 rows",
                     f"cpu ({trials} trials); requested: <code>auto</code>", "executor: local",
                     "val_loss (minimize, final value)"):
        assert fragment in setup, fragment


def test_base_carried_winner_and_edge_are_explained_where_they_appear(diverged):
    _, record, page = diverged
    shown = visible(page)
    glossary, first_table = shown.index("<dl class='glossary'>"), shown.index("<table><tr><th>step")
    assert glossary < first_table  # explained before the first table that uses the words
    assert record.steps[1].decision.edge == ("optim.lr",)
    for word, text in GLOSSARY.items():
        if word == "raced":  # explained only where a configuration was raced out (none is in this sweep)
            assert f"<dt>{word}</dt>" not in shown
            continue
        assert f"<dt>{html.escape(word)}</dt><dd>{html.escape(text)}</dd>" in shown
        assert f'title="{html.escape(text)}">{html.escape(word)}</span>' in shown, word  # on hover where used
    chain = shown[first_table:shown.index("</table>", first_table)]
    assert ">edge</span>: optim.lr" in chain and ">(base)</span>" in chain


def test_numbers_have_one_format(diverged):
    spec, record, page = diverged
    shown = visible(page)
    assert "loss.pos_weight=4" in shown and "pos_weight=4.0" not in page  # tables and the figures' data
    assert not re.findall(r"\b\d+\.0\b", shown)  # no whole number written as a float anywhere in the text
    last = record.steps[2]
    figure = means_figure(last.decision, "val_loss", "03-pos-weight", "minimize")
    assert any("loss.pos_weight=4<br>" in tick for tick in figure.data[0].x)
    for key in (ConfigKey.of({"loss.pos_weight": 4.0}), ConfigKey.of({"loss.pos_weight": 4})):
        assert str(key) == "loss.pos_weight=4"
    assert [fmt(v) for v in (4, 4.0, 20000.0, 0.1 + 0.2, 1e-5, 0.048333, None, math.nan, -0.0, True)] == \
        ["4", "4", "20000", "0.3", "1e-05", "0.04833", "-", "nan", "0", "True"]


def test_bars_are_gains_over_the_carried_configuration(diverged):
    _, record, _ = diverged
    decision = record.steps[1].decision
    figure = means_figure(decision, "val_loss", "02-lr", "minimize")
    bars = dict(zip(figure.data[0].x, figure.data[0].y))
    carried = next(v for k, v in bars.items() if "carried" in k)
    winner = next(v for k, v in bars.items() if "winner" in k)
    assert carried == 0.0 and winner > 0  # lower val_loss is better: the winner's gain is up
    entry = {e.key: e for e in decision.leaderboard}
    assert winner == pytest.approx(entry[decision.carried_key].mean - entry[decision.winner_key].mean)
    assert figure.layout.yaxis.title.text == f"gain (0 = carried mean {fmt(entry[decision.carried_key].mean)})"
    assert "carried mean − mean; lower val_loss is better" in figure.layout.title.text
    assert "no completed run, not drawn: optim.lr=1e-05" in figure.layout.title.text


def test_curves_are_coloured_by_configuration_with_one_legend_entry_each(diverged):
    _, record, _ = diverged
    step = record.steps[1]
    figure = curves_figure(list(step.trials), "val_loss", "02-lr")
    lines = [t for t in figure.data if t.mode == "lines" and t.x[0] is not None]
    by_group: dict[str, set[str]] = {}
    for t in lines:
        by_group.setdefault(t.legendgroup, set()).add(t.line.color)
    assert len(by_group) == 4 and all(len(colors) == 1 for colors in by_group.values())
    assert len({c for colors in by_group.values() for c in colors}) == 4
    legend = [t for t in figure.data if t.showlegend]
    groups = [t.legendgroup for t in legend if t.legendgroup != "_marks"]
    assert sorted(groups) == sorted({t.key.text for t in step.trials})  # one entry per configuration
    assert figure.layout.legend.orientation == "h" and figure.layout.legend.y < 0  # below: the plot keeps its width
    pruned = [t for t in lines if t.line.dash == "dash"]  # the diverged run and the three non-finite ones
    assert len(pruned) == sum(1 for t in step.trials if t.state == TrialState.PRUNED) == 4
    cuts = [t for t in figure.data if t.mode == "markers" and t.marker.symbol == "x"]
    assert [t.name for t in cuts] == [f"#{t.number} pruned" for t in step.trials if t.prune_reason == "divergence"]


def trial(number: int, values: list[float | None], state: TrialState = TrialState.COMPLETE,
          key: ConfigKey = ConfigKey(), **attrs) -> TrialRecord:
    return TrialRecord(number=number, trial_id=number, study="s/01-x", state=state, key=key, seed=number,
                       value=values[-1], curves={"step": [10 * (i + 1) for i in range(len(values))],
                                                 "val_loss": values}, datetime_start=datetime(2024, 1, 1), **attrs)


def healthy(n: int) -> list[TrialRecord]:
    return [trial(i, [0.8 - 0.01 * i, 0.5, 0.3 - 0.01 * i, 0.1 + 0.01 * i]) for i in range(n)]


def test_a_diverged_run_is_clipped_to_the_edge_and_marked():
    fast = ConfigKey.of({"optim.lr": 0.1})
    exploded = trial(9, [0.78, 2021.0], TrialState.PRUNED, fast, prune_reason="divergence", prune_step=20,
                     prune_detail="val_loss 2021 > 3 x best 0.78 at step 20")
    figure = curves_figure([*healthy(6), exploded], "val_loss", "01-x")
    low, high = figure.layout.yaxis.range
    assert 0.8 < high < 2 and 0 < low < 0.1  # the healthy curves keep the axis
    notes = [a.text for a in figure.layout.annotations]
    assert notes == ["clipped: #9 val_loss 2021 at step 20"]
    marker = next(t for t in figure.data if t.name == "#9 clipped")
    assert list(marker.x) == [20] and list(marker.y) == [high] and list(marker.customdata) == ["2021"]
    assert CLIP_RULE.split("; ")[0] in figure.layout.title.text
    # a completed run that diverged (pruning off) is clipped as well: the typical run is the median one
    completed = trial(10, [0.8, 900.0, 1500.0, 2021.0], key=fast)
    figure = curves_figure([*healthy(6), completed], "val_loss", "01-x")
    assert figure.layout.yaxis.range[1] < 2
    assert [a.text for a in figure.layout.annotations] == ["clipped: #10 val_loss 2021 at step 40"]


def test_the_window_is_the_typical_run_range_widened_by_its_span():
    runs = [(t.curves["val_loss"], True) for t in healthy(5)]
    lo = 0.1 + 0.01 * 2  # medians of the runs' lowest and highest values
    hi = 0.8 - 0.01 * 2
    assert y_window(runs) == pytest.approx((lo - (hi - lo), hi + (hi - lo)))
    bottom, top, *_ = y_range(runs)
    assert bottom < min(min(v for v in r if v is not None) for r, _ in runs) and top > 0.8  # nothing clipped
    assert y_window([([None, math.nan], True)]) is None
    assert y_window([([2.0, 2.0], True)]) == pytest.approx((1.8, 2.2))  # a flat run: a tenth of its value
    # pruned runs alone set the window when none completed
    assert y_window([([0.5, 1.0], False), ([0.6, 0.9], False), ([0.5, 2021.0], False)]) is not None


def test_a_carried_configuration_without_a_mean_falls_back_to_the_stated_median():
    a, b = ConfigKey.of({"optim.lr": 0.1}), ConfigKey.of({"optim.lr": 0.01})
    decision = RecordedDecision(carried_key=ConfigKey(), winner_key=ConfigKey(), adopted=False, margin=None,
                                noise=None, threshold=None, rule="r",
                                leaderboard=(LeaderboardEntry(a, 0.5, 0.1, 3, 0, 0, 0.05),
                                             LeaderboardEntry(b, 0.7, 0.1, 3, 0, 0, 0.05),
                                             LeaderboardEntry(ConfigKey(), None, None, 0, 3, 0)))
    figure = means_figure(decision, "val_accuracy", "x", "maximize")
    assert list(figure.data[0].y) == pytest.approx([-0.1, 0.1])
    assert figure.layout.yaxis.title.text == "gain (0 = median of the means 0.6)"
    assert "0 is the median of the means" in figure.layout.title.text


def test_the_diverged_sweep_report_clips_its_diverged_run(diverged):
    _, record, page = diverged
    lr = record.steps[1]
    exploded = next(t for t in lr.trials if t.prune_reason == "divergence")
    figure = curves_figure(list(lr.trials), "val_loss", "02-lr")
    assert figure.layout.yaxis.range[1] < 2 < DIVERGED_LOSS
    assert [a.text for a in figure.layout.annotations] == [f"clipped: #{exploded.number} val_loss 2021 at step 20"]
    assert f"clipped: #{exploded.number} val_loss 2021 at step 20" in page  # drawn in the report
