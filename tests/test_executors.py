"""The ``auto`` executor: local on CPU-only and single-GPU machines, Ray across GPUs (how many trials
at once a local executor runs: tests/test_pool.py)."""

from __future__ import annotations

import pytest

from maou.strict import from_dict
from maou.sweep.run.executors import make_executor, resolve_auto
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.spec import ExecutorSection, SweepSpec


@pytest.mark.parametrize(("gpus", "gpus_per_trial", "kind", "resolved_gpus", "at_once"), [
    (0, 0.0, "local", 0.0, 2),     # CPU only: as many at once as the cores hold (2 here, threads 1)
    (1, 0.0, "local", 0.0, None),  # one GPU: no Ray needed; trials at once measured on it
    (1, 1.0, "local", 1.0, 1),     # a trial takes the GPU: one at a time
    (2, 0.0, "ray", 1.0, None),    # several GPUs: one trial per GPU
    (8, 0.0, "ray", 1.0, None),
    (8, 2.0, "ray", 2.0, None),    # four trials of two GPUs
    (2, 2.0, "local", 2.0, 1),     # one trial's worth of GPUs
    (1, 0.25, "ray", 0.25, None),  # fractions pack four small trials onto one GPU
    (1, 0.5, "ray", 0.5, None),
    (1, 0.6, "local", 0.6, 1),
])
def test_auto_picks_local_or_ray_by_the_visible_gpus(gpus, gpus_per_trial, kind, resolved_gpus, at_once, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    resolved = resolve_auto(ExecutorSection(gpus_per_trial=gpus_per_trial), gpus=gpus, cpu_cores=2)
    assert (resolved.kind, resolved.gpus_per_trial) == (kind, resolved_gpus)
    assert resolved.cpus_per_trial == 1.0 and resolved.max_concurrent == at_once  # Ray fills every GPU


def test_auto_joins_a_cluster_it_is_pointed_at(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_auto(ExecutorSection(address="auto"), gpus=0).kind == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert resolve_auto(ExecutorSection(), gpus=0).kind == "ray"


def test_explicit_kinds_are_kept():
    for executor in (ExecutorSection(kind="local"), ExecutorSection(kind="ray", max_concurrent=3)):
        assert resolve_auto(executor, gpus=8) == executor


def test_auto_is_the_default_and_runs_locally_on_this_cpu_machine(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = from_dict(SweepSpec, {"name": "x", "stage": 1, "steps": [{"name": "b"}]})
    assert spec.executor == ExecutorSection() and spec.executor.kind == "auto"
    import torch

    from maou.sweep.run.executors import cores
    from maou.sweep.run.executors.pool import PoolExecutor

    if torch.cuda.device_count() == 0:
        executor = make_executor(spec.executor, threads=cores())  # every core to one trial: in process
        assert isinstance(executor, LocalExecutor)
        executor = make_executor(spec.executor, threads=1)
        assert isinstance(executor, PoolExecutor if cores() > 1 else LocalExecutor)
        getattr(executor, "close", lambda: None)()
    with pytest.raises(Exception, match="max_concurrent"):
        from_dict(SweepSpec, {"name": "x", "stage": 1, "steps": [{"name": "b"}], "executor": {"max_concurrent": 0}})


def test_the_registry_names_every_kind_the_spec_and_the_cli_accept():
    from typing import get_args, get_type_hints

    from maou.cli import build_parser
    from maou.sweep.run.executors import EXECUTORS

    assert set(get_args(get_type_hints(ExecutorSection)["kind"])) == set(EXECUTORS)
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    (executor,) = [a for a in run._actions if a.dest == "executor"]
    assert set(executor.choices) == set(EXECUTORS)
    for name, kind in EXECUTORS.items():
        if kind.factory is not None:  # every concrete kind builds from the spec's section
            assert hasattr(make_executor(ExecutorSection(kind=name)), "run")
    pool = make_executor(ExecutorSection(kind="local", max_concurrent=2))
    assert hasattr(pool, "run")
    pool.close()
