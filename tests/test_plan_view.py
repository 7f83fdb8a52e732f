"""``sweep plan`` in an 80-column terminal: one line per step with the values it tries, its
trainings and cost, its question underneath; nothing cut, nothing wider than the terminal. And the
estimate it shows: a training measured in its parts within a budget, trainings at once, what a run
pays once (structure only: timings belong in bench/).

Every test plans specs of its own project under ``tmp_path`` (copies of the shipped ones): the
project's storages and built datasets can change neither an outcome nor be changed."""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from sweep_helpers import SWEEP

from maou.cli.run import PlanView
from maou.sweep.locate import load_spec
from maou.sweep.results.plan import plan_sweep, step_tries
from maou.sweep.spec import ParamRange, Search, Step

REPO = Path(__file__).resolve().parents[1]
DEMO_TRIES = {"baseline": "(base)", "gamma-neg": "gamma_neg 1,2,3,4", "asl-clip": "asl_clip 0,0.01,0.02,0.05",
              "head": "hidden_dim=512 dropout=0.1"}


def demo_project(tmp_path: Path) -> Path:
    """A project of its own holding a copy of ``sweeps/demo.yaml``: the bundled games, its storage,
    runs, results and datasets under ``tmp_path``."""
    data = yaml.safe_load((REPO / "sweeps" / "demo.yaml").read_text())
    data["data"] = {**data["data"], "games": [str(REPO / "data" / "games")], "dir": str(tmp_path / "data" / "build")}
    data["storage"] = f"sqlite:///{tmp_path}/studies/demo.db"
    data["runs_dir"] = str(tmp_path / "runs" / "demo")
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "demo.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path


