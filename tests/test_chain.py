"""Specs form chains (``init_from: winner-of:``): plans show them, runs refuse a missing winner
before touching anything, ``--with-deps`` runs the chain, and every shipped spec plans."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sweep_helpers import REPO, run_cli

from maou.errors import UserError

SHIPPED = sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml"))


def project(tmp_path: Path, specs: dict[str, dict]) -> Path:
    """A project folder with ``sweeps/<name>.yaml`` for each spec (Stage 1: no data to build)."""
    (tmp_path / "sweeps").mkdir(parents=True, exist_ok=True)
    for name, extra in specs.items():
        data = {"name": name, "stage": 1, "seeds": 1, "budget": {"max_steps": 4, "eval_every": 2},
                "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1, "device": "cpu", **extra},
                "steps": [{"name": "baseline"}]}
        (tmp_path / "sweeps" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def test_prerequisites_come_in_the_order_they_must_run(tmp_path):
    from maou.sweep.chain import chain_of, prerequisites
    from maou.sweep.locate import load_spec

    root = project(tmp_path, {"one": {}, "two": {"init_from": "winner-of:sweeps/one.yaml"},
                              "three": {"init_from": "winner-of:sweeps/two.yaml"}})
    three = load_spec(root / "sweeps" / "three.yaml")
    assert [s.name for s in prerequisites(three)] == ["one", "two"]
    assert [(link.spec.name, link.state) for link in chain_of(three)] == [("one", "not run"), ("two", "not run")]
    assert prerequisites(load_spec(root / "sweeps" / "one.yaml")) == []


def test_a_loop_of_winner_of_is_one_line(tmp_path):
    from maou.sweep.chain import prerequisites
    from maou.sweep.locate import load_spec

    root = project(tmp_path, {"a": {"init_from": "winner-of:sweeps/b.yaml"},
                              "b": {"init_from": "winner-of:sweeps/a.yaml"}})
    with pytest.raises(UserError, match="loop through winner-of: a -> b -> a"):
        prerequisites(load_spec(root / "sweeps" / "a.yaml"))


def test_a_run_without_its_prerequisite_refuses_before_touching_its_storage(tmp_path):
    from maou.sweep.locate import load_spec
    from maou.sweep.run.protocol import run_sweep

    root = project(tmp_path, {"one": {}, "two": {"init_from": "winner-of:sweeps/one.yaml"}})
    result = run_cli("run", "two", cwd=root)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, lines
    assert "run `sweep run one` first (1 training, about" in lines[0] and "here)" in lines[0]
    assert "one, which is not run" in lines[0] and "--with-deps" in lines[0]
    assert not (root / "studies").exists()  # nothing created, nothing left "in progress"
    with pytest.raises(UserError, match="run `sweep run one` first"):  # the API refuses the same way
        run_sweep(load_spec(root / "sweeps" / "two.yaml"))
    assert not (root / "studies").exists()


@pytest.mark.slow
def test_with_deps_runs_the_chain_and_a_finished_plan_has_nothing_left(tmp_path):
    root = project(tmp_path, {"one": {}, "two": {"init_from": "winner-of:sweeps/one.yaml"}})
    result = run_cli("run", "two", "--with-deps", cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "prerequisite one (not run)" in result.stdout
    assert (root / "studies" / "one.db").exists() and (root / "studies" / "two.db").exists()
    again = run_cli("run", "two", cwd=root)  # the prerequisite has its winner now
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    plan = run_cli("plan", "two", "--no-measure", cwd=root)
    assert plan.returncode == 0, plan.stderr
    text = " ".join(plan.stdout.split())
    assert "needs the winner of one (done): nothing left to run" in text
    assert "nothing left to run: every step of sweep two decided" in text


@pytest.fixture(scope="module")
def shipped_project(tmp_path_factory) -> Path:
    """Every shipped spec (``sweeps/*.yaml``, ``sweeps/cpu/*.yaml``) in a project of its own, on the
    bundled games: the storages, runs and datasets their defaults name land under its root, so
    neither the project's studies/ nor its data/build/ can change what they plan."""
    root = tmp_path_factory.mktemp("shipped")
    for path in [*(REPO / "sweeps").glob("*.yaml"), *(REPO / "sweeps" / "cpu").glob("*.yaml")]:
        data = yaml.safe_load(path.read_text())
        if "data" in data:
            data["data"] = {**data["data"], "games": [str(REPO / "data" / "games")]}
        target = root / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(data, sort_keys=False))
    return root


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spec_plans(name, shipped_project):
    """``sweep plan`` on each shipped spec, in a project of its own: epochs budgets too (rows
    estimated from the records, nothing built or measured here, so the test stays fast; the chain
    is listed), and the plan creates nothing (no storage, no build folder)."""
    result = run_cli("plan", name, "--no-measure", "--no-build", cwd=shipped_project)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    assert "trainings" in text and "training rows:" in text and "(cost: not measured)" in text
    if name == "stage3-lr-batch":
        assert "needs the winner of stage1-lr-batch (not run)" in text
        assert "needs the winner of stage2-asl (not run)" in text
        assert text.index("stage1-lr-batch") < text.index("stage2-asl")
    if "epochs" in (REPO / "sweeps" / f"{name}.yaml").read_text() and name != "stage1-lr-batch":
        assert "estimated, not built" in text
    assert sorted(p.name for p in shipped_project.iterdir()) == ["sweeps"]


def replica_project(tmp_path: Path, data_dir: Path) -> Path:
    """The CPU replicas of the shipped GPU chain (``sweeps/cpu/``) in a project of their own, on
    the bundled corpus already built for the session."""
    (tmp_path / "sweeps" / "cpu").mkdir(parents=True)
    for path in (REPO / "sweeps" / "cpu").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if "data" in data:
            data["data"] = {**data["data"], "games": [str(REPO / "data" / "games")], "dir": str(data_dir)}
        data["executor"] = {"kind": "local"}  # in process: trials at once are tests/test_pool.py's
        (tmp_path / "sweeps" / "cpu" / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path


def test_the_cpu_replicas_keep_the_shipped_specs_steps_keys_and_budgets():
    for path in (REPO / "sweeps" / "cpu").glob("*.yaml"):
        replica, shipped = (yaml.safe_load(p.read_text()) for p in (path, REPO / "sweeps" / path.name))
        assert [s["name"] for s in replica["steps"]] == [s["name"] for s in shipped["steps"]], path.name
        for mine, theirs in zip(replica["steps"], shipped["steps"], strict=True):
            assert sorted(mine.get("grid", {})) == sorted(theirs.get("grid", {})), (path.name, mine["name"])
            assert ({k for c in mine.get("configs", []) for k in c}
                    == {k for c in theirs.get("configs", []) for k in c}), (path.name, mine["name"])
        assert set(replica["budget"]) == set(shipped["budget"]) and "epochs" in replica["budget"]
        assert ("init_from" in replica["base"]) == ("init_from" in shipped["base"])


@pytest.mark.slow
def test_the_cpu_replica_of_the_gpu_chain_runs_with_deps_and_exports_for_upstream(tmp_path, bundled_data_dir):
    root = replica_project(tmp_path, bundled_data_dir)
    spec = "sweeps/cpu/stage3-lr-batch.yaml"
    refused = run_cli("run", spec, cwd=root)
    assert refused.returncode == 2 and "`sweep run sweeps/cpu/stage1-lr-batch.yaml` first" in refused.stderr
    result = run_cli("run", spec, "--with-deps", cwd=root, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert out.index("prerequisite cpu-stage1-lr-batch") < out.index("prerequisite cpu-stage2-asl")
    for name, stage in (("cpu-stage1-lr-batch", 1), ("cpu-stage2-asl", 2), ("cpu-stage3-lr-batch", 3)):
        path = {1: "sweeps/cpu/stage1-lr-batch.yaml", 2: "sweeps/cpu/stage2-asl.yaml", 3: spec}[stage]
        export = run_cli("export", path, cwd=root)
        assert export.returncode == 0, export.stdout + export.stderr
        args = (root / "results" / name / "best-args.txt").read_text().splitlines()[0].split()
        flags = _flags(args)
        assert args[:2] == ["maou", "learn-model"] and flags["--stage"] == str(stage)
        best = yaml.safe_load((root / "results" / name / "best.yaml").read_text())
        if stage in (1, 2):
            assert flags[f"--stage{stage}-batch-size"] == str(best["batch_size"])
            assert f"--stage{stage}-max-epochs" in flags and "--stage12-lr-scheduler" in flags
        else:
            assert flags["--batch-size"] == str(best["batch_size"]) and flags["--epoch"] == "1"
            assert flags["--learning-ratio"] == repr(round(best["optim"]["lr"], 12))
            assert flags["--policy-target-mode"] == "move-label"
        if stage == 2:  # started from the Stage 1 winner's checkpoint
            assert Path(flags["--resume-backbone-from"]).is_file()
            assert flags["--stage2-gamma-neg"] == repr(float(best["loss"]["gamma_neg"]))


def _flags(args: list[str]) -> dict[str, str | None]:
    """``--flag value`` pairs of a command line (a flag followed by another flag has no value)."""
    flags: dict[str, str | None] = {}
    for i, token in enumerate(args):
        if token.startswith("--"):
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
            flags[token] = value
    return flags
