"""The ``auto`` executor: in process on CPU-only and single-GPU machines, Ray across GPUs."""

from __future__ import annotations

import pytest

from maou.strict import from_dict
from maou.sweep.run.executors import make_executor, resolve_auto
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.spec import ExecutorSection, SweepSpec


@pytest.mark.parametrize(("gpus", "gpus_per_trial", "kind", "resolved_gpus"), [
    (0, 0.0, "local", 0.0),     # CPU only: in this process
    (1, 0.0, "local", 0.0),     # one GPU, one trial at a time: no Ray needed
    (1, 1.0, "local", 1.0),
    (2, 0.0, "ray", 1.0),       # several GPUs: one trial per GPU
    (8, 0.0, "ray", 1.0),
    (8, 2.0, "ray", 2.0),       # four trials of two GPUs
    (2, 2.0, "local", 2.0),     # one trial's worth of GPUs
    (1, 0.25, "ray", 0.25),     # fractions pack four small trials onto one GPU
    (1, 0.5, "ray", 0.5),
    (1, 0.6, "local", 0.6),
])
def test_auto_picks_in_process_or_ray_by_the_visible_gpus(gpus, gpus_per_trial, kind, resolved_gpus, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    resolved = resolve_auto(ExecutorSection(gpus_per_trial=gpus_per_trial), gpus=gpus)
    assert (resolved.kind, resolved.gpus_per_trial) == (kind, resolved_gpus)
    assert resolved.cpus_per_trial == 1.0 and resolved.max_concurrent is None  # Ray fills every GPU


def test_auto_joins_a_cluster_it_is_pointed_at(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_auto(ExecutorSection(address="auto"), gpus=0).kind == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert resolve_auto(ExecutorSection(), gpus=0).kind == "ray"


def test_explicit_kinds_are_kept():
    for executor in (ExecutorSection(kind="local"), ExecutorSection(kind="ray", max_concurrent=3)):
        assert resolve_auto(executor, gpus=8) == executor


def test_auto_is_the_default_and_runs_in_process_on_this_cpu_machine(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = from_dict(SweepSpec, {"name": "x", "stage": 1, "steps": [{"name": "b"}]})
    assert spec.executor == ExecutorSection() and spec.executor.kind == "auto"
    import torch

    if torch.cuda.device_count() < 2:
        assert isinstance(make_executor(spec.executor), LocalExecutor)
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