def tiny_project(tmp_path: Path, **changes) -> Path:
    """A Stage 1 spec (synthetic rows: nothing to build) small enough to measure in a test, trained
    in process."""
    data = {"name": "tiny", "stage": 1, "seeds": 2, "executor": {"kind": "local"},
            "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1, "device": "cpu", "batch_size": 64},
            "budget": {"max_steps": 30, "eval_every": 10},
            "steps": [{"name": "baseline"}, {"name": "lr", "grid": {"optim.lr": [0.01, 0.001]}}], **changes}
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "tiny.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


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
def test_sweep_plan_in_a_narrow_terminal(columns, tmp_path):
    """The demo's plan in a project of its own (the project's own demo storage, after ``make demo``,
    would leave nothing to run); planning it creates nothing there."""
    root = demo_project(tmp_path)
    result = subprocess.run([SWEEP, "plan", "demo", "--no-measure"], cwd=root, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": columns}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in root.iterdir()) == ["sweeps"]  # no storage, no build, no runs
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


def test_the_wall_time_counts_rounds_of_trainings_at_once_and_what_a_run_pays_once():
    """A step's trainings run ``at_once`` at a time and the step waits for the last: ``ceil(n / k)``
    rounds, its reused trainings copied, its storage work; the run's start-up once."""
    plan = plan_sweep(load_spec(REPO / "sweeps" / "demo.yaml"), None, measure=False)
    plan.seconds_per_training, plan.at_once, plan.startup_s = 10.0, 2, 5.0
    plan.step_overhead_s, plan.reused_s = 1.0, 0.5
    assert [s.trainings for s in plan.steps] == [(2, 2), (6, 8), (6, 8), (0, 2)]
    assert [s.reused for s in plan.steps] == [(0, 0), (2, 4), (2, 4), (2, 4)]
    assert plan.step_seconds(plan.steps[0]) == (11.0, 11.0)  # 2 trainings: one round
    assert plan.step_seconds(plan.steps[1]) == (1 + 2 * 0.5 + 3 * 10, 1 + 4 * 0.5 + 4 * 10)
    assert plan.step_seconds(plan.steps[3]) == (1 + 2 * 0.5, 1 + 4 * 0.5 + 10)
    assert plan.seconds == (5 + 11 + 32 + 32 + 2, 5 + 11 + 43 + 43 + 13)
    assert "trainings 6-8  cost 32-43 s" in "\n".join(shown(plan))
    plan.complete = True
    assert plan.seconds == (0.0, 0.0)


def test_a_training_is_measured_in_its_parts_within_its_budget(tmp_path):
    """No time to spare: the fewest steps at the first batch; time to spare: the batch grows to the
    configuration's and the steps stop at their count. Every part is there either way."""
    from maou.sweep.run.cost import evaluations
    from maou.sweep.run.measure import MIN_TIMED_STEPS, measure_training

    base = load_spec(tiny_project(tmp_path) / "sweeps" / "tiny.yaml").base_config()
    quick = measure_training(base, 1105, step_budget_s=0.0, max_timed_steps=20, eval_budget_s=0.0, start_batch=16)
    assert (quick.timed_steps, quick.timed_batch) == (MIN_TIMED_STEPS, 16)
    full = measure_training(base, 1105, step_budget_s=1e6, max_timed_steps=5, start_batch=16)
    assert (full.timed_steps, full.timed_batch) == (5, 64)
    for cost in (quick, full):
        assert cost.device == "cpu" and cost.real_data and cost.batch_size == 64  # the synthetic Stage 1 rows
        assert cost.steps == 30 and cost.evals == evaluations(30, 10, True) == 4
        assert cost.eval_rows == 1105 and cost.final_rows == 0  # Stage 1 evaluates all its rows, every time
        assert cost.step_s > 0 and cost.eval_s > 0 and cost.setup_s > 0 and cost.load >= 0
        assert [what for what, _ in cost.startup] == ["torch._dynamo import", "datasets opened", "first set-up",
                                                      "first step"]
        assert all(seconds >= 0 for _, seconds in cost.startup) and cost.op_s is None
        assert cost.training_s == pytest.approx(cost.setup_s + 30 * cost.step_s + 4 * cost.eval_s)


def test_unbuilt_datasets_are_measured_on_random_rows_and_never_built(tmp_path):
    from maou.sweep.run.measure import measure_training

    root = tiny_project(tmp_path, stage=2, data={"games": [str(REPO / "data" / "games")], "dir": str(tmp_path / "b")},
                        base={"model": {"blocks": 1, "channels": 8}, "threads": 1, "device": "cpu", "batch_size": 64,
                              "eval_rows": 64},
                        budget={"epochs": 0.5, "eval_every": 5})
    base = load_spec(root / "sweeps" / "tiny.yaml").base_config()
    cost = measure_training(base, 1000, 500, step_budget_s=0.0, eval_budget_s=0.0)
    assert not cost.real_data and "datasets opened" not in dict(cost.startup)
    assert cost.steps == 8 and cost.evals == 3  # half of 16 batches; at 5, 8 and the untrained model
    assert (cost.eval_rows, cost.final_rows) == (64, 500) and cost.final_s > cost.eval_s > 0
    assert not (tmp_path / "b").exists()


def test_a_storage_operation_is_timed_beside_the_storage_and_leaves_nothing(tmp_path):
    from maou.sweep.run.cost import storage_op_seconds

    (tmp_path / "studies").mkdir()
    assert storage_op_seconds(f"sqlite:///{tmp_path}/studies/x.db") > 0
    assert storage_op_seconds(f"journal://{tmp_path}/studies/x.log") > 0
    assert list((tmp_path / "studies").iterdir()) == []
    assert storage_op_seconds("memory:") == 0.0 and storage_op_seconds("postgresql://u@h/db") is None


def test_contention_and_evaluations():
    from maou.sweep.run.cost import contention, evaluations

    assert contention(2, 1, 2, 0.0) == 1.0  # a core each
    assert contention(2, 1, 2, 1.0) == pytest.approx(1.5)  # 3 threads on 2 cores against 2 on 2
    assert contention(1, 4, 2, 3.0) == 1.0 and contention(4, 1, 2, 0.0) == 2.0
    assert contention(2, 0, 2, 0.0) == 2.0  # threads 0: every core each
    assert evaluations(200, 25, True) == 9 and evaluations(9, 4, False) == 3


def test_the_measured_estimate_has_every_part(tmp_path):
    from maou.sweep.results.plan import cost_lines

    root = tiny_project(tmp_path)
    plan = plan_sweep(load_spec(root / "sweeps" / "tiny.yaml"), None,
                      budget={"step_budget_s": 0.2, "max_timed_steps": 4, "eval_budget_s": 0.05})
    cost = plan.cost
    assert cost is not None and plan.device == "cpu" and cost.timed_steps <= 4
    assert (plan.at_once, plan.slowdown) == (1, 1.0)  # executor local: in process, one at a time
    assert cost.op_s is not None and cost.op_s > 0
    assert plan.seconds_per_training == pytest.approx(cost.training_s + cost.ops_per_training * cost.op_s)
    assert plan.startup_s > cost.startup_s and plan.step_overhead_s > 0 and plan.reused_s > 0
    low, high = plan.seconds  # type: ignore[misc]
    assert 0 < low <= high and plan.cost_source.startswith("measured here on cpu")
    lines = cost_lines(plan)
    assert lines[0].startswith("a training: ") and lines[-1].startswith("once a run: ")
    assert sorted(p.name for p in root.iterdir()) == ["sweeps"]  # the storage probe left nothing


def test_the_run_eta_is_measured_on_a_smaller_budget_without_the_start_up(tmp_path):
    from maou.cli.run import RUN_ETA_BUDGET, _run_plan

    spec = load_spec(tiny_project(tmp_path) / "sweeps" / "tiny.yaml")
    plan = _run_plan(spec, None, measure=True)
    assert plan.seconds_per_training > 0 and plan.startup_s == 0
    assert plan.cost.timed_steps <= RUN_ETA_BUDGET["max_timed_steps"]
    assert _run_plan(spec, None, measure=False).seconds_per_training is None


def test_sweep_plan_prints_what_its_estimate_is_made_of(tmp_path):
    root = tiny_project(tmp_path)
    result = subprocess.run([SWEEP, "plan", "tiny"], cwd=root, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "4-6 trainings, about " in out and "of wall time here, 1 at once" in out and "measured here on cpu" in out
    for part in ("  a training: ", "  steps timed: ", "  a step: its trainings in rounds of 1 + ", "  once a run: "):
        assert part in out, out
    assert "measuring a training of tiny's base configuration here" in result.stderr
    assert sorted(p.name for p in root.iterdir()) == ["sweeps"]
