"""``sweep plan`` in an 80-column terminal: one line per step with the values it tries, its
trainings and cost, its question underneath; nothing cut, nothing wider than the terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path

import pytest
from rich.console import Console
from sweep_helpers import SWEEP

from maou.cli.run import PlanView
from maou.sweep.locate import load_spec
from maou.sweep.results.plan import plan_sweep, step_tries
from maou.sweep.spec import ParamRange, Search, Step

REPO = Path(__file__).resolve().parents[1]
DEMO_TRIES = {"baseline": "(base)", "gamma-neg": "gamma_neg 1,2,3,4", "asl-clip": "asl_clip 0,0.01,0.02,0.05",
              "head": "hidden_dim=512 dropout=0.1"}


def shown(plan, width: int = 80) -> list[str]:
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(PlanView(plan))
    return console.export_text().splitlines()


def test_the_plan_of_the_demo_fits_80_columns_one_line_a_step():
    spec = load_spec(REPO / "sweeps" / "demo.yaml")
    plan = plan_sweep(spec, None, measure=False)
    assert [s.tries for s in plan.steps] == [[], ["loss.gamma_neg 1,2,3,4"], ["loss.asl_clip 0,0.01,0.02,0.05"],
                                             ["model.hidden_dim=512 model.dropout=0.1"]]
    lines = shown(plan)
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0] == "plan of sweep demo: stage 2, seeds [0, 1]"
    assert len(lines) <= 1 + 3 * len(spec.steps)  # was 29 lines of a table wrapped a word a line
    for index, (step, summary) in enumerate(zip(spec.steps, plan.steps, strict=True)):
        heads = [i for i, line in enumerate(lines) if line.startswith(f"{index + 1}. {step.name} ")]
        assert len(heads) == 1, lines
        head = lines[heads[0]]
        assert DEMO_TRIES[step.name] in head, head
        low, high = summary.trainings
        assert re.search(rf"  trainings {low}(-{high})?  +cost \?$", head), head
        assert lines[heads[0] + 1] == "   " + step.description  # the question, underneath, indented
        assert lines[heads[0] + 2].startswith(f"   configurations {summary.configurations[0]}")
    assert "reused 2-4" in lines[6] and "done 0" in lines[6]
    plan.seconds_per_training = 30.0
    costed = shown(plan)
    assert costed[4].endswith("trainings 6-8  cost 3-4 min") and costed[10].endswith("trainings 0-2  cost 0-60 s")


def test_costs_long_questions_and_many_configurations_wrap_whole():
    """A step of several long configurations continues in its column, each ``key=value`` whole; a
    question longer than the line wraps at the console's width; a narrow console puts the values
    under the header."""
    spec = load_spec(REPO / "sweeps" / "stage3-collapse.yaml")
    plan = plan_sweep(spec, None, measure=False)
    plan.seconds_per_training = 40.0
    pairs = {f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
             for config in spec.steps[0].configs for k, v in config.items()}
    for width in (50, 80, 120):
        lines = shown(plan, width)
        assert all(len(line) <= width for line in lines), (width, lines)
        words = {word for line in lines for word in line.replace(";", " ").split()}
        assert pairs <= words, pairs - words
        assert "cost 3 min" in "\n".join(lines)  # 5 trainings of 40 s
    narrow = shown(plan, 50)
    assert narrow[1].startswith("1. report-settings  trainings 5  cost 3 min")
    assert narrow[2].startswith("   value_loss=mse name=sgd lr=0.05 ") and narrow[3].startswith("     ")
    wide = shown(plan, 120)
    assert wide[1].startswith("1. report-settings  value_loss=mse name=sgd lr=0.05 batch_size=4096")


def test_step_tries_of_a_search_and_of_keys_that_share_a_last_part():
    search = Step(name="s", search=Search(trials=8, params={
        "optim.lr": ParamRange(low=1e-5, high=1e-2, log=True), "batch_size": ParamRange(choices=(64, 128)),
        "model.blocks": ParamRange(low=2, high=10, step=2, integer=True)}))
    assert step_tries(search, short=True) == ["lr 1e-05..0.01 log", "batch_size 64|128", "blocks 2..10 step 2 integer",
                                              "8 tpe samples"]
    grid = Step(name="g", grid={"optim.lr": [0.01, 0.001], "loss.gamma_neg": [1.0]})
    assert step_tries(grid) == ["optim.lr 0.01,0.001", "loss.gamma_neg 1"]
    assert step_tries(grid, short=True) == ["lr 0.01,0.001", "gamma_neg 1"]
    both = Step(name="c", configs=[{"optim.lr": 0.1, "model.dropout": 0.1}, {"loss.dropout": 0.2}])
    assert step_tries(both, short=True) == ["lr=0.1 model.dropout=0.1", "loss.dropout=0.2"]  # ambiguous: whole
    assert step_tries(Step(name="baseline")) == []


@pytest.mark.parametrize("columns", ["80", "60"])
def test_sweep_plan_in_a_narrow_terminal(columns):
    result = subprocess.run([SWEEP, "plan", "demo", "--no-measure"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": columns}, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= int(columns), result.stdout
    assert lines[0] == "plan of sweep demo: stage 2, seeds [0, 1]"
    assert "14-20 trainings (cost: not measured)" in lines
    assert any(line.startswith("2. gamma-neg ") and "gamma_neg 1,2,3,4" in line for line in lines) or (
        "   gamma_neg 1,2,3,4" in lines)


def test_racings_best_case_is_lower_when_a_configurations_seeds_train_side_by_side():
    """The demo's 18 trainings, 2 of them the baseline's: with every challenger worse, one at a time
    each challenger trains its first seed whole and its second to 1/3 of the budget; two at a time
    both seeds stop at 1/3."""
    plan = plan_sweep(load_spec(REPO / "sweeps" / "demo.yaml"), None, measure=False)
    total = plan.trainings[1]
    one = plan.racing_share(1)
    two = plan.racing_share(2)
    carried = sum(min(2, s.trainings[1]) for s in plan.steps)
    assert one is not None and two is not None and one[1] == two[1] == 1.0
    assert one[0] == pytest.approx((carried + (total - carried) * (1 + 1 / 3) / 2) / total)
    assert two[0] == pytest.approx((carried + (total - carried) / 3) / total) and two[0] < one[0]
